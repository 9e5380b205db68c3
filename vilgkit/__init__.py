"""vilgkit: unified, bidirectional image–text generation in the manner of ERNIE-ViLG."""

__version__ = "0.1.0"

__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    """Lazy exports: ``vilgkit.Pipeline`` imports torch-heavy modules only when first used."""
    if name == "Pipeline":
        from vilgkit.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'vilgkit' has no attribute {name!r}")
