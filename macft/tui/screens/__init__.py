"""One module per screen: home, recipe form, data inspector, run monitor, compare, export."""
