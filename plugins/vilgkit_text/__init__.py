"""Built-in vilgkit plugin: text."""
