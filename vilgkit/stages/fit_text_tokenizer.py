"""``FitTextTokenizer``: fit the recipe's text tokenizer on the data's texts and save it.

Later stages call :func:`load_text_tokenizer` to get the fitted tokenizer back, either from this
run (a stage name) or from any directory a previous run wrote.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, IterableDataset

from vilgkit import artifacts
from vilgkit.interfaces import RunContext, Stage, TextTokenizer
from vilgkit.registry import STAGES

DEFAULT_FIELDS = ("caption", "question", "answer")
SUMMARY_FILE = artifacts.FIT_SUMMARY


def corpus_from_dataset(
    dataset: Any, fields: Iterable[str] = DEFAULT_FIELDS, limit: int | None = None
) -> Iterator[str]:
    """The texts of a data set, for tokenizer fitting.

    A data set with an ``iter_texts(limit)`` method (Shapes: every caption phrasing and every QA
    pair; the real-data readers: captions without decoding images) is asked directly; otherwise
    the given fields of each sample are read (strings, or lists of strings).
    """
    if hasattr(dataset, "iter_texts"):
        yield from dataset.iter_texts(limit)
        return
    items = iter(dataset) if isinstance(dataset, IterableDataset) else (dataset[i] for i in range(len(dataset)))
    for item in itertools.islice(items, limit):
        for field in fields:
            value = item.get(field)
            if isinstance(value, str):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from (v for v in value if isinstance(v, str))


@STAGES.register_module()
class FitTextTokenizer(Stage):
    """Fit the recipe's ``text_tokenizer`` on captions, questions and answers; save it.

    A tokenizer built from a published vocabulary (``WordPieceTokenizer(vocab_file=...)``) is not
    fitted: the stage says so and saves it unchanged, so later stages find it in the usual place.

    Args:
        name: stage name and output folder (default ``fit_text_tokenizer``).
        data: the data set to read texts from (default: the recipe's ``data``).
        fields: sample fields that hold text (used for data sets without ``iter_texts``).
        max_samples: read at most this many samples (default: all).
    """

    def __init__(
        self,
        name: str | None = None,
        data: Dataset | None = None,
        fields: list[str] | None = None,
        max_samples: int | None = None,
    ) -> None:
        super().__init__(name)
        self.data = data
        self.fields = list(fields) if fields is not None else list(DEFAULT_FIELDS)
        self.max_samples = max_samples

    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Fit and save on the main rank; under torchrun the other ranks wait for it at a barrier
        and load what it wrote, so every rank holds the identical tokenizer and one process writes."""
        from vilgkit.engine.ranks import is_main_process, stage_barrier

        tokenizer: TextTokenizer = ctx.component("text_tokenizer")
        out = ctx.stage_dir(self.name)
        if not is_main_process():  # exactly one barrier on every rank, whichever path the main rank takes
            stage_barrier(ctx)
            if not (out / SUMMARY_FILE).is_file():
                raise FileNotFoundError(
                    f"stage {self.name}: the main rank wrote no {SUMMARY_FILE} in {out} "
                    "(a multi-process launch needs a recipe strategy for the barrier)"
                )
            _load_into(tokenizer, out)
            return artifacts.read_json(out / SUMMARY_FILE)
        summary = self._fit_and_save(ctx, tokenizer, out)
        stage_barrier(ctx)  # the files are complete: the other ranks may load them
        return summary

    def _fit_and_save(self, ctx: RunContext, tokenizer: TextTokenizer, out: Path) -> dict[str, Any]:
        if ctx.resume and (out / SUMMARY_FILE).is_file():
            _load_into(tokenizer, out)  # already fitted by the interrupted run: reuse it unchanged
            return artifacts.read_json(out / SUMMARY_FILE)
        (out / SUMMARY_FILE).unlink(missing_ok=True)  # a stale marker must not vouch for files being rewritten
        given = getattr(tokenizer, "vocab_file", None)
        if given is not None and getattr(tokenizer, "is_fitted", False):
            # a published vocabulary is the model's contract with its data: never replace it by a fitted one
            print(
                f"{self.name}: text_tokenizer has vocab_file {given} ({tokenizer.vocab_size} tokens): used as it is, "
                "not fitted"
            )
            tokenizer.save(out)
            artifacts.record_tree(out)
            summary = {
                "fitted": False,
                "vocab_file": str(given),
                "vocab_size": tokenizer.vocab_size,
                "directory": str(out),
            }
            if hasattr(tokenizer, "fingerprint"):
                summary["fingerprint"] = tokenizer.fingerprint()
            artifacts.write_json(out / SUMMARY_FILE, summary, indent=1, sort_keys=True)
            return summary
        dataset = self.data if self.data is not None else ctx.component("data")
        corpus = list(corpus_from_dataset(dataset, self.fields, self.max_samples))
        if not corpus:
            raise ValueError(f"stage {self.name}: the data set yielded no text in fields {self.fields}")
        tokenizer.fit(corpus)
        tokenizer.save(out)
        artifacts.record_tree(out)  # the tokenizer wrote its own files: hash them into the run's manifest
        summary = {"fitted": True, "texts": len(corpus), "vocab_size": tokenizer.vocab_size, "directory": str(out)}
        if hasattr(tokenizer, "fingerprint"):
            summary["fingerprint"] = tokenizer.fingerprint()
        # written last and whole: it marks a finished fit
        artifacts.write_json(out / SUMMARY_FILE, summary, indent=1, sort_keys=True)
        return summary


def _load_into(tokenizer: TextTokenizer, directory: Path) -> None:
    """``tokenizer.load(directory)`` after verifying the files against the run's manifest."""
    artifacts.verify_tree(directory)
    with artifacts.readable(directory, "a saved text tokenizer"):
        tokenizer.load(directory)


def load_text_tokenizer(ctx: RunContext, source: str = "fit_text_tokenizer") -> TextTokenizer:
    """Load a saved text tokenizer into ``ctx.components["text_tokenizer"]`` and return it.

    Args:
        ctx: the run context (its recipe must define ``text_tokenizer``: the class to rebuild).
        source: a stage name of this run or a directory written by ``TextTokenizer.save``.
    """
    return artifacts.load_text_tokenizer(ctx.components, ctx.source_dir(source))
