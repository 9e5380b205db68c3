"""Property-based fuzzing of the CLI (hypothesis): whatever the arguments of ``generate``,
``caption``, ``vqa``, ``eval``, ``plan`` and whatever the recipe values, the exit code is 0 or 2 and
stderr holds no traceback.

Fast by construction: ``vilgkit.cli.main`` runs in this process against the session's one tiny run;
values a command accepts but that would make it slow (hundreds of candidates, long evaluations) are
drawn small, so every example finishes in well under a second or two.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import call_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "debug" / "gen_tiny.yaml"
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# argv text as Python hands it over: any code point, lone surrogates (non-UTF-8 bytes) included
ARGV_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
JUNK = st.one_of(
    ARGV_TEXT,
    st.sampled_from(["", "nan", "inf", "-inf", "1e309", "0x10", "1_000", "  3", "--", "-1", "0", "1e5"]),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)
SMALL = st.integers(-3, 3).map(str)  # counts a command would honour: never big enough to be slow
UNIT = st.one_of(st.floats(-2, 2).map(str), st.sampled_from(["0", "1", "1.0", "0.5", "nan"]))


def _flags(spec: dict[str, st.SearchStrategy], max_extra: int = 2) -> st.SearchStrategy[list[str]]:
    """One probed ``--flag=VALUE`` (every example aims at a flag) plus up to ``max_extra`` more.

    ``--flag=VALUE`` so that values starting with ``-`` reach the flag (argparse reads ``--flag -3e9``
    as a missing value, a different, already correct, error).
    """
    pair = st.sampled_from(sorted(spec)).flatmap(lambda flag: spec[flag].map(lambda value: f"{flag}={value}"))
    return st.tuples(pair, st.lists(pair, max_size=max_extra)).map(lambda t: [t[0], *t[1]])


def _mostly(good, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times in four: the other arguments must often be valid for a bad flag to reach
    the code behind them (an early, correct exit 2 would hide it)."""
    return st.one_of(st.just(good), st.just(good), st.just(good), bad)


def _check(args: list[str]) -> None:
    res = call_cli(args)
    assert res.code in (0, 2), (args, res.code, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, (args, res.stderr[-3000:])


SAMPLING = {
    "--temperature": st.one_of(UNIT, JUNK),
    "--top-k": st.one_of(SMALL, JUNK.filter(lambda v: not v.strip().isdigit() or len(v.strip()) > 4)),
    "--top-p": st.one_of(UNIT, JUNK),
    "--cfg-scale": st.one_of(UNIT, JUNK),
    "--seed": st.one_of(SMALL, JUNK),
    "--device": st.one_of(st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "mps", "gpu"]), JUNK),
}


@pytest.fixture(scope="module")
def files(tiny_run, tmp_path_factory, image_file):
    tmp = tmp_path_factory.mktemp("fuzz_files")
    (tmp / "notes.txt").write_text("not an image\n")
    (tmp / "binary.bin").write_bytes(bytes(range(256)))
    (tmp / "prompts.txt").write_text("a red circle\n\na blue square\n")
    return {
        "image": str(image_file),
        "text": str(tmp / "notes.txt"),
        "binary": str(tmp / "binary.bin"),
        "prompts": str(tmp / "prompts.txt"),
        "dir": str(tmp),
        "missing": str(tmp / "missing.png"),
        "out": str(tmp / "out"),
        "run": str(tiny_run),
    }


def _pick(files, *names):
    return st.sampled_from([files[n] for n in names])


def test_fuzz_generate(files):
    @FUZZ
    @given(
        prompts=st.lists(_mostly("a red circle", st.one_of(ARGV_TEXT, st.just("一个圆"))), min_size=1, max_size=2),
        flags=_flags(
            {
                **SAMPLING,
                "--num-candidates": st.one_of(SMALL, JUNK.filter(lambda v: "e" in v or "-" in v)),
                "--reranker": st.one_of(st.sampled_from(["self", "none", "clip", "Self"]), JUNK),
                "--prompts-file": _pick(files, "prompts", "binary", "dir", "missing"),
                "--stage": st.one_of(st.sampled_from(["train_generator", "finetune_vqa", "nope"]), JUNK),
            }
        ),
        out=_mostly(files["out"], st.just(files["text"])),
    )
    def run(prompts, flags, out):
        _check(["generate", files["run"], *prompts, *flags, "--out", out])

    run()


