"""``vilgkit`` under ``torchrun`` with the paths that put a whole model on one rank traced.

    torchrun --nproc-per-node 2 tests/parallel/trace_full_loads.py TRACE_DIR run RECIPE ...

The CLI runs unchanged (``vilgkit.cli.main``); each rank writes ``TRACE_DIR/rank<r>.json`` with
every call of those paths — a plain copy of a trained module (``Trainer.trained_module`` and
``Trainer._fresh``, with the caller), a whole weights file read (``artifacts.load_tensors`` of
``generator`` / ``reconstructor`` / ``model.safetensors``), a generator built off ``meta``
(``ComponentStore.build``) — each marked whether it happened inside ``Pipeline.from_run_dir``
(the Evaluate stage's main-rank load) or the sample grid's main-rank copy
(``Trainer._callback_module``), how far a module ``FSDP.build_module(weights=FILE)`` filled from a
file is from that file after consolidation, and the rank's peak resident memory (``VmHWM``).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import traceback
from pathlib import Path

WEIGHT_FILES = ("generator.safetensors", "reconstructor.safetensors", "model.safetensors")


def _where() -> dict:
    frames = traceback.extract_stack()[:-2]
    return {
        "in_pipeline": any(f.filename.endswith("vilgkit/pipeline.py") and f.name == "from_run_dir" for f in frames),
        "in_callback_copy": any(f.name == "_callback_module" for f in frames),
        "caller": frames[-1].name if frames else "?",
    }


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _install(events: list[dict]) -> None:
    import vilgkit.pipeline  # noqa: F401  (imports what loading a run uses, so it is patched below)
    from vilgkit import artifacts, components
    from vilgkit.engine import trainer

    load_tensors = artifacts.load_tensors

    def traced_load_tensors(path, *args, **kwargs):
        if Path(path).name in WEIGHT_FILES:
            events.append({"what": "load_tensors", "path": str(path), **_where()})
        return load_tensors(path, *args, **kwargs)

    # every module that imported the function by name holds its own reference: replace them all
    for name, module in list(sys.modules.items()):
        if name.startswith("vilgkit") and getattr(module, "load_tensors", None) is load_tensors:
            module.load_tensors = traced_load_tensors

    trained_module, fresh = trainer.Trainer.trained_module, trainer.Trainer._fresh

    def traced_trained_module(self):
        events.append({"what": "trained_module", "module": type(self.module).__name__, "sharded": not self._intact()})
        return trained_module(self)

    def traced_fresh(self, *args, **kwargs):
        events.append({"what": "fresh", "module": type(self.module).__name__, **_where()})
        return fresh(self, *args, **kwargs)

    trainer.Trainer.trained_module, trainer.Trainer._fresh = traced_trained_module, traced_fresh

    _trace_builds_from_file(events)

    build = components.ComponentStore.build

    def traced_build(self, key):
        built = build(self, key)
        if key == "generator" and not any(p.is_meta for p in built.parameters()):
            events.append({"what": "generator_built", **_where()})
        return built

    components.ComponentStore.build = traced_build


def _trace_builds_from_file(events: list[dict]) -> None:
    """After ``FSDP.wrap`` filled a module's shards from the file ``build_module(weights=)`` was
    given (``generator_from``), gather the weights (every rank takes part) and record on rank 0 how
    far they are from the file's."""
    from vilgkit_parallel import fsdp

    wrap = fsdp.FSDP.wrap

    def traced_wrap(self, model):
        names = {id(m): name for name, m in model.named_modules()}
        sources = [(names[key], source) for key, (source, _) in self._sources.items() if key in names]
        wrapped = wrap(self, model)
        if sources:
            full = self.state_dict(wrapped)
            if self.is_main:
                for prefix, source in sources:
                    where = f"{prefix}." if prefix else ""
                    diff = max(float((full[where + k] - source.tensor(k)).abs().max()) for k in source.shapes)
                    events.append({"what": "built_from_file", "keys": len(source.shapes), "max_abs_diff": diff})
        return wrapped

    fsdp.FSDP.wrap = traced_wrap


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    events: list[dict] = []
    _install(events)

    def dump() -> None:
        (out / f"rank{rank}.json").write_text(json.dumps({"events": events, "peak_rss": _peak_rss()}))

    atexit.register(dump)
    from vilgkit.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
