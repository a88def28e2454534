"""Service layer: wires tasks, models and the training loop for the CLI (and later the search)."""