def test_fuzz_caption_and_vqa(files):
    images = _pick(files, "image", "text", "binary", "dir", "missing")
    decoding = {
        "--method": st.one_of(st.sampled_from(["greedy", "beam", "sample"]), JUNK),
        "--num-beams": st.one_of(SMALL, JUNK),
        "--seed": st.one_of(SMALL, JUNK),
        "--device": SAMPLING["--device"],
    }

    @FUZZ
    @given(
        command=st.sampled_from(["caption", "vqa"]),
        images=st.lists(_mostly(files["image"], images), min_size=1, max_size=2),
        questions=st.lists(_mostly("what color is it?", ARGV_TEXT), min_size=1, max_size=2),
        flags=_flags({**decoding, "--max-length": st.one_of(SMALL, JUNK)}),
    )
    def run(command, images, questions, flags):
        if command == "caption":
            args = ["caption", files["run"], *images, *flags]
        else:
            flags = [
                f for i, f in enumerate(flags) if not (f == "--max-length" or (i and flags[i - 1] == "--max-length"))
            ]
            pairs = [x for img in images for x in ("--image", img)] + [x for q in questions for x in ("--question", q)]
            args = ["vqa", files["run"], *pairs, *flags]
        _check([*args, "--out", files["out"]])

    run()


def test_fuzz_eval(files):
    @settings(FUZZ, max_examples=20)  # a valid example evaluates: the slowest command
    @given(
        metrics=_mostly("caption", st.one_of(st.sampled_from(["vqa", "caption,vqa", "", ",", "fid,bogus"]), JUNK)),
        flags=_flags(
            {
                "--num-samples": st.one_of(st.integers(-2, 2).map(str), JUNK.filter(lambda v: not v.strip().isdigit())),
                "--batch-size": st.one_of(SMALL, JUNK),
                "--num-candidates": st.one_of(st.integers(-2, 2).map(str), JUNK),
                "--temperature": SAMPLING["--temperature"],
                "--top-p": SAMPLING["--top-p"],
                "--caption-method": st.one_of(st.sampled_from(["greedy", "beam"]), JUNK),
                "--num-beams": st.one_of(st.integers(-1, 2).map(str), JUNK),
                "--examples": st.one_of(SMALL, JUNK),
                "--reranker": st.one_of(st.sampled_from(["self", "none", "clip", "bogus"]), JUNK),
                "--stage": st.one_of(st.sampled_from(["train_generator", "nope"]), JUNK),
            }
        ),
        out=_mostly(files["out"], st.just(files["text"])),
    )
    def run(metrics, flags, out):
        if not any(f == "--num-samples" for f in flags):
            flags = [*flags, "--num-samples", "2"]  # the default 200 is minutes, not a property of the parser
        _check(["eval", files["run"], "--metrics", metrics, *flags, "--out", out])

    run()


def test_fuzz_plan(files):
    @settings(FUZZ, max_examples=30)
    @given(
        flags=_flags(
            {
                "--nodes": st.one_of(SMALL, JUNK),
                "--gpus-per-node": st.one_of(SMALL, JUNK),
                "--gpu-memory": st.one_of(st.sampled_from(["80GiB", "40GB", "1KiB", "0GiB", "-1GiB", "1e30TiB"]), JUNK),
                "--host-memory": st.one_of(st.sampled_from(["1TiB", "10MB"]), JUNK),
                "--stage": st.one_of(st.sampled_from(["train_generator", "finetune_vqa", "fit_text_tokenizer"]), JUNK),
            }
        ),
        recipe=_mostly(str(RECIPE), _pick(files, "binary", "dir", "missing")),
    )
    def run(flags, recipe):
        _check(["plan", recipe, *flags])

    run()


RECIPE_KEYS = [
    "seed",
    "run_dir",
    "name",
    "data.init_args.size",
    "data.init_args.image_size",
    "text_tokenizer.init_args.vocab_size",
    "image_tokenizer.init_args.codebook_size",
    "generator.init_args.hidden_size",
    "generator.init_args.num_heads",
    "generator.init_args.num_layers",
    "generator.init_args.attention",
    "generator.class_path",
    "stages.0.class_path",
    "stages.1.init_args.trainer.steps",
    "stages.2.init_args.trainer.lr",
    "stages.2.init_args.trainer.stepz",
    "stages.2.init_args.directions",
    "stages.3.init_args.trainer.batch_size",
    "stages.9.init_args.trainer.steps",
    "stages.x.init_args",
    "strategy.init_args.device",
    "bogus",
    "stages",
]
YAML_VALUES = st.one_of(
    JUNK,
    st.sampled_from(
        [
            "[1, 2]",
            "{a: 1}",
            "null",
            "true",
            "[txt2img, vqa]",
            "{class_path: DenseAttention}",
            "{class_path: os.system}",
            "'[1'",
            "- x",
            "&a [*a]",
            "!!python/object:os.system {}",
        ]
    ),
)


def test_fuzz_recipe_values(files):
    """Recipe values through the command line: validated by ``print-config`` and built by ``plan``."""

    @settings(FUZZ, max_examples=60)
    @given(
        command=st.sampled_from(["print-config", "print-config", "plan"]),
        overrides=st.lists(st.tuples(st.one_of(st.sampled_from(RECIPE_KEYS), ARGV_TEXT), YAML_VALUES), max_size=3),
    )
    def run(command, overrides):
        argv = [x for key, value in overrides for x in (f"--{key}", value)]
        _check([command, str(RECIPE), *argv])

    run()
