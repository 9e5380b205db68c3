"""Hostile files built by the tests: pickles that run a shell command, and re-hashing so that a
tampered file passes every hash check (what an attacker who can write the files can do)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def _unicode(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def system_pickle(module: str, name: str, command: str) -> bytes:
    """A protocol-4 pickle that calls ``module.name(command)`` when loaded (``STACK_GLOBAL``, ``REDUCE``).

    ``name`` may be dotted: ``("torch.distributed.checkpoint.metadata", "os.system")`` reaches
    ``os.system`` through a module that merely imports ``os``.
    """
    return b"\x80\x04" + _unicode(module) + _unicode(name) + b"\x93" + _unicode(command) + b"\x85R."


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _replace(node: Any, old: str, new: str, size: int) -> Any:
    if isinstance(node, dict):
        if node.get("sha256") == old:
            node = {**node, "sha256": new, "bytes": size} if "bytes" in node else {**node, "sha256": new}
        return {k: _replace(v, old, new, size) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, old, new, size) for v in node]
    return new if node == old else node


def overwrite_and_rehash(path: Path, data: bytes, root: Path) -> None:
    """Replace ``path``'s bytes and rewrite every JSON under ``root`` naming its old hash (cascading:
    a JSON file that changes is itself re-hashed wherever it is listed)."""
    queue = [(path, data)]
    while queue:
        target, content = queue.pop()
        old = _sha(target)
        target.write_bytes(content)
        new = _sha(target)
        for js in root.rglob("*.json"):
            if js == target:
                continue
            text = js.read_text()
            if old not in text:
                continue
            updated = json.dumps(_replace(json.loads(text), old, new, len(content)), indent=1, sort_keys=True)
            queue.append((js, updated.encode()))
