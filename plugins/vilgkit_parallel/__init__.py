"""Built-in vilgkit plugin: parallel."""
