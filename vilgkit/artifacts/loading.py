"""Loading a run's components back: the text and image tokenizers, the generator's weights, the
reconstructor, and a whole finished run (what ``Pipeline.from_run_dir`` wraps), every file verified."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vilgkit.artifacts.files import ArtifactError, readable, tensor_shapes
from vilgkit.artifacts.layout import (
    FROM_RECIPE,
    GENERATOR_RECORD,
    GENERATOR_WEIGHTS,
    IMAGE_TOKENIZER_RECORD,
    IMAGE_TOKENIZER_WEIGHTS,
    MATCHER_RECORD,
    MATCHER_WEIGHTS,
    RECONSTRUCTOR_WEIGHTS,
    RESOLVED_RECIPE,
)
from vilgkit.artifacts.rundir import RunDir, load_weights, read_json, verify_tree


def _set_component(components: Any, key: str, value: Any) -> None:
    if hasattr(components, "set"):
        components.set(key, value)
    else:
        components[key] = value


def _fresh(components: Any, key: str) -> Any:
    return components.build(key) if callable(getattr(components, "build", None)) else components[key]


def load_text_tokenizer(components: Any, directory: str | Path) -> Any:
    """Build the recipe's text tokenizer and load the one saved in ``directory`` into it (files
    verified first); it becomes ``components["text_tokenizer"]``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"no saved text tokenizer at {directory}: run the fit_text_tokenizer stage first (or fix the path)"
        )
    verify_tree(directory)
    tokenizer = _fresh(components, "text_tokenizer")
    with readable(directory, "a saved text tokenizer"):
        tokenizer.load(directory)
    _set_component(components, "text_tokenizer", tokenizer)
    return tokenizer


def image_tokenizer_file(source: str | Path) -> Path:
    """``image_tokenizer.safetensors`` of a folder, or the file itself."""
    path = Path(source).expanduser()
    return path if path.suffix == ".safetensors" and path.is_file() else path / IMAGE_TOKENIZER_WEIGHTS


def load_image_tokenizer(components: Any, source: str | Path) -> Any:
    """Load trained weights into the recipe's image tokenizer (``components["image_tokenizer"]``),
    or, when the recipe defines none, into one built from the class path and arguments recorded in
    the source's ``image_tokenizer.json``. Returns it in eval mode, also stored as the run's
    ``image_tokenizer``.

    Raises:
        FileNotFoundError: no weights at ``source``.
        ArtifactError: the weights do not fit (keys or shapes listed), differ from the manifest,
            or the recipe's tokenizer class differs from the one that was trained.
    """
    path = image_tokenizer_file(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"no {IMAGE_TOKENIZER_WEIGHTS} at {path.parent}: run the train_tokenizer stage first (or fix the path)"
        )
    record_path = path.with_name(IMAGE_TOKENIZER_RECORD)
    record = read_json(record_path) if record_path.is_file() else {}
    if "image_tokenizer" in components:
        tok = components["image_tokenizer"]
    elif record.get("init") is not None:
        from vilgkit.recipe import build

        owner = RunDir.owning(path)
        init = owner.anchor_node(record["init"], "image_tokenizer") if owner is not None else record["init"]
        # the record is data from the run directory: only a registered image tokenizer is built
        tok = build("image_tokenizer", init, source=str(record_path), registered_only=True)
    else:
        raise ArtifactError(f"the recipe defines no image_tokenizer and {record_path} does not say how to build one")
    trained = record.get("class_path")
    current = f"{type(tok).__module__}.{type(tok).__qualname__}"
    if trained and trained != current:
        raise ArtifactError(f"{path} holds a {trained} but the recipe's image_tokenizer is a {current}")
    load_weights(tok, path)
    tok.eval()
    _set_component(components, "image_tokenizer", tok)
    return tok


def load_generator_weights(generator: nn.Module, stage_dir: str | Path) -> dict[str, Any]:
    """Load ``generator.safetensors`` of a generator stage folder; returns its ``generator.json``."""
    stage_dir = Path(stage_dir)
    path = stage_dir / GENERATOR_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no {GENERATOR_WEIGHTS} in {stage_dir}: run the generator stage first")
    load_weights(generator, path)
    record = stage_dir / GENERATOR_RECORD
    return read_json(record) if record.is_file() else {}


