"""Writing code shards (``vilgkit tokenize``): one finite pass, parallel over work units, resumable.

The source is cut into **work units** before anything is encoded:

* a :class:`~vilgkit.data.WebDatasetReader`: one unit per input tar, read once in tar order
  (``repeat`` does not matter: each shard is read exactly once);
* a map-style data set: consecutive index ranges of ``shard_size`` samples;
* any other stream: one unit, read once — refused when it says it repeats (``repeat: true``) and
  no ``limit`` is given, since it would never end.

Unit ``k`` becomes ``shard-k.safetensors`` + ``shard-k.jsonl`` and, last, its completion marker
``shard-k.done.json`` (its record: sample count, hashes, widths, skips). ``workers`` processes
encode units in parallel; the files do not depend on the number of workers. ``tokenize.json``
(written first) records the units, the tokenizers' fingerprints and the settings; a run killed
midway continues with ``resume=True`` (``vilgkit tokenize --resume``), re-encoding only the units
without a marker, and refuses to continue with other tokenizers, data or settings. The manifest
(:data:`~vilgkit.data.code_shards.MANIFEST`) is written atomically once every unit is done.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset
from tqdm import tqdm

from vilgkit.data.code_shards import (
    FORMAT,
    MANIFEST,
    TEXT_FIELDS,
    _pad,
    _sha256,
    image_tokenizer_fingerprint,
    text_tokenizer_fingerprint,
)
from vilgkit.data.collate import collate
from vilgkit.errors import VilgkitError

PLAN = "tokenize.json"
#: seconds to sleep after each unit (tests use it to kill a tokenize midway)
UNIT_DELAY_ENV = "VILGKIT_TOKENIZE_UNIT_DELAY"
#: what a unit's worker reads; set in the parent before forking, so workers inherit it unpickled
_JOB: dict[str, Any] = {}


class TokenizeError(VilgkitError):
    """The source cannot be tokenized as asked (endless stream, changed plan, finished folder)."""


def _units(dataset: Dataset, shard_size: int, limit: int | None) -> list[dict[str, Any]]:
    """The work units: ``{"kind": "tar", "index", "url"}``, ``{"kind": "range", "start", "stop"}`` or
    ``{"kind": "stream"}``."""
    if callable(getattr(dataset, "iter_shard", None)) and hasattr(dataset, "urls"):
        return [{"kind": "tar", "index": i, "url": str(u)} for i, u in enumerate(dataset.urls)]
    if not isinstance(dataset, IterableDataset):
        n = len(dataset)  # type: ignore[arg-type]
        n = min(n, limit) if limit is not None else n
        return [{"kind": "range", "start": a, "stop": min(a + shard_size, n)} for a in range(0, n, shard_size)]
    if getattr(dataset, "repeat", False) and limit is None:
        raise TokenizeError(
            f"{type(dataset).__name__} repeats forever (repeat: true): tokenize reads its source once; "
            "set repeat: false (--data.init_args.repeat false) or give --limit N"
        )
    return [{"kind": "stream"}]


def _unit_samples(dataset: Dataset, unit: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if unit["kind"] == "tar":
        yield from dataset.iter_shard(unit["index"])  # type: ignore[attr-defined]
    elif unit["kind"] == "range":
        for i in range(unit["start"], unit["stop"]):
            yield dataset[i]
    else:
        yield from iter(dataset)


def _skip_counts(dataset: Any) -> Counter:
    counts = dataset.skip_counts() if callable(getattr(dataset, "skip_counts", None)) else {}
    return Counter({k: v for k, v in counts.items() if k.startswith("skipped/")})


@torch.no_grad()
def _encode_unit(k: int, quota: int | None = None) -> dict[str, Any]:
    """Encode unit ``k`` into its shard files and marker; returns the marker's record."""
    job = _JOB
    dataset, image_tok, text_tok, out = (
        job["dataset"],
        job["image_tokenizer"],
        job["text_tokenizer"],
        job["out"],
    )
    unit, name = job["units"][k], f"shard-{k:05d}"
    device = next(iter(image_tok.parameters()), torch.empty(0)).device
    skipped_before = _skip_counts(dataset)
    codes: list[torch.Tensor] = []
    texts: dict[str, list[str]] = {f: [] for f in ("caption", "question", "answer")}
    extras: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []

    def encode(batch_items: list[dict[str, Any]]) -> None:
        batch = collate(batch_items)
        codes.append(image_tok.encode(batch["image"].to(device).float()).cpu())
        for field in texts:
            texts[field] += [v or "" for v in batch.get(field) or [""] * len(batch_items)]
        extras.extend({f: item[f] for f in TEXT_FIELDS if f in item} for item in batch_items)

    for sample in _unit_samples(dataset, unit):
        if quota is not None and len(extras) + len(pending) >= quota:
            break
        pending.append(sample)
        if len(pending) == job["batch_size"]:
            encode(pending)
            pending = []
    if pending:
        encode(pending)
    record: dict[str, Any] = {
        "unit": k,
        "name": name,
        "num_samples": len(extras),
        "skipped": dict(_skip_counts(dataset) - skipped_before),
    }
    if extras:
        code_dtype = job["code_dtype"]
        tensors = {"codes": torch.cat(codes).to(code_dtype)}
        truncated = 0
        for field, values in texts.items():
            rows = text_tok.encode(values)
            if job["max_text_len"] is not None:
                truncated += sum(len(r) > job["max_text_len"] for r in rows)
                rows = [r[: job["max_text_len"]] for r in rows]
            tensors[f"{field}_ids"], tensors[f"{field}_len"] = _pad(rows, int(text_tok.pad_id))
        from vilgkit.sharded import save_file_atomic

        save_file_atomic(tensors, out / f"{name}.safetensors")
        tmp = out / f".{name}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for extra in extras:
                f.write(json.dumps(extra, ensure_ascii=False) + "\n")
        tmp.replace(out / f"{name}.jsonl")
        record.update(
            {
                "grid": list(tensors["codes"].shape[1:]),
                "truncated": truncated,
                "sha256": _sha256(out / f"{name}.safetensors"),
                "jsonl_sha256": _sha256(out / f"{name}.jsonl"),
                "widths": {f: int(tensors[f"{f}_ids"].shape[1]) for f in texts},
            }
        )
    from vilgkit.sharded import write_json_atomic

    write_json_atomic(out / f"{name}.done.json", record)  # last: the unit is complete
    delay = float(os.environ.get(UNIT_DELAY_ENV, "0") or 0)
    if delay:
        time.sleep(delay)
    return record


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _plan(dataset, image_tok, text_tok, units, settings, description) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "data": description,
        "data_class": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
        "units": units,
        "image_tokenizer": image_tokenizer_fingerprint(image_tok),
        "text_tokenizer": text_tokenizer_fingerprint(text_tok),
        "settings": settings,
    }


