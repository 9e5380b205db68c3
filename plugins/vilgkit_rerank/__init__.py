"""Built-in vilgkit plugin: rerank."""
