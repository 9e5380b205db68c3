"""Short names of the rerankers, shared by every place a reranker is chosen by name.

``vilgkit eval --reranker``, ``vilgkit generate --reranker``, ``Pipeline.text_to_image(reranker=...)``,
a recipe's ``Evaluate(reranker: pmi)``, ``vilgkit serve`` and the run's saved ``inference.json`` all
resolve a name here: a short name below (any case) or a registered class name (``RERANKERS``).
``none`` means no reranking (keep the first candidate); names joined by ``+`` (``self+pixel_matcher``)
name an ``EnsembleReranker`` of those members. The classes live in plugins
(``vilgkit_rerank``), so this table names them by string and core imports none of them.
"""

from __future__ import annotations

from typing import Any

from vilgkit.errors import VilgkitError

#: short name → (registered class name, constructor arguments); ``None``: no reranker, the first
#: candidate is kept
RERANKER_ALIASES: dict[str, tuple[str, dict[str, Any]] | None] = {
    "none": None,
    "self": ("SelfReranker", {}),
    "self_bf16": ("SelfReranker", {"precision": "bf16"}),
    "self_mean": ("MeanSelfReranker", {}),
    "pmi": ("PMIReranker", {}),
    "pmi_shuffled": ("PMIReranker", {"baseline": "shuffled"}),
    "caption": ("CaptionReranker", {}),
    "caption_agreement": ("CaptionReranker", {"mode": "agreement"}),
    "matcher": ("MatcherReranker", {}),
    "pixel_matcher": ("PixelMatcherReranker", {}),
    "consensus": ("ConsensusReranker", {}),
    "clip": ("ClipReranker", {}),
}

#: the registered class a ``+``-joined name builds
ENSEMBLE_CLASS = "EnsembleReranker"

#: the short name of the reranker for a matcher by what its image side reads (``image_input``)
MATCHER_RERANKER_FOR: dict[str, str] = {"codes": "matcher", "pixels": "pixel_matcher"}


def resolve_reranker_name(name: str) -> tuple[str, dict[str, Any]] | None:
    """A short name or a registered class name → ``(class name, constructor arguments)``, ``None`` for ``none``.

    Raises:
        VilgkitError: an unknown name (the message lists the valid ones).
    """
    from vilgkit.plugins import failed_plugins_note, get_plugin_manager
    from vilgkit.registry import RERANKERS

    key = str(name).strip()
    if "+" in key:
        members = [part.strip() for part in key.split("+")]
        for member in members:
            if member == "" or resolve_reranker_name(member) is None:
                raise VilgkitError(
                    f"reranker {name!r}: every member of an ensemble 'a+b' must name a reranker other than none"
                )
        return ENSEMBLE_CLASS, {"members": members}
    if key.lower() in RERANKER_ALIASES:
        alias = RERANKER_ALIASES[key.lower()]
        return None if alias is None else (alias[0], dict(alias[1]))
    get_plugin_manager()  # rerankers are plugins
    if key in RERANKERS.names():
        return key, {}
    raise VilgkitError(f"unknown reranker {name!r}; use one of {', '.join(known_names())}.{failed_plugins_note()}")


def reranker_class_name(name: str) -> str | None:
    """The registered class a name builds (``None`` for ``none``); raises like :func:`resolve_reranker_name`."""
    resolved = resolve_reranker_name(name)
    return None if resolved is None else resolved[0]


def known_names() -> list[str]:
    """The short names, then every registered class name."""
    from vilgkit.plugins import get_plugin_manager
    from vilgkit.registry import RERANKERS

    get_plugin_manager()
    return list(RERANKER_ALIASES) + list(RERANKERS.names())


def build_named_reranker(name: str, **kwargs: Any) -> Any:
    """A reranker instance for ``name`` (its preset arguments, then ``kwargs``); ``None`` for ``none``."""
    from vilgkit.plugins import get_plugin_manager
    from vilgkit.registry import RERANKERS

    resolved = resolve_reranker_name(name)
    if resolved is None:
        return None
    get_plugin_manager()
    cls_name, preset = resolved
    return RERANKERS.get(cls_name)(**{**preset, **kwargs})


def saved_name(reranker: Any) -> str:
    """The name that rebuilds ``reranker`` (what a run saves in ``inference.json``).

    ``none`` for ``None``; the class name when its default arguments rebuild it; else the short name
    whose preset does (``PMIReranker(baseline="shuffled")`` → ``pmi_shuffled``); else the class name
    (other arguments are not kept by a name).
    """
    if reranker is None:
        return "none"
    cls_name = type(reranker).__name__
    if cls_name == ENSEMBLE_CLASS and all(w == 1.0 for w in reranker.weights):
        return "+".join(reranker.members)
    if _same(reranker, cls_name, {}):
        return cls_name
    for short, alias in RERANKER_ALIASES.items():
        if alias is not None and alias[0] == cls_name and alias[1] and _same(reranker, cls_name, alias[1]):
            return short
    return cls_name


def _same(reranker: Any, cls_name: str, preset: dict[str, Any]) -> bool:
    """Whether ``cls_name(**preset)`` has the object's settings (its public attributes)."""
    from vilgkit.registry import RERANKERS

    try:
        built = RERANKERS.get(cls_name)(**preset)
    except Exception:  # noqa: BLE001 - one that cannot be built without arguments (CLIP's weights)
        return False
    public = lambda obj: {k: v for k, v in vars(obj).items() if not k.startswith("_")}  # noqa: E731
    return public(built) == public(reranker)
