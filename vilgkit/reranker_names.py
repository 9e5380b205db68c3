"""Short names of the rerankers, shared by every place a reranker is chosen by name.

``vilgkit eval --reranker``, ``vilgkit generate --reranker``, ``Pipeline.text_to_image(reranker=...)``,
a recipe's ``Evaluate(reranker: pmi)``, ``vilgkit serve`` and the run's saved ``inference.json`` all
resolve a name here: a short name below (any case) or a registered class name (``RERANKERS``).
``none`` means no reranking (keep the first candidate). The classes live in plugins
(``vilgkit_rerank``), so this table names them by string and core imports none of them.
"""

from __future__ import annotations

from typing import Any

from vilgkit.errors import VilgkitError

#: short name → registered class name (``None``: no reranker, the first candidate is kept)
RERANKER_ALIASES: dict[str, str | None] = {
    "none": None,
    "self": "SelfReranker",
    "self_mean": "MeanSelfReranker",
    "pmi": "PMIReranker",
    "caption": "CaptionReranker",
    "clip": "ClipReranker",
}


def reranker_class_name(name: str) -> str | None:
    """A short name or a registered class name → the registered class name (``None`` for ``none``).

    Raises:
        VilgkitError: an unknown name (the message lists the valid ones).
    """
    from vilgkit.plugins import failed_plugins_note, get_plugin_manager
    from vilgkit.registry import RERANKERS

    key = str(name).strip()
    if key.lower() in RERANKER_ALIASES:
        return RERANKER_ALIASES[key.lower()]
    get_plugin_manager()  # rerankers are plugins
    if key in RERANKERS.names():
        return key
    raise VilgkitError(f"unknown reranker {name!r}; use one of {', '.join(known_names())}.{failed_plugins_note()}")


def known_names() -> list[str]:
    """The short names, then every registered class name."""
    from vilgkit.plugins import get_plugin_manager
    from vilgkit.registry import RERANKERS

    get_plugin_manager()
    return list(RERANKER_ALIASES) + [n for n in RERANKERS.names() if n not in RERANKER_ALIASES.values()]


def build_named_reranker(name: str, **kwargs: Any) -> Any:
    """A reranker instance for ``name`` with constructor ``kwargs`` (``None`` for ``none``)."""
    from vilgkit.plugins import get_plugin_manager
    from vilgkit.registry import RERANKERS

    cls_name = reranker_class_name(name)
    if cls_name is None:
        return None
    get_plugin_manager()
    return RERANKERS.get(cls_name)(**kwargs)
