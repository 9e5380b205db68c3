"""The batching queue alone (no model): grouping, batch size cap, back-pressure, failures."""

from __future__ import annotations

import threading

import pytest

from vilgkit.serve.batching import BatchQueue
from vilgkit.serve.limits import RequestError


def recording_runner(calls, gate=None):
    def run(kind, jobs):
        if gate is not None:
            gate.wait(10)
        calls.append((kind, [j.payload for j in jobs]))
        for job in jobs:
            job.advance("working", 0.5)
            job.finish({"echo": job.payload})

    return run


def test_jobs_that_arrive_together_run_as_one_call_per_kind_and_settings():
    calls, gate = [], threading.Event()
    queue = BatchQueue(recording_runner(calls, gate), window_s=0.2, max_batch=3)
    try:
        jobs = [queue.submit("generate", ("k", 1), i) for i in range(5)]
        jobs += [
            queue.submit("generate", ("k", 2), "other"),
            queue.submit("caption", ("k", 1), "cap"),
        ]
        gate.set()
        for job in jobs:
            assert job.done.wait(10) and job.status == "done" and job.result == {"echo": job.payload}
        assert calls == [
            ("generate", [0, 1, 2]),
            ("generate", [3, 4]),
            ("generate", ["other"]),
            ("caption", ["cap"]),
        ]
        assert [j.batch_size for j in jobs] == [
            3,
            3,
            3,
            2,
            2,
            1,
            1,
        ] and queue.batches_run == 4
        assert queue.get(jobs[0].id).public()["result"] == {"echo": 0} and queue.pending() == 0
    finally:
        queue.close()


def test_too_many_pending_jobs_are_refused_with_503():
    gate = threading.Event()
    queue = BatchQueue(recording_runner([], gate), window_s=0.0, max_pending=2)
    try:
        queue.submit("generate", (), 1)
        queue.submit("generate", (), 2)
        with pytest.raises(RequestError) as err:
            queue.submit("generate", (), 3)
        assert err.value.status == 503 and "busy" in err.value.message
    finally:
        gate.set()
        queue.close()


def test_a_failing_batch_fails_its_jobs_only_and_the_worker_goes_on():
    def run(kind, jobs):
        if jobs[0].payload == "boom":
            raise RuntimeError("model exploded")
        if jobs[0].payload == "refuse":
            raise RequestError(422, "no thanks")
        for job in jobs:
            if job.payload != "forgotten":
                job.finish("ok")

    queue = BatchQueue(run, window_s=0.0)
    try:
        boom, refuse, forgotten = (queue.submit("generate", (p,), p) for p in ("boom", "refuse", "forgotten"))
        for job in (boom, refuse, forgotten):
            assert job.done.wait(10) and job.status == "failed"
        assert boom.error.status == 500 and "model exploded" in boom.public()["error"]
        assert refuse.error.status == 422 and refuse.public()["error"] == "no thanks"
        assert "no result" in forgotten.error.message
        later = queue.submit("generate", ("fine",), "fine")
        assert later.done.wait(10) and later.result == "ok"
    finally:
        queue.close()


def test_on_done_fires_once_also_for_a_finished_job():
    queue = BatchQueue(recording_runner([]), window_s=0.0)
    try:
        job = queue.submit("generate", (), "x")
        fired = []
        job.on_done(lambda: fired.append("early"))
        assert job.done.wait(10)
        job.on_done(lambda: fired.append("late"))
        assert fired == ["early", "late"]
    finally:
        queue.close()