def _check_resumable(out: Path, plan: dict[str, Any], resume: bool) -> None:
    from vilgkit.sharded import write_json_atomic

    if (out / MANIFEST).is_file():
        raise TokenizeError(f"{out} already holds finished code shards ({MANIFEST}); choose a new folder")
    if out.exists() and any(out.iterdir()):
        if not (out / PLAN).is_file():
            raise TokenizeError(f"{out} is not empty and holds no interrupted tokenize ({PLAN}); choose a new folder")
        if not resume:
            raise TokenizeError(
                f"{out} holds an interrupted tokenize: add --resume to continue it, or choose a new folder"
            )
        before = json.loads((out / PLAN).read_text(encoding="utf-8"))
        diffs = [k for k in plan if before.get(k) != plan[k]]
        if diffs:
            raise TokenizeError(f"cannot resume the tokenize in {out}: {', '.join(diffs)} changed since it started")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / PLAN, plan)


def write_code_shards(
    dataset: Dataset,
    image_tokenizer: Any,
    text_tokenizer: Any,
    out_dir: str | Path,
    *,
    shard_size: int = 1024,
    batch_size: int = 32,
    limit: int | None = None,
    max_text_len: int | None = None,
    workers: int = 1,
    resume: bool = False,
    progress: bool = True,
    description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Encode ``dataset`` once into code shards in ``out_dir`` (see the module docstring).

    Args:
        dataset: samples with ``image`` and ``caption`` (question/answer optional: empty if absent).
        image_tokenizer: an :class:`~vilgkit.interfaces.ImageTokenizer` (put in eval mode here).
        text_tokenizer: a fitted :class:`~vilgkit.interfaces.TextTokenizer`.
        out_dir: a new or empty folder, or (``resume``) the folder of an interrupted tokenize.
        shard_size: samples per shard of a map-style data set (a tar's shard holds the tar's samples).
        batch_size: images per encoder pass.
        limit: encode at most this many samples (units in order; a stream is then read by one process).
        max_text_len: truncate id lists to this length (counted in ``truncated``).
        workers: processes encoding units in parallel (CPU only; the output does not depend on it).
        resume: continue an interrupted tokenize in ``out_dir``.
        progress: show a progress bar.
        description: recorded in the manifest (e.g. the data set's recipe entry).

    Returns:
        The manifest.
    """
    out = Path(out_dir)
    if workers < 1 or shard_size < 1 or batch_size < 1:
        raise TokenizeError("workers, shard_size and batch_size must be at least 1")
    units = _units(dataset, shard_size, limit)  # first: an endless source is refused before any work
    image_tokenizer.eval()
    device = next(iter(image_tokenizer.parameters()), torch.empty(0)).device
    if workers > 1 and device.type != "cpu":
        raise TokenizeError(f"--workers {workers} encodes on CPU processes; on {device.type} use one worker")
    settings = {"shard_size": shard_size, "limit": limit, "max_text_len": max_text_len}
    plan = _plan(dataset, image_tokenizer, text_tokenizer, units, settings, description or {})
    _check_resumable(out, plan, resume)
    code_dtype = torch.int16 if image_tokenizer.codebook_size <= 2**15 else torch.int32
    _JOB.clear()
    _JOB.update(
        dataset=dataset,
        image_tokenizer=image_tokenizer,
        text_tokenizer=text_tokenizer,
        out=out,
        units=units,
        batch_size=batch_size,
        max_text_len=max_text_len,
        code_dtype=code_dtype,
    )
    records: dict[int, dict[str, Any]] = {}
    for k in range(len(units)):
        marker = out / f"shard-{k:05d}.done.json"
        if marker.is_file():
            records[k] = json.loads(marker.read_text(encoding="utf-8"))
    todo = [k for k in range(len(units)) if k not in records]
    bar = tqdm(
        total=len(units),
        initial=len(records),
        desc="tokenize",
        unit="shard",
        disable=not progress,
    )
    sequential = limit is not None and units[0]["kind"] != "range"  # a quota carries over from unit to unit
    try:
        if workers == 1 or sequential or len(todo) <= 1:
            for k in todo:
                quota = None
                if sequential:
                    quota = limit - sum(r["num_samples"] for r in records.values())
                    if quota <= 0:
                        break
                records[k] = _encode_unit(k, quota)
                bar.update(1)
        else:
            threads = max(1, torch.get_num_threads() // workers)
            with multiprocessing.get_context("fork").Pool(workers, _worker_init, (threads,)) as pool:
                for record in pool.imap_unordered(_encode_unit, todo):
                    records[record["unit"]] = record
                    bar.update(1)
    finally:
        bar.close()
        _JOB.clear()
    return _write_manifest(
        out,
        plan,
        [records[k] for k in sorted(records)],
        image_tokenizer,
        text_tokenizer,
        code_dtype,
    )


def _write_manifest(out: Path, plan, records, image_tok, text_tok, code_dtype) -> dict[str, Any]:
    from vilgkit.sharded import write_json_atomic

    shards = [r for r in records if r["num_samples"]]
    if not shards:
        raise TokenizeError("the data set yielded no samples to tokenize")
    grids = {tuple(r["grid"]) for r in shards}
    if len(grids) > 1:
        raise TokenizeError(f"the shards have different code grids {sorted(grids)}: give the data one image_size")
    skipped: Counter = Counter()
    for r in records:
        skipped.update(r.get("skipped", {}))
    keep = ("name", "num_samples", "sha256", "jsonl_sha256", "widths")
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "num_samples": sum(r["num_samples"] for r in shards),
        "grid": list(grids.pop()),
        "code_dtype": str(code_dtype).removeprefix("torch."),
        "image_tokenizer": {
            "class": f"{type(image_tok).__module__}.{type(image_tok).__qualname__}",
            "fingerprint": plan["image_tokenizer"],
            "codebook_size": int(image_tok.codebook_size),
            "downsample": int(image_tok.downsample),
        },
        "text_tokenizer": {
            "class": f"{type(text_tok).__module__}.{type(text_tok).__qualname__}",
            "fingerprint": plan["text_tokenizer"],
            "vocab_size": int(text_tok.vocab_size),
            "special_ids": {k: getattr(text_tok, f"{k}_id", None) for k in ("pad", "bos", "eos", "sep", "unk")},
        },
        "max_text_len": plan["settings"]["max_text_len"],
        "truncated": sum(r.get("truncated", 0) for r in shards),
        "skipped": dict(skipped),
        "data": plan["data"],
        "units": len(plan["units"]),
        "shards": [{k: r[k] for k in keep} for r in shards],
    }
    write_json_atomic(out / MANIFEST, manifest)  # last: the folder is complete only now
    return manifest
