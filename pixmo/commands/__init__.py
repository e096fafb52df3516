"""CLI commands of each capability; each module has `register(app)` (see pixmo/cli.py)."""
