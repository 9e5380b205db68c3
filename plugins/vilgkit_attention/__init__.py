"""Built-in vilgkit plugin: attention."""
