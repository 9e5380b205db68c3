"""Shared pieces of the inference subcommands (``generate``, ``caption``, ``vqa``)."""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vilgkit.commands import _argtypes as T
from vilgkit.errors import VilgkitError


def add_common(parser: argparse.ArgumentParser, default_out: str) -> None:
    """``RUN_DIR``, ``--stage``, ``--out``, ``--device``, ``--seed``."""
    parser.add_argument("run_dir", help="a finished run directory (holds recipe.resolved.yaml)")
    parser.add_argument("--stage", default=None, help="generator stage to load (default: the last one trained)")
    parser.add_argument("--out", default=None, help=f"output folder (default: RUN_DIR/{default_out})")
    parser.set_defaults(_default_out=default_out)
    parser.add_argument("--device", default="auto", type=T.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=T.seed, default=0, help="sampling seed")


# The run's saved inference settings are the defaults of these flags (RUN_DIR/inference.json, written
# by the run's Evaluate stage); a flag given on the command line overrides them.
SAVED = "default: the run's saved setting"


class RunSettingsHelp(argparse.Action):
    """``-h/--help`` that, after ``RUN_DIR``, also prints the settings that run would use (a command
    sets ``HELP_ACTION = RunSettingsHelp`` and the CLI installs it)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):  # noqa: A002
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        run_dir = getattr(namespace, "run_dir", None)
        if run_dir:
            summary = settings_summary(run_dir, parser.get_default("_fallback"))
            print(f"\ndefaults in effect for {run_dir}:\n  {summary}")
        parser.exit()


def settings_summary(run_dir: str | Path, fallback: dict[str, Any] | None = None) -> str:
    """One line: the settings a command uses for ``run_dir`` and where they come from."""
    from vilgkit.errors import VilgkitError
    from vilgkit.inference_settings import SETTINGS_FILE, load_inference_settings

    try:
        settings = load_inference_settings(run_dir)
    except VilgkitError as err:
        return str(err)
    values = settings.to_dict() if settings.saved else {**settings.to_dict(), **(fallback or {})}
    shown = ", ".join(f"{k}={v}" for k, v in values.items() if k not in ("evaluated_by", "report"))
    if settings.saved:
        source = f"saved in {Path(run_dir) / SETTINGS_FILE}"
    else:
        source = f"{run_dir} has no {SETTINGS_FILE}: the defaults"
    return f"{shown} ({source})"


def add_setting(parser: argparse.ArgumentParser, flag: str, fallback: Any, help_text: str, **kwargs: Any) -> None:
    """A flag whose default is the run's saved setting (``fallback`` when the run saved none)."""
    parser.add_argument(flag, default=None, help=f"{help_text} ({SAVED}; without one: {fallback})", **kwargs)


def add_text_decoding(parser: argparse.ArgumentParser, what: str, dest: str, methods: list[str]) -> None:
    """``--method`` (stored as ``dest``) and ``--num-beams``: how a command decodes its text (``what``:
    a caption, an answer), both defaulting to the run's saved settings."""
    add_setting(parser, "--method", "greedy", f"{what} decoding", choices=methods, dest=dest)
    add_setting(parser, "--num-beams", 4, "beams for --method beam", type=T.positive_int)


def effective_settings(args: argparse.Namespace, saved: Any, names: list[str]) -> dict[str, Any]:
    """Flag values where given, else the run's saved settings, else the command's fallbacks."""
    fallback = getattr(args, "_fallback", {}) if not saved.saved else {}
    values = saved.to_dict()
    return {n: getattr(args, n) if getattr(args, n) is not None else fallback.get(n, values[n]) for n in names}


def build_reranker(name: str, clip_weights: str | None = None, clip_model: str = "ViT-B-32"):
    """A ``--reranker`` value → a reranker (``None`` for ``none``), its needs checked before any work.

    Short names (``self``, ``self_mean``, ``pmi``, ``pmi_shuffled``, ``caption``, ``caption_agreement``,
    ``clip``, ``none``;
    :data:`vilgkit.reranker_names.RERANKER_ALIASES`) or a registered class name. An unknown name, or
    ``clip`` without open_clip or a local ``--clip-weights`` file, is a one-line error (exit 2).
    """
    import importlib.util

    from vilgkit.reranker_names import build_named_reranker, reranker_class_name

    cls_name = reranker_class_name(name)
    if cls_name == "ClipReranker":
        # ClipReranker builds its model on first use: check what it needs now, not after the work before it
        if importlib.util.find_spec("open_clip") is None:
            raise VilgkitError(f"--reranker {name} needs open_clip: pip install 'vilgkit[clip]' (or open_clip_torch)")
        if not clip_weights or not Path(clip_weights).is_file():
            raise VilgkitError(
                f"--reranker {name} needs --clip-weights FILE, a local open_clip checkpoint "
                f"(nothing is downloaded); got {clip_weights or 'none'}"
            )
        return build_named_reranker(name, weights_path=clip_weights, model_name=clip_model)
    return None if cls_name is None else build_named_reranker(name)


def load_pipeline(args: argparse.Namespace):
    from vilgkit.pipeline import Pipeline

    return Pipeline.from_run_dir(args.run_dir, stage=args.stage, device=args.device)


def out_dir(args: argparse.Namespace) -> Path:
    """The output folder (``--out``, else ``RUN_DIR/<default>``), created if missing."""
    return make_out_dir(Path(args.out) if args.out else Path(args.run_dir) / args._default_out, "--out")


def make_out_dir(path: Path, flag: str) -> Path:
    """Create the folder ``path`` (named by ``flag`` in errors): it may exist, but as a folder."""
    if path.exists() and not path.is_dir():
        raise VilgkitError(f"{flag} {path}: is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a parent is a file
        raise VilgkitError(f"{flag} {path}: a parent of it is a file; give a folder") from None
    return path


def write_json(path: Path, record: dict[str, Any]) -> None:
    with naming_file(path):
        path.write_text(json.dumps(record, indent=2, ensure_ascii=False))


def save_image(image: Any, path: Path) -> None:
    """Save a PIL image; a failed write names the file."""
    with naming_file(path):
        image.save(path)


@contextmanager
def naming_file(path: Path):
    """Give an ``OSError`` raised while writing ``path`` its file name (a full disk then reads
    "no space left on the device writing PATH", not a bare errno)."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def read_lines(path: str | None) -> list[str]:
    """Non-empty lines of a text file (``None`` → no lines)."""
    if path is None:
        return []
    file = Path(path)
    if not file.is_file():
        raise VilgkitError(f"file not found: {file}")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise VilgkitError(f"{file}: not UTF-8 text (byte {err.start} is {data[err.start]:#04x})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    bad = next((i for i, line in enumerate(lines) if "\x00" in line), None)
    if bad is not None:
        raise VilgkitError(f"{file}: line {bad + 1} holds a NUL byte: give a text file, one prompt per line")
    return lines
