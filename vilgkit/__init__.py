"""vilgkit: unified, bidirectional image–text generation in the manner of ERNIE-ViLG."""
__version__ = "0.1.0"
