"""``RunDir``: one run directory's hash manifest (``artifacts.json``), verification against it,
copies of the files its recipe names outside it (the writer lock is :mod:`.lock`'s); and reading a
run file by path, verified against the manifest of the run that holds it."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vilgkit.artifacts.external import dotted_parent, external_args
from vilgkit.artifacts.files import (
    ArtifactError,
    CorruptFileError,
    atomic_write,
    cached_sha256,
    file_record,
    load_tensors,
    readable,
    save_file_atomic,
    sha256_file,
    tensor_shapes,
    weights_mismatch,
    write_json_atomic,
    write_text_atomic,
)
from vilgkit.artifacts.layout import EXTERNAL_DIR, LOCK, MANIFEST, MANIFEST_FORMAT, RESOLVED_RECIPE, outside_manifest
from vilgkit.artifacts.lock import WriterLock


def warn(message: str) -> None:
    """One ``vilgkit: warning: …`` line on stderr."""
    print(f"vilgkit: warning: {message}", file=sys.stderr, flush=True)


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warn(message)


class RunDir(WriterLock):
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
            if outside_manifest(rel):
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
            if outside_manifest(rel):
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
            if cached_sha256(full) != entry["sha256"]:
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
        for key, node, arg in external_args(out):
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
                present = (self.path / rel).is_file() and cached_sha256(self.path / rel) == digest
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
            parent, leaf = dotted_parent(out, key)
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


# ---------------------------------------------------------------- reading by path
# (the run that holds a path verifies it: RunDir.owning walks up to its manifest)


def verify_file(path: str | Path) -> None:
    """Verify ``path`` against the manifest of the run that holds it (nothing to do outside a run,
    or under ``checkpoints/``, whose step folders carry their own manifests)."""
    run = RunDir.owning(path)
    if run is not None:
        run.verify(Path(path).resolve())


def verify_tree(folder: str | Path) -> None:
    """:meth:`RunDir.verify_tree` for the run that holds ``folder`` (nothing to do outside a run)."""
    run = RunDir.owning(folder)
    if run is not None:
        run.verify_tree(Path(folder).resolve())


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
