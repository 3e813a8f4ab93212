"""The spec layer (no torch): recipe schema and validation, methods registry, metric catalog, plan."""
