"""Run the examples of docs/demo.md ("Then use the trained model") on a trained run; write their real outputs.

    python benchmarks/demo_examples.py RUN_DIR [--out docs/demo-examples.md] [--work DIR] [--made-by TEXT]

The shell examples go through ``vilgkit.cli.main`` (what the ``vilgkit`` command runs), each with
``--out`` pointing into a scratch folder (``--work``, default a temporary one) so nothing is written
into the run; the Python example is executed statement by statement on ``vilgkit.Pipeline``, like
a REPL. The Markdown file holds every example with what it printed or returned and the files it
wrote, with the scratch folder and ``RUN_DIR`` written as the examples name them
(``runs/shapes_tiny``), so the file reads as if the documented commands had been typed.

The seeds are the examples' own (the CLI's ``--seed 0``, ``seed=0``): the same run on the same
machine gives the same file except its ``Date:`` line. ``tests/app/test_demo_examples.py`` checks
that the examples here are the ones in docs/demo.md and that the outputs equal direct Pipeline calls.
Exit status: 0, 1 when an example failed (its error is in the file), 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import shlex
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "demo-examples.md"

#: The run directory as the examples name it; replaced by RUN_DIR when they run.
DOC_RUN = "runs/shapes_tiny"

#: The shell examples exactly as docs/demo.md shows them (comments aside), each with the folder
#: under the run it writes into by default (its ``--out`` default).
CLI_EXAMPLES = [
    ('vilgkit generate runs/shapes_tiny "a large red circle in the centre"', "generated"),
    ("vilgkit caption runs/shapes_tiny runs/shapes_tiny/generated/prompt_000.png", "captions"),
    (
        "vilgkit vqa runs/shapes_tiny --image runs/shapes_tiny/generated/prompt_000.png"
        ' --question "what colour is the object in the centre?"',
        "answers",
    ),
]

#: The Python example as docs/demo.md shows it (the test compares the two as syntax trees).
PYTHON_EXAMPLE = """\
from vilgkit import Pipeline

pipe = Pipeline.from_run_dir("runs/shapes_tiny")
pipe.settings
images = pipe.text_to_image(["a small blue star at the top left"], seed=0)
pipe.image_to_text(images)
pipe.answer(images, ["what shape is the object at the top left?"])
"""


@dataclasses.dataclass
class Result:
    """One example and what it gave: ``output`` as printed/returned, ``files`` as Markdown lines."""

    kind: str  # "cli" or "python"
    source: str
    output: str
    files: list[str] = dataclasses.field(default_factory=list)
    folder: str | None = None
    failed: bool = False


class Paths:
    """Writes the scratch folder and the run directory back as the examples name them."""

    def __init__(self, run_dir: Path, work: Path) -> None:
        pairs = {str(work): DOC_RUN, str(work.resolve()): DOC_RUN}
        pairs.update({str(run_dir): DOC_RUN, str(run_dir.resolve()): DOC_RUN})
        # longest first: one of the two folders may be a prefix of the other
        self.pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def documented(self, text: str) -> str:
        for real, doc in self.pairs:
            text = text.replace(real, doc)
        return text


def pixel_digest(image: Any) -> str:
    """The first 16 hex digits of the SHA-256 of an image's RGB pixels (independent of PNG encoding)."""
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()[:16]


def describe(value: Any) -> str:
    """A value as the file shows it: images by size and pixel digest (their repr holds a memory
    address), settings one field a line, the rest as ``repr``."""
    from PIL import Image

    from vilgkit import Pipeline

    if isinstance(value, Image.Image):
        return f"<image {value.width}×{value.height} {value.mode}, pixels sha256 {pixel_digest(value)}>"
    if isinstance(value, list):
        return "[" + ", ".join(describe(v) for v in value) + "]"
    if isinstance(value, Pipeline):
        return f"<Pipeline: stage {Path(value.stage_dir).name}, device {value.device}>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        body = "".join(f"    {f.name}={getattr(value, f.name)!r},\n" for f in dataclasses.fields(value))
        return f"{type(value).__name__}(\n{body})"
    return repr(value)


