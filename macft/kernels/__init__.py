"""Custom ops, one per module: a reference in plain MLX ops beside each device kernel."""
