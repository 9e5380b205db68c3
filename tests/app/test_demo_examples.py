"""``benchmarks/demo_examples.py``: docs/demo.md's examples run on the tiny run, their outputs in a file.

The file must hold every example with an output, be the same on a second run (the date aside),
show what ``Pipeline`` itself gives for the same seeds, and run exactly the examples the doc shows.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shlex
import shutil
from pathlib import Path

import pytest

from tests.app.benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
DEMO_DOC = ROOT / "docs" / "demo.md"
SECTION_START = "Then use the trained model:"


def _digest(image) -> str:
    # computed here, not with the script's helper, so a wrong digest there cannot pass
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def written(tiny_run, tmp_path_factory):
    """The script run twice with the same arguments: (first text, second text, argv, work folder)."""
    script = load_benchmark("demo_examples")
    base = tmp_path_factory.mktemp("demo_examples")
    work = base / "work"
    argv = [str(tiny_run), "--out", str(base / "demo-examples.md"), "--work", str(work)]
    assert script.main(argv) == 0
    first = (base / "demo-examples.md").read_text()
    shutil.rmtree(work)  # --work must be empty; the second run's files stay for the comparisons
    assert script.main(argv) == 0
    return first, (base / "demo-examples.md").read_text(), argv, work


def _after(text: str, line: str) -> str:
    """The line following ``line`` in ``text`` (which must hold it)."""
    lines = text.splitlines()
    assert line in lines, f"{line!r} not in the file"
    return lines[lines.index(line) + 1]


@pytest.mark.slow
def test_the_file_holds_every_example_with_its_output(written, tiny_run):
    from vilgkit.dispatch import cpu_model

    text, _, argv, _ = written
    script = load_benchmark("demo_examples")
    for command, _folder in script.CLI_EXAMPLES:
        shown = _after(text, f"$ {command}")
        assert shown.strip() and shown != "```", f"no output for {command!r}"
    statements = ast.parse(script.PYTHON_EXAMPLE).body
    for stmt in statements[1:]:  # [0] is the import, which prints nothing
        shown = _after(text, f">>> {ast.get_source_segment(script.PYTHON_EXAMPLE, stmt)}")
        assert shown.strip() and not shown.startswith((">>>", "```")), f"no output for {ast.unparse(stmt)!r}"
    assert "- `prompt_000.png`: <image 32×32 RGB" in text and "- `answers.json`:" in text
    assert "evaluated_by=None," in text  # pipe.settings as this run has them: no Evaluate stage, the defaults
    assert f"run on `{tiny_run}`" in text and f"Machine: {cpu_model()}," in text
    assert f"Regenerate: `{shlex.join(['python', 'benchmarks/demo_examples.py', *argv])}`" in text


@pytest.mark.slow
def test_a_second_run_differs_only_in_the_date_line(written):
    first, second, _, _ = written
    a, b = first.splitlines(), second.splitlines()
    assert len(a) == len(b)
    assert [x for x, y in zip(a, b) if x != y and not (x.startswith("Date: ") and y.startswith("Date: "))] == []


@pytest.mark.slow
def test_the_outputs_are_what_pipeline_gives_for_the_same_seeds(written, tiny_run):
    from PIL import Image

    from vilgkit import Pipeline

    text, _, _, work = written
    pipe = Pipeline.from_run_dir(tiny_run)
    # the Python example
    images = pipe.text_to_image(["a small blue star at the top left"], seed=0)
    assert f"# images: [<image 32×32 RGB, pixels sha256 {_digest(images[0])}>]" in text
    assert _after(text, ">>> pipe.image_to_text(images)") == repr(pipe.image_to_text(images))
    answers = pipe.answer(images, ["what shape is the object at the top left?"])
    assert _after(text, '>>> pipe.answer(images, ["what shape is the object at the top left?"])') == repr(answers)
    # the shell examples: the image generate wrote, with the settings it recorded, and its caption and answer
    record = json.loads((work / "generated" / "generate.json").read_text())
    used = record["settings"]
    best = pipe.text_to_image(
        record["prompts"],
        num_candidates=used["num_candidates"],
        reranker=used["reranker"],
        seed=used["seed"],
        temperature=used["temperature"],
        top_k=used["top_k"] or 0,
        top_p=1.0 if used["top_p"] is None else used["top_p"],
        cfg_scale=used["cfg_scale"],
        return_all=True,  # as generate samples them
    )[0][0]
    png = work / "generated" / "prompt_000.png"
    with Image.open(png) as saved:
        assert _digest(saved) == _digest(best)
    assert f"- `prompt_000.png`: <image 32×32 RGB, pixels sha256 {_digest(best)}>" in text
    doc_png = "runs/shapes_tiny/generated/prompt_000.png"
    assert f"{doc_png}\t{pipe.image_to_text([png])[0]}".rstrip() in text.splitlines()
    question = "what colour is the object in the centre?"
    assert f"{question}\t{pipe.answer([png], [question])[0]}".rstrip() in text.splitlines()


def _doc_blocks() -> dict[str, list[str]]:
    """The fenced blocks of docs/demo.md's "Then use the trained model" section, by language."""
    lines = DEMO_DOC.read_text(encoding="utf-8").splitlines()
    blocks: dict[str, list[str]] = {}
    fence = None
    for line in lines[lines.index(SECTION_START) :]:
        if fence is None and line.startswith("## "):  # the next section
            break
        if fence is None and line.startswith("```"):
            fence, body = line[3:].strip(), []
        elif fence is not None and line.startswith("```"):
            blocks.setdefault(fence, []).append("\n".join(body) + "\n")
            fence = None
        elif fence is not None:
            body.append(line)
    return blocks


def test_the_doc_shows_exactly_the_examples_the_script_runs():
    script = load_benchmark("demo_examples")
    blocks = _doc_blocks()
    assert set(blocks) == {"bash", "python"} and len(blocks["bash"]) == len(blocks["python"]) == 1
    commands = [shlex.split(line, comments=True) for line in blocks["bash"][0].splitlines()]
    assert [c for c in commands if c] == [shlex.split(line) for line, _ in script.CLI_EXAMPLES]
    # the same code: the syntax trees are equal (comments and spacing aside)
    assert ast.dump(ast.parse(blocks["python"][0])) == ast.dump(ast.parse(script.PYTHON_EXAMPLE))


def test_the_doc_points_to_the_generated_file():
    section = DEMO_DOC.read_text(encoding="utf-8").split(SECTION_START, 1)[1].split("\n## ", 1)[0]
    assert "python benchmarks/demo_examples.py runs/shapes_tiny" in section and "(demo-examples.md)" in section
    assert "# [" not in section  # no hand-written outputs in comments (they were lists of strings)


def test_the_script_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert load_benchmark("demo_examples").main([str(tmp_path / "missing"), "--out", str(tmp_path / "x.md")]) == 2
    assert "no trained run" in capsys.readouterr().err and not (tmp_path / "x.md").exists()
