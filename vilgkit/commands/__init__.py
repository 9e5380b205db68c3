"""Subcommands of the ``vilgkit`` CLI, one module each."""