def attach_reconstructor(
    reconstructor: Any,
    image_tokenizer: Any,
    hidden_size: int | None,
    weights_from: str | Path | None = None,
    *,
    required: bool = True,
) -> Any:
    """Hand a reconstructor the trained image tokenizer and the generator's width (``attach``, when
    it has one); an end-to-end one also gets its trained weights from ``weights_from`` (a
    generator stage folder). With ``required=False`` missing weights are not an error (a stage that
    is about to train them)."""
    if reconstructor is None:
        return None
    attach = getattr(reconstructor, "attach", None)
    if callable(attach):
        attach(image_tokenizer, None if hidden_size is None else int(hidden_size))
    if getattr(reconstructor, "end_to_end", False):
        path = Path(weights_from) / RECONSTRUCTOR_WEIGHTS if weights_from is not None else None
        if path is not None and path.is_file():
            load_weights(reconstructor, path)
        elif required:
            raise ArtifactError(
                f"the recipe's reconstructor is end-to-end but {weights_from} has no {RECONSTRUCTOR_WEIGHTS}: "
                "that generator was trained without it"
            )
    return reconstructor


def read_recipe(run_dir: str | Path | RunDir, *, anchored: bool = True, versions: bool = False) -> dict[str, Any]:
    """A run's resolved recipe, verified against its manifest and validated as ``vilgkit run``
    validates a recipe; with ``anchored`` the paths of external files point at the run's copies
    (:meth:`RunDir.anchor`); ``_versions`` (the provenance) only with ``versions``.

    Raises:
        ArtifactError: not a run directory, or a recipe file that does not verify or parse.
        RecipeError: a class that is not registered for its key, or arguments of the wrong type.
    """
    import yaml

    from vilgkit.recipe import PROVENANCE_KEY, load_components, to_dict, validate

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    path = run.recipe_path
    if not path.is_file():
        raise ArtifactError(f"{run.path} is not a vilgkit run directory (no {RESOLVED_RECIPE})")
    run.verify(path)
    with readable(path, "a resolved recipe (YAML)"):
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(recipe, dict):
        raise ArtifactError(f"{path} is not a resolved recipe (a YAML mapping)")
    # a run directory may come from elsewhere: only registered classes, with the declared types
    provenance = recipe.get(PROVENANCE_KEY)  # validate leaves it out; kept only when asked for
    load_components()
    recipe = to_dict(validate(recipe, str(path), registered_only=True))
    if versions and provenance is not None:
        recipe[PROVENANCE_KEY] = provenance
    return run.anchor(recipe) if anchored else recipe


def stage_names(recipe: Mapping[str, Any]) -> list[str]:
    """The stage folder names of a resolved recipe, in order."""
    from vilgkit.interfaces.stage import _snake

    names = []
    for node in recipe.get("stages") or []:
        if not isinstance(node, dict) or not isinstance(node.get("class_path"), str):
            continue
        init = node.get("init_args") or {}
        names.append(init.get("name") or _snake(node["class_path"].rpartition(".")[2]))
    return names


def last_generator_stage(run_dir: str | Path, recipe: Mapping[str, Any]) -> Path | None:
    """The last stage (in recipe order) whose folder holds a trained generator."""
    run_dir = Path(run_dir)
    found = [run_dir / n for n in stage_names(recipe) if (run_dir / n / GENERATOR_WEIGHTS).is_file()]
    if found:
        return found[-1]
    others = sorted(p.parent for p in run_dir.glob(f"*/{GENERATOR_WEIGHTS}"))
    return others[-1] if others else None


@dataclass
class LoadedRun:
    """Every component of a finished run, loaded and verified (what :class:`vilgkit.Pipeline` wraps)."""

    run_dir: Path
    stage_dir: Path
    recipe: dict[str, Any]
    record: dict[str, Any]
    generator: nn.Module
    text_tokenizer: Any
    image_tokenizer: Any
    reconstructor: Any
    grid: tuple[int, int]
    matcher: nn.Module | None = None


