"""A small batching queue: requests that arrive together run as one batched model call.

One worker thread owns the model (PyTorch inference is not shared between threads). It waits for a
job, then keeps collecting for ``window_s`` (a few milliseconds) or until ``max_batch`` jobs are in
hand, groups them by ``(kind, key)`` — jobs of a group can share one call, e.g. text→image prompts
with identical sampling settings go through the KV cache as one ``generate`` batch — and hands each
group to the runner. Every job carries its phase and progress so a client can poll it; finished
jobs are kept for ``keep_finished`` polls' worth of history.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vilgkit.serve.limits import RequestError


@dataclass
class Job:
    """One request's life: ``queued`` → ``running`` (phase, progress 0..1) → ``done`` / ``failed``."""

    kind: str
    key: tuple
    payload: Any
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "queued"
    phase: str = "queued"
    progress: float = 0.0
    result: Any = None
    error: RequestError | None = None
    batch_size: int = 0
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    _callbacks: list = field(default_factory=list)
    _cb_lock: threading.Lock = field(default_factory=threading.Lock)

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the job finishes (at once if it already has)."""
        with self._cb_lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def advance(self, phase: str, progress: float) -> None:
        self.status, self.phase, self.progress = "running", phase, progress

    def finish(self, result: Any = None, error: RequestError | None = None) -> None:
        self.result, self.error = result, error
        self.status, self.phase = ("failed", "failed") if error else ("done", "done")
        self.progress, self.finished = 1.0, time.monotonic()
        with self._cb_lock:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def public(self) -> dict[str, Any]:
        """What the polling endpoint returns."""
        out = {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "phase": self.phase,
            "progress": round(self.progress, 3),
            "batch_size": self.batch_size,
        }
        if self.status == "done":
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error.message
        return out


Runner = Callable[[str, list[Job]], None]


class BatchQueue:
    """Collects jobs for ``window_s`` and runs each group of compatible ones in one call.

    Args:
        runner: ``runner(kind, jobs)`` does the work of a group and calls ``job.finish`` on each.
        window_s: how long to wait for more jobs after the first one arrives.
        max_batch: most jobs in one call.
        max_pending: queued + running jobs allowed; more are refused (HTTP 503).
        keep_finished: finished jobs kept for polling (the oldest are forgotten first).
    """

    def __init__(
        self,
        runner: Runner,
        *,
        window_s: float = 0.01,
        max_batch: int = 16,
        max_pending: int = 256,
        keep_finished: int = 1024,
    ) -> None:
        if window_s < 0 or max_batch < 1 or max_pending < 1:
            raise ValueError("window_s ≥ 0, max_batch ≥ 1 and max_pending ≥ 1 are required")
        self.runner, self.window_s, self.max_batch, self.max_pending = (
            runner,
            window_s,
            max_batch,
            max_pending,
        )
        self.keep_finished = keep_finished
        self._queue: queue.Queue[Job] = queue.Queue()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vilgkit-serve-worker", daemon=True)
        self.batches_run = 0
        self._thread.start()

    def submit(self, kind: str, key: tuple, payload: Any) -> Job:
        """Queue a job; ``RequestError(503)`` when ``max_pending`` jobs are already waiting or running."""
        job = Job(kind=kind, key=key, payload=payload)
        with self._lock:
            if self._pending_locked() >= self.max_pending:
                raise RequestError(
                    503,
                    f"the server is busy ({self.max_pending} requests pending); retry shortly",
                )
            self._jobs[job.id] = job
            self._forget_old()
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def pending(self) -> int:
        """Jobs queued or running now."""
        with self._lock:
            return self._pending_locked()

    def _pending_locked(self) -> int:
        return sum(1 for j in self._jobs.values() if not j.done.is_set())

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the batch in progress."""
        self._stop.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.done.is_set()]
        for k in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[k]

    def _collect(self) -> list[Job]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        jobs, deadline = [first], time.monotonic() + self.window_s
        while len(jobs) < self.max_batch * 4:  # a few groups' worth; each group is cut to max_batch below
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                jobs.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return jobs

    def _loop(self) -> None:
        while not self._stop.is_set():
            jobs = self._collect()
            groups: OrderedDict[tuple, list[Job]] = OrderedDict()
            for job in jobs:
                groups.setdefault((job.kind, job.key), []).append(job)
            for (kind, _), group in groups.items():
                for start in range(0, len(group), self.max_batch):
                    self._run(kind, group[start : start + self.max_batch])

    def _run(self, kind: str, group: list[Job]) -> None:
        for job in group:
            job.batch_size = len(group)
            job.advance("starting", 0.05)
        try:
            self.runner(kind, group)
        except RequestError as err:
            for job in group:
                job.finish(error=err)
        except Exception as err:  # noqa: BLE001 - a failed batch must not stop the worker; the client is told
            for job in group:
                job.finish(error=RequestError(500, f"{kind} failed: {type(err).__name__}: {err}"))
        finally:
            self.batches_run += 1
            for job in group:  # a runner that forgot one must not leave its client waiting forever
                if not job.done.is_set():
                    job.finish(error=RequestError(500, f"{kind}: no result was produced"))
