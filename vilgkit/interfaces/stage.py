"""Stages: the named steps of a recipe (``train_tokenizer``, ``train_generator``, ``evaluate``…).

``vilgkit run RECIPE`` builds the recipe's components once and runs its stages in order. Each stage
writes into ``run_dir/<stage name>/``; a later stage (or a later invocation with ``--stages``) finds
an earlier stage's output there, or at a path the recipe gives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunContext:
    """What a stage gets from the runner.

    Attributes:
        run_dir: the run directory (resolved recipe, stage outputs, logs).
        components: instantiated recipe components by key (``"data"``, ``"text_tokenizer"``,
            ``"image_tokenizer"``, ``"generator"``, ``"reconstructor"``, ``"strategy"``...); a key
            is absent when the recipe does not define it.
        recipe: the fully resolved recipe as a plain dict (for reports and change checks).
        seed: the run's base seed.
        resume: True when ``--resume`` was given: stages continue from their latest checkpoint.
        debug: True when ``--debug`` was given.
    """

    run_dir: Path
    components: dict[str, Any]
    recipe: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    resume: bool = False
    debug: bool = False

    def stage_dir(self, name: str) -> Path:
        """Output folder of stage ``name`` (created on demand)."""
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def source_dir(self, source: str) -> Path:
        """Resolve a "start from" reference: a stage name of this run, or a filesystem path."""
        candidate = self.run_dir / source
        if candidate.is_dir():
            return candidate
        path = Path(source).expanduser()
        if path.is_dir():
            return path
        raise FileNotFoundError(
            f"cannot start from {source!r}: neither a stage output in {self.run_dir} nor a directory"
        )

    def component(self, key: str) -> Any:
        """A recipe component, with a clear error when the recipe lacks it."""
        if key not in self.components or self.components[key] is None:
            raise KeyError(f"this stage needs '{key}' but the recipe does not define it")
        return self.components[key]


class Stage(ABC):
    """One step of a recipe.

    Args:
        name: the stage's name in the recipe and its output folder (defaults to a snake_case
            version of the class name).
    """

    #: the recipe component this stage trains (``"generator"``, ``"image_tokenizer"``), or ``None``;
    #: ``vilgkit plan`` and ``vilgkit run``'s pre-flight plan that component for the stage
    trains: str | None = None

    def __init__(self, name: str | None = None) -> None:
        self.name = name or _snake(type(self).__name__)

    @abstractmethod
    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        """Do the work; may return a small summary dict (logged by the runner)."""


def stage_name(node: dict[str, Any]) -> str:
    """The name a recipe's stage entry ``{class_path, init_args}`` runs under (without building it)."""
    return (node.get("init_args") or {}).get("name") or _snake(node["class_path"].rsplit(".", 1)[-1])


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