def build_components(recipe: dict[str, Any]) -> Any:
    """The lazily built components of a run directory's recipe (the one place that builds them)."""
    from vilgkit.components import ComponentStore

    return ComponentStore(recipe, registered_only=True)  # a run directory may come from elsewhere


def load_run(run_dir: str | Path, stage: str | None = None) -> LoadedRun:
    """Load a finished run's generator stage (default: the last that saved a generator) with its
    tokenizers and reconstructor; every file is verified against the run's manifest.

    Raises:
        ArtifactError: not a run directory, no trained generator, or a file that does not verify.
    """
    run = RunDir(run_dir)
    recipe = read_recipe(run)
    stage_dir = run.stage(stage) if stage else last_generator_stage(run.path, recipe)
    if stage_dir is None or not (stage_dir / GENERATOR_WEIGHTS).is_file():
        raise ArtifactError(
            f"no trained generator in {run.path}{'/' + stage if stage else ''}: run the train_generator stage first"
        )
    record = read_json(stage_dir / GENERATOR_RECORD)
    for key in ("text_tokenizer", "image_tokenizer", "grid"):
        if key not in record:
            raise ArtifactError(f"{stage_dir / GENERATOR_RECORD} has no {key!r}: not written by a generator stage")
    components = build_components(recipe)
    if record["text_tokenizer"] == FROM_RECIPE:  # a published vocabulary, as the recipe builds it
        text_tok = components["text_tokenizer"]
    else:
        text_tok = load_text_tokenizer(components, run.resolve(record["text_tokenizer"]))
    if record["image_tokenizer"] == FROM_RECIPE:  # a pre-trained tokenizer, as the recipe builds it
        image_tok = components["image_tokenizer"].eval()
    else:
        image_tok = load_image_tokenizer(components, run.resolve(record["image_tokenizer"]))
    generator = components.build("generator")
    load_generator_weights(generator, stage_dir)
    reconstructor = None
    if recipe.get("reconstructor") is not None:  # the recipe picks how codes become pixels
        reconstructor = attach_reconstructor(
            components.build("reconstructor"), image_tok, int(generator.hidden_size), stage_dir
        )
    grid = tuple(int(g) for g in record["grid"])
    matcher_dir = last_matcher_stage(run.path, recipe)
    matcher = load_matcher(matcher_dir) if matcher_dir is not None else None
    return LoadedRun(run.path, stage_dir, recipe, record, generator, text_tok, image_tok, reconstructor, grid, matcher)  # type: ignore[arg-type]


def last_matcher_stage(run_dir: str | Path, recipe: Mapping[str, Any]) -> Path | None:
    """The last stage (in recipe order) whose folder holds a trained image–text matcher, if any."""
    run_dir = Path(run_dir)
    found = [run_dir / n for n in stage_names(recipe) if (run_dir / n / MATCHER_WEIGHTS).is_file()]
    return found[-1] if found else None


def load_matcher(stage_dir: str | Path) -> nn.Module:
    """The :class:`~vilgkit.models.matcher.ImageTextMatcher` a ``TrainMatcher`` stage saved
    (``matcher.json`` for its sizes, ``matcher.safetensors`` for its weights, both verified)."""
    import torch

    from vilgkit.models.matcher import ImageTextMatcher

    stage_dir = Path(stage_dir)
    record = read_json(stage_dir / MATCHER_RECORD)
    config = record.get("config") if isinstance(record, dict) else None
    table = tensor_shapes(stage_dir / MATCHER_WEIGHTS).get("code_table")
    reads_codes = isinstance(config, dict) and config.get("image_input", "codes") == "codes"
    if not isinstance(config, dict) or (reads_codes and (table is None or len(table) != 2)):
        raise ArtifactError(f"{stage_dir / MATCHER_RECORD} was not written by a TrainMatcher stage")
    try:
        matcher = ImageTextMatcher(code_table=torch.zeros(*table) if reads_codes else None, **config)
    except TypeError as err:
        raise ArtifactError(f"{stage_dir / MATCHER_RECORD}: {err}") from None
    load_weights(matcher, stage_dir / MATCHER_WEIGHTS)
    return matcher.eval()
