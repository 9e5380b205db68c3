"""Pre-tokenized code shards: encode a data set once, train from the codes without the image tokenizer.

(Writing them — one finite, parallel, resumable pass — is :mod:`vilgkit.data.code_shard_writer`.)

A shard folder holds ``shard-NNNNN.safetensors`` (``codes`` ``[N, h, w]`` int16/int32;
``caption_ids`` ``[N, L]`` int32 padded with the tokenizer's pad id and ``caption_len`` ``[N]``),
``shard-NNNNN.jsonl`` (the sample's texts and ground truth, one line per sample) and
``manifest.json``, written last, naming both tokenizers with their fingerprints (SHA-256 of the
image tokenizer's weights and of the text tokenizer's vocabulary and settings) and every shard's
SHA-256. A folder without a manifest is an interrupted write and is refused.

:class:`CodeShardDataset` reads them; given the tokenizers a recipe uses (or their fingerprints)
it refuses shards made with different ones, saying which differs.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import tempfile
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from vilgkit.errors import VilgkitError
from vilgkit.registry import DATASETS

MANIFEST = "manifest.json"
FORMAT = 1
#: non-tensor fields copied into the shard's JSONL when a sample has them
TEXT_FIELDS = ("caption", "question", "answer", "question_type", "lang", "scene", "references", "key", "index")


class TokenizerMismatchError(VilgkitError):
    """Code shards were made with another tokenizer than the one in use."""


# ----------------------------------------------------------------------------- fingerprints


def image_tokenizer_fingerprint(tokenizer: torch.nn.Module | None) -> str:
    """SHA-256 over the class, the code geometry and every tensor of the state dict — of
    ``tokenizer.inference_state_dict()`` when it has one (a VQGAN's discriminator, freshly built
    beside a published checkpoint, does not change its codes). Data that already carries codes
    needs no tokenizer: ``None`` has its own fingerprint."""
    if tokenizer is None:
        return "no-image-tokenizer"
    h = hashlib.sha256(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    h.update(f"{tokenizer.codebook_size}/{tokenizer.downsample}".encode())
    state = tokenizer.inference_state_dict() if callable(getattr(tokenizer, "inference_state_dict", None)) else None
    for name, tensor in sorted((state if state is not None else tokenizer.state_dict()).items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        t = t.reshape(-1)  # a 0-d tensor (a step counter) cannot be viewed as bytes
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def text_tokenizer_fingerprint(tokenizer: Any) -> str:
    """The tokenizer's own ``fingerprint()`` if it has one, else SHA-256 of what ``save`` writes."""
    if hasattr(tokenizer, "fingerprint"):
        return tokenizer.fingerprint()
    h = hashlib.sha256(type(tokenizer).__qualname__.encode())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                h.update(path.relative_to(tmp).as_posix().encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- writing


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), pad_id, dtype=torch.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
    return out, torch.tensor([len(r) for r in rows], dtype=torch.int32)


# ----------------------------------------------------------------------------- reading