@contextlib.contextmanager
def captured(fmt=None):
    """Capture stdout, stderr and warnings (into stderr) for one example.

    Every warning is shown once per example, as in a fresh process (``catch_warnings`` forgets the
    ones an earlier example showed), and whoever collects warnings around us (pytest) does not take it.
    """
    out, err = io.StringIO(), io.StringIO()

    def show(message, category, filename, lineno, file=None, line=None):
        text = fmt(message, category) if fmt else warnings.formatwarning(message, category, filename, lineno, line)
        err.write(text)

    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield out, err


def run_cli(run_dir: Path, work: Path, paths: Paths) -> list[Result]:
    """The shell examples through ``vilgkit.cli.main``, each writing into ``work/<its folder>``."""
    from vilgkit import cli

    results = []
    for line, folder in CLI_EXAMPLES:
        argv = []
        for arg in shlex.split(line)[1:]:  # [0] is the console script's name
            if arg == DOC_RUN:
                arg = str(run_dir)
            elif arg.startswith(DOC_RUN + "/"):  # a file an earlier example wrote into the run
                arg = str(work / arg[len(DOC_RUN) + 1 :])
            argv.append(arg)
        target = work / folder
        with captured() as (out, err):
            rc = cli.main([*argv, "--out", str(target)])
        text = paths.documented(out.getvalue() + err.getvalue()).rstrip("\n")
        if rc:
            text += f"\n(exit status {rc})"
        results.append(
            Result("cli", line, text, describe_files(target, paths), f"{DOC_RUN}/{folder}/", failed=bool(rc))
        )
    return results


def describe_files(folder: Path, paths: Paths) -> list[str]:
    """Markdown lines for the files a command wrote: images by size and digest, JSON records in full."""
    from PIL import Image

    lines = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.suffix == ".png":
            with Image.open(path) as img:
                lines.append(f"- `{path.name}`: {describe(img)}")
        elif path.suffix == ".json":
            record = paths.documented(json.dumps(json.loads(path.read_text()), indent=2, ensure_ascii=False))
            lines += [f"- `{path.name}`:", "", "  ```json", *(f"  {r}" for r in record.splitlines()), "  ```", ""]
        else:
            lines.append(f"- `{path.name}`: {path.stat().st_size} bytes")
    return lines


def run_python(run_dir: Path, paths: Paths) -> list[Result]:
    """The Python example, one top-level statement at a time in one namespace (a REPL session)."""
    tree = ast.parse(PYTHON_EXAMPLE)
    namespace: dict[str, Any] = {"__name__": "__demo__"}
    results = []
    for stmt in tree.body:
        source = ast.get_source_segment(PYTHON_EXAMPLE, stmt)
        real = _with_run_dir(stmt, str(run_dir))
        failed = False
        with captured(lambda message, category: f"{category.__name__}: {message}\n") as (out, err):
            try:
                if isinstance(real, ast.Expr):
                    shown = describe(eval(compile(ast.Expression(real.value), "<demo>", "eval"), namespace))
                else:
                    exec(compile(ast.Module([real], type_ignores=[]), "<demo>", "exec"), namespace)
                    # an assignment prints nothing in a REPL: say what the names now hold
                    shown = "\n".join(f"# {n}: {describe(namespace[n])}" for n in _assigned(stmt))
            except Exception:  # the example's own error is its output; the file says it failed
                shown, failed = traceback.format_exc(limit=0).strip(), True
        text = paths.documented((out.getvalue() + err.getvalue() + shown).rstrip("\n"))
        results.append(Result("python", source, text, failed=failed))
    return results


def _with_run_dir(stmt: ast.stmt, run_dir: str) -> ast.stmt:
    """The statement with the string ``"runs/shapes_tiny"`` replaced by the real run directory."""

    class Swap(ast.NodeTransformer):
        def visit_Constant(self, node: ast.Constant) -> ast.Constant:
            return ast.copy_location(ast.Constant(run_dir), node) if node.value == DOC_RUN else node

    return ast.fix_missing_locations(Swap().visit(ast.parse(ast.unparse(stmt)).body[0]))


