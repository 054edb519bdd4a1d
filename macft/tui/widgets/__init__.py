"""Widgets the screens share: the loss chart."""
