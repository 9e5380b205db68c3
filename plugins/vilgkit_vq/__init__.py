"""Built-in vilgkit plugin: vq."""
