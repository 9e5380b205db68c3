"""What a training run reports: a progress bar, ``metrics.jsonl`` and TensorBoard scalars.

Only the main rank reports. On resume, metric lines written after the resumed checkpoint (by the
run that was interrupted) are dropped from ``metrics.jsonl`` and TensorBoard purges its events past
that step, so both logs read as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _truncate_after(path: Path, step: int) -> None:
    """Keep only the lines of ``path`` whose ``step`` is at most ``step`` (resume after a crash)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:  # a line cut short by the crash
            continue
    path.write_text("".join(f"{line}\n" for line in kept))


class RunLogger:
    """Progress bar + JSONL + TensorBoard for one stage.

    Args:
        out_dir: the stage folder (``metrics.jsonl`` and ``tensorboard/`` go there).
        total_steps: the run's step count (for the bar and the ETA).
        start_step: the step the run starts or resumes at.
        enabled: ``False`` on non-main ranks (nothing is written).
        tensorboard: write TensorBoard scalars.
        progress: show a progress bar (tqdm on a terminal; plain lines otherwise).
        name: label of the bar.
    """

    def __init__(
        self,
        out_dir: Path,
        total_steps: int,
        start_step: int = 0,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
        name: str = "train",
    ) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.start_step = start_step
        self.name = name
        self._t0 = time.perf_counter()
        self._bar = None
        self._tb = None
        self._fh = None
        self._plain = False
        if not enabled:
            return
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out_dir / METRICS_FILE
        if start_step > 0:
            _truncate_after(self.metrics_path, start_step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self._fh = open(self.metrics_path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / TENSORBOARD_DIR), purge_step=start_step or None)
        if progress:
            if sys.stderr.isatty():
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total_steps, initial=start_step, desc=name, dynamic_ncols=True, unit="step")
            else:
                self._plain = True

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` at ``step`` in every sink; updates the bar's postfix."""
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}
        self._fh.write(json.dumps({"step": step, **clean}, allow_nan=True) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        summary = self._summary(clean)
        if self._bar is not None:
            self._bar.set_postfix_str(summary, refresh=False)
        elif self._plain:
            eta = self._eta(step)
            print(f"{self.name} step {step}/{self.total} {summary} eta {eta}", file=sys.stderr, flush=True)

    def advance(self, step: int) -> None:
        """Move the bar to ``step`` (called every step)."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def _eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        remaining = (time.perf_counter() - self._t0) / done * (self.total - step)
        return time.strftime("%H:%M:%S", time.gmtime(remaining))

    @staticmethod
    def _summary(metrics: dict[str, Any]) -> str:
        parts = []
        for key in sorted(metrics):
            if key == "loss" or key.endswith("/loss") or key.startswith("lr") or key == "samples_per_s":
                value = metrics[key]
                parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
        return " ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._fh is not None:
            self._fh.close()
        self._bar = self._tb = self._fh = None