def _assigned(stmt: ast.stmt) -> list[str]:
    """Names bound by an assignment statement (none for an import)."""
    if isinstance(stmt, ast.Assign):
        return [t.id for t in stmt.targets if isinstance(t, ast.Name)]
    return []


def header(run_dir: Path, command: str, made_by: str | None) -> list[str]:
    """Which run, the date (its own line: the only one that changes between runs), the machine, the command."""
    import torch
    import yaml

    from vilgkit.dispatch import cpu_model
    from vilgkit.inference_settings import SETTINGS_FILE, load_inference_settings

    recipe = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text()) or {}
    settings = load_inference_settings(run_dir)
    saved = (
        f"saved by its `{settings.evaluated_by}` stage (`{SETTINGS_FILE}`)"
        if settings.saved
        else f"none saved (no `{SETTINGS_FILE}`: the defaults)"
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        "# The demo's examples, with their real outputs",
        "",
        "<!-- written by benchmarks/demo_examples.py: regenerate it, do not edit it -->",
        "",
        f'The examples of [demo.md](demo.md) ("Then use the trained model"), run on `{run_dir}`'
        f" (recipe `{recipe.get('name')}`, seed {recipe.get('seed')}; inference settings: {saved}).",
    ]
    if made_by:
        lines.append(f"The run: {made_by}.")
    lines += [
        f"`{DOC_RUN}` below stands for that run; the commands wrote into a scratch folder standing for"
        f" `{DOC_RUN}/`, not into the run.",
        "",
        f"Date: {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {cpu_model()}, torch {torch.__version__}, torch threads: {torch.get_num_threads()}.",
        "",
        f"Regenerate: `{command}`",
    ]
    return lines


def render(results: list[Result], head: list[str]) -> str:
    """The Markdown file: the header, the shell examples with their output and files, the Python session."""
    lines = [*head, "", "## Shell", ""]
    for r in (r for r in results if r.kind == "cli"):
        lines += ["```console", f"$ {r.source}", r.output or "(no output)", "```", ""]
        if r.files:
            lines += [f"Files written to `{r.folder}`:", "", *r.files, ""]
    lines += ["## Python", "", "```python"]
    for r in (r for r in results if r.kind == "python"):
        lines += [f">>> {s}" if i == 0 else f"... {s}" for i, s in enumerate(r.source.splitlines())]
        if r.output:
            lines.append(r.output)
    lines += ["```", ""]
    return "\n".join(line.rstrip() for line in lines).rstrip("\n") + "\n"


def run_examples(run_dir: Path, work: Path) -> list[Result]:
    """Every example, shell first (the Python example does not need their files)."""
    paths = Paths(run_dir, work)
    return run_cli(run_dir, work, paths) + run_python(run_dir, paths)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the examples and write the Markdown file; 0 when every example ran."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (holds recipe.resolved.yaml)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown file to write")
    parser.add_argument("--work", type=Path, default=None, help="an empty folder the commands write into (kept)")
    parser.add_argument("--made-by", default=None, help="how the run was made, for the header")
    args = parser.parse_args(argv)
    if not (args.run_dir / "recipe.resolved.yaml").is_file():
        print(f"demo_examples: {args.run_dir}: no trained run here (no recipe.resolved.yaml)", file=sys.stderr)
        return 2
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        print(f"demo_examples: --work {args.work}: not empty (its old files would be listed)", file=sys.stderr)
        return 2
    command = shlex.join(["python", "benchmarks/demo_examples.py", *argv])
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="demo_examples_")))
        work.mkdir(parents=True, exist_ok=True)
        results = run_examples(args.run_dir, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, header(args.run_dir, command, args.made_by)), encoding="utf-8")
    failed = [r.source for r in results if r.failed]
    for source in failed:
        print(f"demo_examples: failed: {source}", file=sys.stderr)
    print(f"demo_examples: {len(results)} examples, {len(failed)} failed; written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
