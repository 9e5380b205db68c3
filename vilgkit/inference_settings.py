"""The inference settings a run was evaluated with, saved in the run (``RUN_DIR/inference.json``).

The ``Evaluate`` stage writes the file; :class:`vilgkit.Pipeline`, the CLI (``generate``,
``caption``, ``vqa``) and ``vilgkit serve`` read it, so a user gets the images and captions the
report shows without repeating its settings. A run without the file gets :class:`InferenceSettings`'
defaults (plain sampling, greedy captions, one candidate). The file is plain JSON::

    {"num_candidates": 8, "reranker": "SelfReranker", "temperature": 1.0, "top_k": 2, "top_p": null,
     "cfg_scale": 1.5, "caption_method": "beam", "num_beams": 4, "answer_method": "greedy",
     "max_text_length": null, "evaluated_by": "evaluate", "report": "evaluate/eval.json"}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from vilgkit.errors import VilgkitError

SETTINGS_FILE = "inference.json"
CAPTION_METHODS = ("greedy", "beam", "sample")
ANSWER_METHODS = ("greedy", "beam")


@dataclass(frozen=True)
class InferenceSettings:
    """Sampling and decoding defaults of a run.

    Attributes:
        num_candidates: images sampled per prompt; the reranker keeps the best.
        reranker: ``"none"`` (keep the first), a short name (``"self"``, ``"pmi"``, …:
            :mod:`vilgkit.reranker_names`) or a registered reranker's name (``RERANKERS``).
        temperature, top_k, top_p, cfg_scale: image-token sampling (``top_k``/``top_p`` ``None``: off).
        caption_method, num_beams: caption decoding (``greedy``, ``beam`` or ``sample``).
        answer_method: VQA decoding (``greedy`` or ``beam``).
        max_text_length: caption/answer token limit (``None``: the generator's text budget).
        evaluated_by: the stage that saved them (``None``: not saved, the defaults).
        report: the evaluation record next to them (``eval.json``, relative to the run directory).
    """

    num_candidates: int = 1
    reranker: str = "none"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0
    caption_method: str = "greedy"
    num_beams: int = 4
    answer_method: str = "greedy"
    max_text_length: int | None = None
    evaluated_by: str | None = None
    report: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_candidates, int) or self.num_candidates < 1:
            raise ValueError(f"num_candidates must be a positive int, got {self.num_candidates!r}")
        if self.caption_method not in CAPTION_METHODS:
            raise ValueError(f"caption_method must be one of {CAPTION_METHODS}, got {self.caption_method!r}")
        if self.answer_method not in ANSWER_METHODS:
            raise ValueError(f"answer_method must be one of {ANSWER_METHODS}, got {self.answer_method!r}")
        if not isinstance(self.reranker, str):
            raise ValueError(f"reranker must be a name, got {self.reranker!r}")

    @property
    def saved(self) -> bool:
        """True when these came from the run's file, not the defaults."""
        return self.evaluated_by is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reranker_name(reranker: Any) -> str:
    """A reranker object (or ``None``) → the name :class:`vilgkit.Pipeline` resolves again
    (:func:`vilgkit.reranker_names.saved_name`: a preset such as ``pmi_shuffled`` keeps its arguments)."""
    from vilgkit.reranker_names import saved_name

    return saved_name(reranker)


def load_inference_settings(run_dir: str | Path) -> InferenceSettings:
    """The run's saved settings, or the defaults when it has none; a malformed file is an error."""
    path = Path(run_dir) / SETTINGS_FILE
    if not path.is_file():
        return InferenceSettings()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        known = {f.name for f in fields(InferenceSettings)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(known)}")
        return InferenceSettings(**raw)
    except (ValueError, TypeError) as err:
        raise VilgkitError(f"{path}: not valid inference settings ({err})") from None


def save_inference_settings(run_dir: str | Path, settings: InferenceSettings) -> Path:
    """Write ``RUN_DIR/inference.json`` atomically and hash it into the run's manifest."""
    from vilgkit import artifacts

    return artifacts.RunDir(run_dir).write_json(SETTINGS_FILE, settings.to_dict(), indent=2)