@DATASETS.register_module()
class CodeShardDataset(Dataset):
    """Samples from code shards written by ``vilgkit tokenize`` / :func:`write_code_shards`.

    Args:
        path: the shard folder (with ``manifest.json``).
        expect_image_tokenizer: fingerprint the shards' image tokenizer must have (or ``None``).
        expect_text_tokenizer: fingerprint the shards' text tokenizer must have (or ``None``).
        verify: check every shard's SHA-256 against the manifest when opening.
        cache_shards: how many decoded shards to keep in memory.

    Samples: ``codes`` (int64 ``[h, w]``), ``caption_ids``/``question_ids``/``answer_ids`` (int64,
    unpadded length in ``*_len``; padded with the pad id to the widest shard so batches stack),
    and the texts and ground truth (``caption``, ``lang``, ``scene``…) as written.
    """

    def __init__(
        self,
        path: str,
        expect_image_tokenizer: str | None = None,
        expect_text_tokenizer: str | None = None,
        verify: bool = False,
        cache_shards: int = 4,
    ) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{self.path} has no {MANIFEST}: not code shards, or an interrupted `vilgkit tokenize`"
            )
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if self.manifest.get("format") != FORMAT:
            raise ValueError(
                f"{manifest_path}: unsupported format {self.manifest.get('format')!r} (this vilgkit reads {FORMAT})"
            )
        self.check_fingerprints(expect_image_tokenizer, expect_text_tokenizer)
        self.shards = self.manifest["shards"]
        self.offsets = [0]
        for shard in self.shards:
            self.offsets.append(self.offsets[-1] + shard["num_samples"])
        if verify:
            for shard in self.shards:
                for suffix, key in ((".safetensors", "sha256"), (".jsonl", "jsonl_sha256")):
                    if _sha256(self.path / f"{shard['name']}{suffix}") != shard[key]:
                        raise ValueError(
                            f"{self.path / shard['name']}{suffix} does not match its checksum in the manifest"
                        )
        # ids are padded to the widest shard so that samples from different shards stack
        self.widths = {f: max(sh["widths"][f] for sh in self.shards) for f in ("caption", "question", "answer")}
        self.pad_id = int(self.manifest["text_tokenizer"]["special_ids"]["pad"] or 0)
        self.cache_shards = max(1, int(cache_shards))
        self._cache: OrderedDict[int, tuple[dict[str, torch.Tensor], list[dict[str, Any]]]] = OrderedDict()

    def check_fingerprints(self, image: str | None = None, text: str | None = None) -> None:
        """Refuse shards made with other tokenizers (fingerprints; ``None`` skips a check)."""
        for kind, expected in (("image_tokenizer", image), ("text_tokenizer", text)):
            recorded = self.manifest[kind]
            if expected is not None and expected != recorded["fingerprint"]:
                raise TokenizerMismatchError(
                    f"{self.path}: these code shards were made with a different {kind.replace('_', ' ')} "
                    f"({recorded['class']}, fingerprint {recorded['fingerprint'][:12]}…) than the one in use "
                    f"(fingerprint {expected[:12]}…). Re-run `vilgkit tokenize` with the current tokenizers."
                )

    def check_tokenizers(self, image_tokenizer: Any = None, text_tokenizer: Any = None) -> None:
        """Like :meth:`check_fingerprints`, given tokenizer objects."""
        self.check_fingerprints(
            image_tokenizer_fingerprint(image_tokenizer) if image_tokenizer is not None else None,
            text_tokenizer_fingerprint(text_tokenizer) if text_tokenizer is not None else None,
        )

    def __len__(self) -> int:
        return self.offsets[-1]

    def _shard(self, k: int) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        name = self.shards[k]["name"]
        tensors = load_file(str(self.path / f"{name}.safetensors"))
        with (self.path / f"{name}.jsonl").open(encoding="utf-8") as f:
            extras = [json.loads(line) for line in f]
        self._cache[k] = (tensors, extras)
        if len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return tensors, extras

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index = int(index) % n
        k = self._shard_of(index)
        tensors, extras = self._shard(k)
        j = index - self.offsets[k]
        item: dict[str, Any] = dict(extras[j])
        item["codes"] = tensors["codes"][j].long()
        for field in ("caption", "question", "answer"):
            ids = torch.full((self.widths[field],), self.pad_id, dtype=torch.long)
            row = tensors[f"{field}_ids"][j]
            ids[: row.shape[0]] = row
            item[f"{field}_ids"] = ids
            item[f"{field}_len"] = int(tensors[f"{field}_len"][j])
        return item

    def iter_texts(self, limit: int | None = None) -> Iterable[str]:
        """Captions, questions and answers as written (for tokenizer fitting)."""
        for i in range(min(len(self), limit if limit is not None else len(self))):
            _, extras = self._shard(self._shard_of(i))
            extra = extras[i - self.offsets[self._shard_of(i)]]
            yield from (extra[f] for f in ("caption", "question", "answer") if extra.get(f))

    def _shard_of(self, index: int) -> int:
        return bisect.bisect_right(self.offsets, index) - 1
