"""The run directory: its layout, atomic writes, the hash manifest, the writer lock, and loading
every component back (tokenizers, generator, reconstructor).

Layout of ``run_dir`` (every file name lives in this module)::

    recipe.resolved.yaml          the resolved recipe, with the versions it ran under
    artifacts.json                the manifest: size + SHA-256 of every file the run wrote
    .vilgkit.lock                 the writer lock (held by the process writing the run)
    external/<sha256[:16]>/NAME   copies of files the recipe names outside the run (a taming
                                  checkpoint, a BERT vocab.txt), so the run loads after they move
    <stage>/...                   one folder per stage (below)
    <stage>/checkpoints/step_N/   resumable training state; each step folder has its own
                                  MANIFEST.json (engine/checkpoint.py) and is not in artifacts.json

Stage folders hold (depending on the stage): ``model.safetensors`` (the Trainer's final weights),
``metrics.jsonl``, ``tensorboard/``, ``samples/``; the text tokenizer's files and
``fit_summary.json``; ``image_tokenizer.safetensors`` + ``image_tokenizer.json``, ``eval.json``,
``reconstructions.png``; ``generator.safetensors`` (+ ``reconstructor.safetensors``),
``generator.json`` and the ``tokenized.safetensors`` cache.

Writing: :func:`atomic_write` (a temporary file in the same folder, fsync, rename, fsync of the
folder) under every writer here; :class:`RunDir` records what it writes in ``artifacts.json``.
Reading: every loader verifies the file against the manifest of the run that holds it before it
deserialises a byte, and turns an unreadable file into one :class:`ArtifactError` naming it.
One writer per run directory: :meth:`RunDir.lock` (``fcntl.flock``), taken by ``vilgkit run``
(rank 0 only under torchrun), ``vilgkit eval`` and ``vilgkit export`` before they write.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vilgkit.errors import VilgkitError

# ------------------------------------------------------------------------------------ layout

RESOLVED_RECIPE = "recipe.resolved.yaml"
MANIFEST = "artifacts.json"
LOCK = ".vilgkit.lock"
EXTERNAL_DIR = "external"

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_MANIFEST = "MANIFEST.json"
CHECKPOINT_META = "meta.json"
DAMAGED_DIR = "damaged"  # under checkpoints/: step folders that could not be used, kept for inspection

FINAL_WEIGHTS = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"

FIT_SUMMARY = "fit_summary.json"
IMAGE_TOKENIZER_WEIGHTS = "image_tokenizer.safetensors"
IMAGE_TOKENIZER_RECORD = "image_tokenizer.json"
TOKENIZER_EVAL = "eval.json"
RECONSTRUCTIONS = "reconstructions.png"

GENERATOR_WEIGHTS = "generator.safetensors"
RECONSTRUCTOR_WEIGHTS = "reconstructor.safetensors"
GENERATOR_RECORD = "generator.json"
TOKENIZED_CACHE = "tokenized.safetensors"

SHAPES_FEATURES_DIR = "shapes_features"
EXPORT_RECORD = "export.json"
#: What a generator stage records as its tokenizer source when the recipe's own component is used
#: (a published vocabulary or a pre-trained checkpoint, no fit or training stage).
FROM_RECIPE = "recipe"

MANIFEST_FORMAT = "vilgkit-run/1"

#: component classes name the constructor arguments that are paths to files outside the run in a
#: class attribute of this name (e.g. ``TamingVQGAN.EXTERNAL_FILES = ("checkpoint", "config")``)
EXTERNAL_FILES_ATTR = "EXTERNAL_FILES"


class ArtifactError(VilgkitError):
    """A run file that cannot be used: changed since it was written, unreadable, or not fitting."""


class CorruptFileError(ArtifactError):
    """A file that differs from what was written (size, hash) or cannot be deserialised."""


class RunDirBusyError(VilgkitError):
    """Another process holds the run directory's writer lock."""


