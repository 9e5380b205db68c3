"""Built-in vilgkit plugin: reconstruct."""
