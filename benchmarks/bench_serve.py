"""Latency of ``vilgkit serve`` under concurrent text→image requests: percentiles, throughput, batching.

Starts the real server (uvicorn on a free local port) over a run and sends ``--requests`` requests
from ``--concurrency`` clients at once, each ``POST /api/generate`` with the run's saved settings
(or ``--num-candidates``). Prints p50/p90/p99/max latency, requests per second, the number of model
batches the server ran, and whether every request was answered (none lost).

Usage::

    python benchmarks/bench_serve.py                          # builds the tiny debug run first (seconds)
    python benchmarks/bench_serve.py --run-dir runs/shapes_tiny --requests 50 --concurrency 50
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000   # a server already running
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "a small red circle at the top",
    "a large blue square in the centre",
    "a green triangle on the left",
    "two yellow stars",
    "a purple circle and a red square",
]


def start_server(run_dir: str, window_ms: float, device: str):
    import uvicorn

    from vilgkit import Pipeline
    from vilgkit.serve import create_app

    app = create_app(Pipeline.from_run_dir(run_dir, device=device), window_s=window_ms / 1000)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir",
        default=None,
        help="a trained run (default: build recipes/debug/gen_tiny.yaml)",
    )
    parser.add_argument("--url", default=None, help="benchmark a server already running here instead")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--num-candidates",
        type=int,
        default=None,
        help="default: the run's saved setting",
    )
    parser.add_argument("--window-ms", type=float, default=10.0, help="the server's batching window")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    import httpx

    server = thread = None
    url = args.url
    if url is None:
        run_dir = args.run_dir
        if run_dir is None:
            from vilgkit.engine.runner import run

            run_dir = str(Path(tempfile.mkdtemp(prefix="bench_serve_")) / "gen_tiny")
            print(f"building the tiny debug run in {run_dir} ...", file=sys.stderr)
            run(
                [str(ROOT / "recipes" / "debug" / "gen_tiny.yaml")],
                ["--run_dir", run_dir],
            )
        url, server, thread = start_server(run_dir, args.window_ms, args.device)
    body = {} if args.num_candidates is None else {"num_candidates": args.num_candidates}
    with httpx.Client(base_url=url, timeout=600) as client:
        client.post("/api/generate", json={"prompt": PROMPTS[0], **body}).raise_for_status()  # warm-up
        before = client.get("/api/health").json()["batches_run"]

        def one(i: int) -> tuple[float, int]:
            start = time.perf_counter()
            response = client.post("/api/generate", json={"prompt": PROMPTS[i % len(PROMPTS)], **body})
            return time.perf_counter() - start, response.status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - start
        batches = client.get("/api/health").json()["batches_run"] - before
        info = client.get("/api/info").json()
    latencies = [t for t, _ in results]
    ok = sum(1 for _, status in results if status == 200)
    record = {
        "run": info["name"],
        "requests": args.requests,
        "concurrency": args.concurrency,
        "answered_200": ok,
        "lost": args.requests - ok,
        "num_candidates": body.get("num_candidates", info["settings"]["num_candidates"]),
        "p50_s": percentile(latencies, 50),
        "p90_s": percentile(latencies, 90),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies),
        "mean_s": statistics.fmean(latencies),
        "wall_s": wall,
        "requests_per_s": args.requests / wall,
        "model_batches": batches,
    }
    print(
        f"vilgkit serve, run {record['run']}: {args.requests} requests, {args.concurrency} concurrent, "
        f"{record['num_candidates']} candidates each"
    )
    print(f"  answered {ok}/{args.requests} (lost {record['lost']}), {batches} model batches")
    print(
        f"  latency p50 {record['p50_s']:.3f} s  p90 {record['p90_s']:.3f} s  p99 {record['p99_s']:.3f} s  "
        f"max {record['max_s']:.3f} s;  {record['requests_per_s']:.1f} requests/s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    if server is not None:
        server.should_exit = True
        thread.join(10)
    return 0 if ok == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
