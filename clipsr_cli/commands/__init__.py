"""One module per CLI command; each exposes ``register(app)``. Commands parse and print only."""
