"""CLI subcommands, one module per concern (see controller/cli.py)."""
