"""Per-machine choice between equivalent CPU code paths, by a short measured probe cached per machine.

Some layouts are faster on one CPU and slower on another (measured: the row-split decoding GEMV
won 2× on a 2-core AMD EPYC without AMX and lost 2× on a 2-core Intel Xeon with AMX, at two
threads). Each decision below names its branches; the first is the *documented default*:

========================  =====================================  =======================================
decision                  branches                               where
========================  =====================================  =======================================
``gemv_few``              ``split`` / ``linear``                 1–2 decoding rows: ``models.gemv``'s
                                                                 split layouts vs plain ``F.linear``
``gemv_many``             ``split`` / ``linear``                 3–16 decoding rows, likewise
``attention_bf16``        ``explicit`` / ``sdpa``                CPU training attention of the default
                                                                 dense pattern under bf16 autocast
``attention_fp32``        ``explicit`` / ``sdpa``                the same in fp32
``encode_layout``         ``channels_last`` / ``contiguous``     VQ-VAE ``encode`` on the CPU
========================  =====================================  =======================================

How a branch is chosen, first match wins:

1. ``VILGKIT_DISPATCH`` — a comma list ``name=branch`` (e.g. ``gemv_few=linear,attention_bf16=sdpa``)
   forces those decisions; ``VILGKIT_DISPATCH=defaults`` uses the documented defaults and never
   probes (reproducible runs, CI);
2. :func:`forced` — the same from code (a context manager; tests and benchmarks);
3. the per-machine cache, a small JSON file (``$XDG_CACHE_HOME/vilgkit/dispatch.json``, else
   ``~/.cache/vilgkit/dispatch.json``; ``VILGKIT_DISPATCH_CACHE`` names another file) keyed by CPU
   model + torch version + thread count;
4. otherwise a probe times both branches on small, representative operands (tens of milliseconds
   each, about a second for all five on a quiet 2-core machine), stores the result and returns
   the winner: the default unless another branch is more than 10 % faster (:data:`MARGIN`), so
   that timing noise on a loaded machine does not flip a decision.

A probe runs on the first use of its decision on a new machine / torch / thread count; code that
times something calls :func:`prepare` first (the benchmarks do), so no probe runs inside a timed
region. ``python -m vilgkit.dispatch`` prints the decisions (``--probe`` measures them again).
Every branch computes the same numbers up to floating-point summation order (tests check it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

#: decision → its branches, the documented default first.
DECISIONS: dict[str, tuple[str, ...]] = {
    "gemv_few": ("split", "linear"),
    "gemv_many": ("split", "linear"),
    "attention_bf16": ("explicit", "sdpa"),
    "attention_fp32": ("explicit", "sdpa"),
    "encode_layout": ("channels_last", "contiguous"),
}

ENV, CACHE_ENV = "VILGKIT_DISPATCH", "VILGKIT_DISPATCH_CACHE"

#: Another branch replaces the default only when it takes less than this share of the default's time.
MARGIN = 0.9

_decided: dict[tuple[str, int], str] = {}  # (decision, threads) → branch, for this process
_forced: dict[str, str] = {}
_probes: dict[str, Callable[[], dict[str, float]]] = {}


class DispatchError(ValueError):
    """A bad ``VILGKIT_DISPATCH`` value or an unknown decision / branch (one line, names what is allowed)."""


def _check(name: str, branch: str | None = None) -> None:
    if name not in DECISIONS:
        raise DispatchError(f"unknown dispatch decision {name!r}; expected one of {sorted(DECISIONS)}")
    if branch is not None and branch not in DECISIONS[name]:
        raise DispatchError(f"dispatch decision {name!r} has no branch {branch!r}; expected one of {DECISIONS[name]}")


def _from_env() -> dict[str, str] | None:
    """Forced branches from ``VILGKIT_DISPATCH`` (``None``: unset; ``defaults``: every default)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    if raw == "defaults":
        return {name: branches[0] for name, branches in DECISIONS.items()}
    out = {}
    for item in raw.split(","):
        name, sep, branch = item.strip().partition("=")
        if not sep:
            raise DispatchError(
                f"{ENV}={raw!r}: expected 'defaults' or a comma list of name=branch, names {sorted(DECISIONS)}"
            )
        _check(name.strip(), branch.strip())
        out[name.strip()] = branch.strip()
    return out