# ------------------------------------------------------------------------------------ hashing


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_HASH_CACHE: dict[tuple[str, int, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    """:func:`sha256_file`, remembered per (path, size, mtime, inode) within this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(path)
    return _HASH_CACHE[key]


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"bytes", "sha256", "mtime_ns"}`` of a file (the modification time only tells
    :meth:`RunDir.record_tree` what to hash again; verification uses size and hash)."""
    path = Path(path)
    st = path.stat()
    return {"bytes": st.st_size, "sha256": _cached_sha256(path), "mtime_ns": st.st_mtime_ns}


# ------------------------------------------------------------------------------------ atomic writes


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (a no-op where the platform refuses directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed over ``path``
    (and the folder fsynced), so a reader sees the old file or the whole new one, never a part.

    Raises:
        ArtifactError: the file cannot be written (disk full, read-only folder…), naming it; the
            temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ArtifactError(f"cannot write {path}: {err.strerror or err}") from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """JSON (non-JSON leaves such as paths become strings), written atomically."""
    return write_text_atomic(
        path, json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=str)
    )


def save_file_atomic(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """A name → tensor dict as safetensors, atomically (tied weights stored once, see :func:`save_tensors`)."""
    with atomic_write(path) as tmp:
        save_tensors(tmp, tensors, metadata)
    return Path(path)


# ------------------------------------------------------------------------------------ tensor files


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a name → tensor dict as safetensors; tensors sharing storage (tied weights) are stored
    once and their other names recorded in the metadata, restored by :func:`load_tensors`."""
    from safetensors.torch import save_file

    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        t = tensor.detach()
        if t.numel() == 0:
            unique[name] = t.to("cpu").contiguous()
            continue
        ptr = t.untyped_storage().data_ptr()
        key = (ptr, t.storage_offset(), tuple(t.shape), t.dtype)
        if key in views:  # the same tensor under a second name (tied weights)
            aliases[name] = views[key]
            continue
        views[key] = name
        # safetensors refuses tensors that share memory: copy partial views of a seen storage
        shared = ptr in storages
        storages.add(ptr)
        needs_copy = shared or t.device.type != "cpu" or not t.is_contiguous()
        unique[name] = t.to("cpu").contiguous().clone() if needs_copy else t
    meta = dict(metadata or {})
    if aliases:
        meta["vilgkit_aliases"] = json.dumps(aliases)
    save_file(unique, str(path), metadata=meta)


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def readable(path: Path, what: str = "a safetensors file") -> Iterator[None]:
    """Turn a deserialiser's exception into one ArtifactError naming the file."""
    try:
        yield
    except (ArtifactError, FileNotFoundError, MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as err:  # SafetensorError, UnicodeDecodeError, json errors, KeyError…
        detail = _first_line(err)
        raise CorruptFileError(f"{path} is not {what} that vilgkit can read ({type(err).__name__}: {detail})") from err


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_tensors` (aliases come back as the same tensor). Not verified: use
    :func:`load_weights` for run files."""
    from safetensors import safe_open

    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    with readable(path):
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            for name in fh.keys():
                out[name] = fh.get_tensor(name)
            aliases = json.loads((fh.metadata() or {}).get("vilgkit_aliases", "{}"))
        for name, target in aliases.items():
            out[name] = out[target]
    return out


def tensor_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (header only)."""
    from safetensors import safe_open

    path = Path(path)
    with readable(path), safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Shapes in a safetensors file, read from its header only."""
    from safetensors import safe_open

    path = Path(path)
    with readable(path):
        with safe_open(str(path), framework="pt") as fh:
            shapes = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
            aliases = json.loads((fh.metadata() or {}).get("vilgkit_aliases", "{}"))
        shapes.update({name: shapes[target] for name, target in aliases.items()})
    return shapes


def weights_mismatch(module: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """``None`` when ``shapes`` (name → shape) fit ``module``'s state dict, else what differs:
    ``missing: …; unexpected: …; shape changed: k: file [..] vs model [..]``."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    have = {k: tuple(v) for k, v in shapes.items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    reshaped = sorted(
        f"{k}: file {list(have[k])} vs model {list(want[k])}" for k in set(have) & set(want) if have[k] != want[k]
    )
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape changed", reshaped)):
        if items:
            shown = items[:20] + ([f"... {len(items) - 20} more"] if len(items) > 20 else [])
            parts.append(f"{title}: " + ", ".join(shown))
    return "; ".join(parts) or None


def load_state_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path, error: type[Exception] = ArtifactError
) -> None:
    """``load_state_dict(strict=True)`` that reports missing, unexpected and re-shaped keys in one line."""
    problem = weights_mismatch(module, {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise error(f"{source} does not fit the {type(module).__name__}: {problem}")
    module.load_state_dict(dict(state), strict=True)


def load_weights(
    module: nn.Module,
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    error: type[Exception] = ArtifactError,
) -> nn.Module:
    """Load a weights file into ``module`` in place: verified against its run's manifest, shapes
    checked from the header before any tensor is read, then ``load_state_dict(strict=True)``.

    Raises:
        FileNotFoundError: no such file.
        ArtifactError: the file changed since it was written or is not a safetensors file.
        ``error`` (default ArtifactError): the weights do not fit ``module`` (keys, shapes listed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    verify_file(path)
    problem = weights_mismatch(module, tensor_shapes(path))
    if problem:
        raise error(f"{path} does not fit the {type(module).__name__}: {problem}")
    if device is None:
        device = next((t.device for t in module.state_dict().values()), torch.device("cpu"))
    module.load_state_dict(load_tensors(path, device), strict=True)
    return module


def read_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a run's weights file, verified against its run's manifest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    verify_file(path)
    return load_tensors(path, device)


def read_json(path: str | Path) -> Any:
    """A run's JSON file, verified against its run's manifest."""
    path = Path(path)
    verify_file(path)
    with readable(path, "a JSON file"):
        return json.loads(path.read_text(encoding="utf-8"))


def save_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """:func:`save_file_atomic`, recorded in the manifest of the run that holds ``path`` (if any)."""
    full = save_file_atomic(dict(tensors), path, metadata)
    _record_in_owner(full)
    return full


def write_json(path: str | Path, data: Any, **kwargs: Any) -> Path:
    """:func:`write_json_atomic`, recorded in the manifest of the run that holds ``path`` (if any)."""
    full = write_json_atomic(path, data, **kwargs)
    _record_in_owner(full)
    return full


def write_text(path: str | Path, text: str) -> Path:
    """:func:`write_text_atomic`, recorded in the manifest of the run that holds ``path`` (if any)."""
    full = write_text_atomic(path, text)
    _record_in_owner(full)
    return full


def record_file(*paths: str | Path) -> None:
    """Hash files written by someone else (a plugin's ``save``) into their run's manifest."""
    for path in paths:
        _record_in_owner(Path(path))


def record_tree(folder: str | Path) -> None:
    """:meth:`RunDir.record_tree` for the run that holds ``folder`` (if any)."""
    run = RunDir.owning(folder)
    if run is not None:
        run.record_tree(Path(folder).resolve())


def _record_in_owner(path: Path) -> None:
    run = RunDir.owning(path)
    if run is not None and not _skipped(run.relative(path.resolve())):
        run.record(path.resolve())


# ------------------------------------------------------------------------------------ the manifest


def warn(message: str) -> None:
    """One ``vilgkit: warning: …`` line on stderr."""
    print(f"vilgkit: warning: {message}", file=sys.stderr, flush=True)


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warn(message)


def _skipped(rel: Path) -> bool:
    """Paths under a run that the manifest does not cover: checkpoints (their own manifests),
    the lock, the manifest, temporary and hidden files."""
    return any(part == CHECKPOINTS_DIR or part.startswith(".") for part in rel.parts) or rel.as_posix() == MANIFEST


class RunDir:
    """One run directory: where its files are, what they hashed to, who writes it.

    ``RunDir(path)`` is cheap (nothing is read until needed); any number may exist for one
    directory. Writes go through the ``write_*``/``save_*`` methods, which write atomically and
    record the file in ``artifacts.json``; reads through ``read_*``/``load_*``, which verify first.
    Only the process holding the lock (rank 0 of a launch) should write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(os.path.abspath(path))  # absolute: a relative name is always run-relative

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---------------------------------------------------------------- layout
    @property
    def recipe_path(self) -> Path:
        return self.path / RESOLVED_RECIPE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    def stage(self, name: str) -> Path:
        """The folder of stage ``name`` (not created)."""
        return self.path / name

    def is_run(self) -> bool:
        return self.recipe_path.is_file()

    @classmethod
    def owning(cls, path: str | Path) -> RunDir | None:
        """The run directory that holds ``path`` (the nearest folder above it with a manifest or a
        resolved recipe), or ``None``."""
        path = Path(path).resolve()
        for folder in (path, *path.parents) if path.is_dir() else path.parents:
            if (folder / MANIFEST).is_file() or (folder / RESOLVED_RECIPE).is_file():
                return cls(folder)
        return None

    def relative(self, path: str | Path) -> Path:
        """A filesystem path (absolute, or relative to the working directory) relative to the run
        directory (``ValueError`` when outside it)."""
        return Path(path).resolve().relative_to(self.path.resolve())

    def resolve(self, path: str | Path) -> Path:
        """A path relative to the run (a manifest key, ``"train_generator/generator.json"``) or an
        absolute one, as a filesystem path."""
        path = Path(path)
        return path if path.is_absolute() else self.path / path

    # ---------------------------------------------------------------- manifest
    def manifest(self) -> dict[str, Any]:
        """The manifest (an empty one when the run has none yet)."""
        path = self.manifest_path
        if not path.is_file():
            return {"format": MANIFEST_FORMAT, "files": {}, "external": {}}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ArtifactError(
                f"{path} is not a readable manifest ({err}); restore it or delete it to skip verification"
            ) from None
        if (
            not isinstance(data, dict)
            or data.get("format") != MANIFEST_FORMAT
            or not isinstance(data.get("files"), dict)
        ):
            raise ArtifactError(f"{path} is not a vilgkit run manifest (format {MANIFEST_FORMAT})")
        data.setdefault("external", {})
        return data

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path, manifest, indent=1, sort_keys=True)

    def record(self, *paths: str | Path) -> None:
        """Hash ``paths`` (files inside the run) into the manifest."""
        if not paths:
            return
        manifest = self.manifest()
        for path in paths:
            full = self.resolve(path)
            manifest["files"][self.relative(full).as_posix()] = file_record(full)
        self._write_manifest(manifest)

    def record_tree(self, folder: str | Path | None = None) -> list[str]:
        """Hash every file under ``folder`` (default: the whole run) that is new or changed since it
        was recorded (checkpoints, hidden and temporary files excepted); drops entries of files
        that no longer exist there. Returns the paths recorded."""
        root = self.resolve(folder) if folder is not None else self.path
        if not root.is_dir():
            return []
        manifest = self.manifest()
        files = manifest["files"]
        base = self.relative(root).as_posix()
        base = "" if base == "." else base
        seen, changed = set(), []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = self.relative(path)
            if _skipped(rel):
                continue
            key = rel.as_posix()
            seen.add(key)
            old = files.get(key)
            st = path.stat()
            if old is None or old.get("bytes") != st.st_size or old.get("mtime_ns") != st.st_mtime_ns:
                files[key] = file_record(path)
                changed.append(key)
        gone = [k for k in files if (not base or k.startswith(base + "/")) and k not in seen]
        for key in gone:
            del files[key]
        if changed or gone:
            self._write_manifest(manifest)
        return changed

    def verify(self, *paths: str | Path) -> None:
        """Check files against the manifest; raises :class:`ArtifactError` naming the first that
        differs. A run without a manifest (written before vilgkit kept one) is loaded with a
        warning; a file the manifest does not list is loaded with a warning."""
        if not self.manifest_path.is_file():
            _warn_once(str(self.path), f"{self.path} has no {MANIFEST}: its files cannot be verified")
            return
        files = self.manifest()["files"]
        for path in paths:
            full = self.resolve(path)
            try:
                rel = self.relative(full)
            except ValueError:
                continue  # outside this run: verified by its own
            if _skipped(rel):
                continue
            entry = files.get(rel.as_posix())
            if entry is None:
                _warn_once(str(full), f"{full} is not listed in {self.manifest_path}: loaded without verification")
                continue
            if not full.is_file():
                raise CorruptFileError(f"{full} is missing (listed in {self.manifest_path})")
            size = full.stat().st_size
            if size != entry["bytes"]:
                raise CorruptFileError(
                    f"{full} is {size} bytes but {entry['bytes']} were written (truncated or replaced); "
                    f"its hash is in {self.manifest_path}"
                )
            if _cached_sha256(full) != entry["sha256"]:
                raise CorruptFileError(
                    f"{full} does not match its SHA-256 in {self.manifest_path} (changed or corrupted "
                    "after it was written)"
                )

    def verify_tree(self, folder: str | Path) -> None:
        """Verify every manifest entry under ``folder`` (a tokenizer's saved directory, say)."""
        root = self.resolve(folder)
        if not self.manifest_path.is_file():
            self.verify(root)  # the warning
            return
        try:
            base = self.relative(root).as_posix()
        except ValueError:
            return
        listed = [k for k in self.manifest()["files"] if base in ("", ".") or k == base or k.startswith(base + "/")]
        if not listed and any(p.is_file() for p in root.rglob("*")):
            _warn_once(str(root), f"{root} is not listed in {self.manifest_path}: loaded without verification")
        self.verify(*listed)

    def verify_all(self) -> list[str]:
        """Verify every file the manifest lists; returns them."""
        listed = sorted(self.manifest()["files"])
        self.verify(*listed)
        return listed

    # ---------------------------------------------------------------- writing (lock holder only)
    def write_json(self, path: str | Path, data: Any, **kwargs: Any) -> Path:
        full = write_json_atomic(self.resolve(path), data, **kwargs)
        self.record(full)
        return full

    def write_text(self, path: str | Path, text: str) -> Path:
        full = write_text_atomic(self.resolve(path), text)
        self.record(full)
        return full

    def save_weights(
        self, path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> Path:
        """A state dict as safetensors (tied weights once), atomically, hashed into the manifest."""
        full = save_file_atomic(dict(tensors), self.resolve(path), metadata)
        self.record(full)
        return full

    def copy_in(self, source: str | Path, path: str | Path) -> Path:
        """Copy a file into the run (atomically) and record it."""
        full = self.resolve(path)
        with atomic_write(full) as tmp:
            shutil.copyfile(source, tmp)
        self.record(full)
        return full

    # ---------------------------------------------------------------- reading
    def read_json(self, path: str | Path) -> Any:
        return read_json(self.resolve(path))

    def read_weights(self, path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        return read_weights(self.resolve(path), device)

    def load_weights(self, module: nn.Module, path: str | Path, **kwargs: Any) -> nn.Module:
        return load_weights(module, self.resolve(path), **kwargs)

    # ---------------------------------------------------------------- the recipe
    def write_recipe(self, recipe: dict[str, Any], versions: dict[str, Any] | None = None) -> Path:
        import yaml

        record = dict(recipe)
        if versions is not None:
            record["_versions"] = versions
        return self.write_text(RESOLVED_RECIPE, yaml.safe_dump(record, sort_keys=False, allow_unicode=True))

    def read_recipe(self, *, anchored: bool = True, versions: bool = False) -> dict[str, Any]:
        """The resolved recipe, verified; with ``anchored`` the paths of external files point at the
        run's copies (see :meth:`adopt_external_files`); ``_versions`` only with ``versions``."""
        import yaml

        path = self.recipe_path
        if not path.is_file():
            raise ArtifactError(f"{self.path} is not a vilgkit run directory (no {RESOLVED_RECIPE})")
        self.verify(path)
        with readable(path, "a resolved recipe (YAML)"):
            recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(recipe, dict):
            raise ArtifactError(f"{path} is not a resolved recipe (a YAML mapping)")
        from vilgkit.recipe import load_components, to_dict, validate

        # a run directory may come from elsewhere: only registered classes, with the declared types
        provenance = recipe.pop("_versions", None)
        load_components()
        recipe = to_dict(validate(recipe, str(path), registered_only=True))
        if versions and provenance is not None:
            recipe["_versions"] = provenance
        return self.anchor(recipe) if anchored else recipe

    # ---------------------------------------------------------------- external files
    def adopt_external_files(self, recipe: dict[str, Any], *, write: bool = True) -> dict[str, Any]:
        """Copy the files the recipe names outside the run (arguments a component class lists in
        ``EXTERNAL_FILES``) into ``external/<sha256[:16]>/NAME``, record them, and return a copy of
        ``recipe`` whose arguments point at the copies. ``recipe`` itself is not changed (the
        resolved recipe keeps the user's paths: resume checks compare those).

        A file that no longer exists at its path is taken from the run's earlier copy of it; with
        ``write=False`` (ranks that do not write) nothing is copied.
        """
        manifest = self.manifest() if self.manifest_path.is_file() else None
        known = (manifest or {}).get("external", {})
        out = copy.deepcopy(recipe)
        adopted: dict[str, dict[str, Any]] = {}
        for key, node, arg in _external_args(out):
            value = node["init_args"][arg]
            entry = known.get(key)
            source = Path(str(value)).expanduser()
            if not source.is_absolute():
                source = Path.cwd() / source
            try:
                inside = self.relative(source)
            except ValueError:
                inside = None
            if inside is not None:
                continue  # already a file of this run
            if source.is_file():
                digest = sha256_file(source)
                rel = Path(EXTERNAL_DIR) / digest[:16] / source.name
                present = (self.path / rel).is_file() and _cached_sha256(self.path / rel) == digest
                if write and not present:
                    self.copy_in(source, rel)
                elif not write and not present:
                    continue  # a rank that does not write, before the writer copied it: the original
                if entry is not None and entry.get("source") == str(source) and entry.get("sha256") != digest:
                    warn(f"{source} changed since this run copied it; using the new content ({rel})")
                adopted[key] = {"source": str(source), "file": rel.as_posix(), "sha256": digest}
            elif entry is not None and (self.path / entry["file"]).is_file():
                _warn_once(f"{key}:{source}", f"{source} is gone; using this run's copy {self.path / entry['file']}")
                adopted[key] = entry
            else:
                continue  # the component's own constructor reports the missing file
            node["init_args"][arg] = str((self.path / adopted[key]["file"]).resolve())
        if write and adopted and any(known.get(k) != v for k, v in adopted.items()):
            manifest = self.manifest()
            manifest["external"].update(adopted)
            self._write_manifest(manifest)
        return out

    def anchor(self, recipe: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``recipe`` whose external-file arguments point at this run's copies (verified).
        Only the manifest's ``external`` entries are read: no class is looked up or imported."""
        if not self.manifest_path.is_file():
            return recipe
        external = self.manifest().get("external", {})
        if not external:
            return recipe
        out = copy.deepcopy(recipe)
        for key, entry in sorted(external.items()):
            parent, leaf = _dotted_parent(out, key)
            if parent is None or not (parent.get(leaf) is None or isinstance(parent.get(leaf), str)):
                continue  # (None: an implied file, e.g. the config found next to a checkpoint)
            copy_path = self.path / str(entry.get("file", ""))
            if copy_path.is_file():
                self.verify(copy_path)
                parent[leaf] = str(copy_path.resolve())
        return out

    def anchor_node(self, node: Any, key: str) -> Any:
        """:meth:`anchor` for one recipe node found at dotted ``key`` of this run's recipe."""
        if not isinstance(node, dict):
            return node
        return self.anchor({key: node})[key]

    # ---------------------------------------------------------------- the writer lock
    def lock(self, command: str = "vilgkit run") -> bool:
        """Take the run's writer lock for this process (until :meth:`unlock` or exit).

        Returns ``True`` when this call took it, ``False`` when this process already held it.

        Raises:
            RunDirBusyError: another process holds it (its pid, host and command are named).
            ArtifactError: the run directory cannot be written.
        """
        key = str(self.path.resolve())
        if key in _LOCKS:
            return False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ArtifactError(f"cannot write to the run directory {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirBusyError(
                f"{self.path} is being written by another vilgkit process ({holder}); wait for it to finish, "
                "or use another run_dir"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        _LOCKS[key] = fd
        return True

    def unlock(self) -> None:
        """Release the lock if this process holds it."""
        fd = _LOCKS.pop(str(self.path.resolve()), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def locked(self, command: str = "vilgkit run") -> Iterator[RunDir]:
        """Hold the lock for a block (re-entrant within a process)."""
        took = self.lock(command)
        try:
            yield self
        finally:
            if took:
                self.unlock()

    def holds_lock(self) -> bool:
        return str(self.path.resolve()) in _LOCKS


_LOCKS: dict[str, int] = {}


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, {info['command']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def verify_file(path: str | Path) -> None:
    """Verify ``path`` against the manifest of the run that holds it (nothing to do outside a run,
    or under ``checkpoints/``, whose step folders carry their own manifests)."""
    run = RunDir.owning(path)
    if run is not None:
        run.verify(Path(path).resolve())


def verify_tree(folder: str | Path) -> None:
    run = RunDir.owning(folder)
    if run is not None:
        run.verify_tree(Path(folder).resolve())


def _external_args(recipe: Any, prefix: str = "") -> Iterator[tuple[str, dict[str, Any], str]]:
    """``(dotted key, node, argument)`` for every file argument a component class declares."""
    if isinstance(recipe, list):
        for i, value in enumerate(recipe):
            yield from _external_args(value, f"{prefix}{i}.")
        return
    if not isinstance(recipe, dict):
        return
    if isinstance(recipe.get("class_path"), str) and isinstance(recipe.get("init_args"), dict):
        names = _declared_external_files(recipe["class_path"])
        implied = _implied_external_files(recipe["class_path"], recipe["init_args"])
        for arg, value in implied.items():  # files the component finds by itself (a config next to a checkpoint)
            if recipe["init_args"].get(arg) is None:
                recipe["init_args"][arg] = value
        for arg in names:
            if isinstance(recipe["init_args"].get(arg), str) and recipe["init_args"][arg]:
                yield f"{prefix}init_args.{arg}", recipe, arg
    for key, value in recipe.items():
        yield from _external_args(value, f"{prefix}{key}.")


def _declared_external_files(class_path: str) -> tuple[str, ...]:
    """The class's ``EXTERNAL_FILES``; only classes already imported are asked (a resolved recipe's
    are): reading a recipe never imports a module."""
    module, _, name = class_path.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    return tuple(getattr(cls, EXTERNAL_FILES_ATTR, ()) or ())


def _implied_external_files(class_path: str, init_args: dict[str, Any]) -> dict[str, str]:
    """Files a component would find by itself when an argument is left out (its classmethod
    ``implied_files(init_args)``), so they are copied into the run with the ones named."""
    module, _, name = class_path.rpartition(".")
    implied = getattr(getattr(sys.modules.get(module), name, None), "implied_files", None)
    return dict(implied(dict(init_args))) if callable(implied) else {}


def _dotted_parent(tree: Any, key: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping holding dotted ``key`` (list indices as numbers) and the last part, or ``(None, _)``."""
    *parts, leaf = key.split(".")
    node = tree
    for part in parts:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None, leaf
    return (node, leaf) if isinstance(node, dict) else (None, leaf)


# ------------------------------------------------------------------------------------ loading components


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
    recipe = run.read_recipe()
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
    return LoadedRun(run.path, stage_dir, recipe, record, generator, text_tok, image_tok, reconstructor, grid)  # type: ignore[arg-type]


__all__ = [
    "ArtifactError",
    "CorruptFileError",
    "RunDirBusyError",
    "readable",
    "warn",
    "RunDir",
    "LoadedRun",
    "atomic_write",
    "sha256_file",
    "file_record",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "save_file_atomic",
    "save_tensors",
    "load_tensors",
    "tensor_shapes",
    "tensor_metadata",
    "weights_mismatch",
    "load_state_strict",
    "load_weights",
    "read_weights",
    "read_json",
    "save_weights",
    "write_json",
    "write_text",
    "record_file",
    "record_tree",
    "verify_file",
    "verify_tree",
    "load_text_tokenizer",
    "load_image_tokenizer",
    "load_generator_weights",
    "attach_reconstructor",
    "load_run",
    "last_generator_stage",
    "stage_names",
    "build_components",
]
