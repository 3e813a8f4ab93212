"""The spec layer: recipe schema and validation, methods registry, metric catalog, TRL fields, plan (no torch)."""