def cache_path() -> Path:
    """The per-machine JSON file of measured decisions."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vilgkit" / "dispatch.json"


def cpu_model() -> str:
    """The CPU model (``/proc/cpuinfo``'s "model name", else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(threads: int | None = None) -> str:
    """``CPU model | torch version | threads``: what a measured decision is valid for."""
    threads = torch.get_num_threads() if threads is None else threads
    return f"{cpu_model()} | torch {torch.__version__} | {threads} threads"


def _load() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a missing or corrupt cache only costs a probe


def _store(key: str, name: str, branch: str, timings: dict[str, float]) -> None:
    """Add one decision to the JSON file (atomic replace: concurrent processes never see half a file)."""
    path = cache_path()
    data = _load()
    data.setdefault(key, {})[name] = {"branch": branch, "seconds": timings}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".dispatch-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the decision still holds for this process


def register_probe(name: str, probe: Callable[[], dict[str, float]]) -> None:
    """Register the timing function of ``name``: ``{branch: seconds}`` for every branch."""
    _check(name)
    _probes[name] = probe


def choose(name: str) -> str:
    """The branch of decision ``name`` on this machine (see the module docstring for the order)."""
    threads = torch.get_num_threads()
    if name in _forced:
        return _forced[name]
    hit = _decided.get((name, threads))
    if hit is not None:
        return hit
    _check(name)
    branch = (_from_env() or {}).get(name)
    if branch is not None:
        _decided[(name, threads)] = branch
        return branch
    return _measured(name, threads)


def reset() -> None:
    """Forget this process's decisions (after changing ``VILGKIT_DISPATCH`` or the cache file)."""
    _decided.clear()


def _measured(name: str, threads: int, reprobe: bool = False) -> str:
    key = machine_key(threads)
    entry = None if reprobe else _load().get(key, {}).get(name)
    branch = entry.get("branch") if isinstance(entry, dict) else None
    if branch not in DECISIONS[name]:
        timings = _run_probe(name)
        branch = _winner(name, timings)
        _store(key, name, branch, timings)
    _decided[(name, threads)] = branch
    return branch


def _winner(name: str, timings: dict[str, float]) -> str:
    """The default branch unless another is faster by more than :data:`MARGIN` (noise never flips it)."""
    default = DECISIONS[name][0]
    best = min(timings, key=timings.get)
    return best if timings[best] < MARGIN * timings[default] else default


def _run_probe(name: str) -> dict[str, float]:
    if name not in _probes:
        # probes are registered by the modules that decide (next to the code they measure): load them all
        from vilgkit.recipe import load_components

        load_components()
    with torch.no_grad():
        return _probes[name]()


def prepare(names: list[str] | None = None, reprobe: bool = False) -> dict[str, str]:
    """Decide ``names`` (default: all) now, probing what this machine has not measured; returns the branches.

    Call it before timing anything, so that no probe runs inside the timed region.
    """
    out = {}
    for name in names or list(DECISIONS):
        if reprobe and name not in _forced and name not in (_from_env() or {}):
            _decided.pop((name, torch.get_num_threads()), None)
            out[name] = _measured(name, torch.get_num_threads(), reprobe=True)
        else:
            out[name] = choose(name)
    return out


@contextlib.contextmanager
def forced(**choices: str) -> Iterator[None]:
    """Force branches inside a ``with`` block, e.g. ``forced(gemv_few="linear")``."""
    for name, branch in choices.items():
        _check(name, branch)
    before = dict(_forced)
    _forced.update(choices)
    try:
        yield
    finally:
        _forced.clear()
        _forced.update(before)


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of ``repeats`` runs after one warm-up (the least disturbed by other processes)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _main() -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m vilgkit.dispatch", description=__doc__.split("\n")[0])
    p.add_argument(
        "--probe",
        action="store_true",
        help="measure every decision again and store the result",
    )
    a = p.parse_args()
    from vilgkit import (
        dispatch,
    )  # this file runs as __main__: use the one module the probes register with

    t0 = time.perf_counter()
    decided = dispatch.prepare(reprobe=a.probe)
    print(f"{dispatch.machine_key()}  (cache: {dispatch.cache_path()}, {time.perf_counter() - t0:.2f} s)")
    for name, branch in decided.items():
        print(f"  {name:15s} {branch}")


if __name__ == "__main__":
    _main()
