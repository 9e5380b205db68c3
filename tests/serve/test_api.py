"""The real server (uvicorn on a free port) over a tiny evaluated run: every endpoint, every refusal."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

httpx = pytest.importorskip("httpx", reason="httpx is missing: pip install -e '.[dev]'")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def png(size=(40, 30), colour="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def refused(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert isinstance(message, str) and "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_info_shows_the_run_its_saved_settings_and_evaluated_numbers(client, served_run):
    info = client.get("/api/info").json()
    assert info["name"] == "gen_tiny" and info["stage"] == "finetune_vqa" and info["image_size"] == 32
    assert info["settings_saved"] and info["settings"]["top_k"] == 4 and info["settings"]["num_candidates"] == 2
    assert "shapes_prompt_accuracy" in info["evaluation"]["metrics"] and info["evaluation"]["num_samples"] == 2
    assert info["limits"]["max_candidates"] == 4
    assert client.get("/api/health").json()["status"] == "ok"
    report = client.get("/report")
    assert report.status_code == 200 and "<html" in report.text.lower()


def test_generate_defaults_to_the_saved_settings_and_returns_scored_candidates(client):
    result = client.post("/api/generate", json={"prompt": "a red circle"}).json()
    assert result["settings"]["num_candidates"] == 2 and result["settings"]["top_k"] == 4
    assert result["settings"]["cfg_scale"] == 1.5 and result["settings"]["reranker"] == "SelfReranker"
    cands = result["candidates"]
    assert [c["rank"] for c in cands] == [0, 1] and sorted(c["index"] for c in cands) == [0, 1]
    assert cands[0]["score"] >= cands[1]["score"]  # best first
    image = Image.open(io.BytesIO(__import__("base64").b64decode(cands[0]["image"].split(",", 1)[1])))
    assert image.size == (32, 32)
    # every setting can be overridden; the same request gives the same images
    body = {
        "prompt": "a blue star",
        "num_candidates": 3,
        "top_k": 0,
        "cfg_scale": 1.0,
        "reranker": "none",
        "seed": 5,
    }
    a, b = (
        client.post("/api/generate", json=body).json(),
        client.post("/api/generate", json=body).json(),
    )
    assert a["settings"]["top_k"] is None and len(a["candidates"]) == 3 and a["candidates"][0]["score"] is None
    assert [c["image"] for c in a["candidates"]] == [c["image"] for c in b["candidates"]]


def test_a_job_reports_progress_and_its_result(client):
    job = client.post("/api/jobs/generate", json={"prompt": "a green square"})
    assert job.status_code == 202
    seen, deadline = set(), time.monotonic() + 60
    state = job.json()
    while state["status"] in ("queued", "running") and time.monotonic() < deadline:
        seen.add(state["phase"])
        time.sleep(0.01)
        state = client.get(job.json()["poll"]).json()
    assert state["status"] == "done" and state["progress"] == 1.0 and len(state["result"]["candidates"]) == 2
    assert seen & {"queued", "starting", "sampling", "decoding", "reranking"}
    refused(client.get("/api/jobs/nope"), 404, "no such job")


def test_caption_and_vqa_of_an_uploaded_image(client):
    cap = client.post("/api/caption", files={"image": ("a.png", png(), "image/png")})
    assert cap.status_code == 200 and isinstance(cap.json()["caption"], str)
    assert cap.json()["settings"] == {"method": "greedy", "num_beams": 4}
    beam = client.post(
        "/api/caption",
        files={"image": ("a.png", png(), "image/png")},
        data={"method": "beam", "num_beams": "2"},
    )
    assert beam.json()["settings"] == {"method": "beam", "num_beams": 2}
    ans = client.post(
        "/api/vqa",
        files={"image": ("a.png", png(), "image/png")},
        data={"question": "what colour is it?"},
    )
    assert (
        ans.status_code == 200
        and ans.json()["question"] == "what colour is it?"
        and isinstance(ans.json()["answer"], str)
    )


BAD_GENERATE = [
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": "x" * 121}, "prompt", "at most 120"),
    ({"prompt": "red," * 20}, "prompt", "tokens long"),
    ({"prompt": "a red circle", "num_candidates": 5}, "num_candidates", "1 to 4"),
    ({"prompt": "a red circle", "num_candidates": 0}, "num_candidates", "1 to 4"),
    ({"prompt": "a red circle", "top_k": 999}, "top_k", "code book"),
    ({"prompt": "a red circle", "top_p": 0.0}, "top_p", "more than 0"),
    ({"prompt": "a red circle", "temperature": -1}, "temperature", "allowed"),
    ({"prompt": "a red circle", "cfg_scale": 100}, "cfg_scale", "allowed"),
    ({"prompt": "a red circle", "seed": -3}, "seed", "allowed"),
    ({"prompt": "a red circle", "reranker": "Nope"}, "reranker", "allowed"),
    ({"prompt": "a red circle", "reranker": "ClipReranker"}, "reranker", "CLIP"),
    ({"prompt": "a red circle", "colour": "red"}, "colour", "Extra"),
    ({"prompt": 3}, "prompt", "string"),
    ({}, "prompt", "required"),
]


@pytest.mark.parametrize(
    ("body", "field", "word"),
    BAD_GENERATE,
    ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD_GENERATE)],
)
def test_bad_generate_requests_are_422_with_a_message(client, body, field, word):
    for path in ("/api/generate", "/api/jobs/generate"):
        refused(client.post(path, json=body), 422, field, word)


def test_bad_uploads_and_questions_are_refused_and_the_server_keeps_serving(client):
    refused(
        client.post(
            "/api/generate",
            content=b"{not json",
            headers={"content-type": "application/json"},
        ),
        422,
    )
    refused(client.post("/api/caption"), 422, "image", "required")

    def upload(path: str, data: dict | None = None, file: tuple = ("a.png", png(), "image/png")) -> httpx.Response:
        """POST ``file`` as the form's image (with the fields ``data``) to ``path``."""
        return client.post(path, files={"image": file}, data=data)

    refused(upload("/api/caption", file=("a.png", b"", "image/png")), 422, "empty")
    refused(upload("/api/caption", file=("a.png", b"GIF89a garbage", "image/png")), 422, "not a readable image")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "TIFF")
    refused(upload("/api/caption", file=("a.tif", buf.getvalue(), "image/tiff")), 415, "TIFF")
    refused(upload("/api/caption", file=("big.png", png((2048, 1024)), "image/png")), 413, "pixels")
    refused(upload("/api/caption", file=("a.bin", b"\x89PNG" + b"0" * 300_000, "image/png")), 413)
    for path, data, words in (
        ("/api/caption", {"method": "magic"}, ("method",)),
        ("/api/caption", {"num_beams": "99"}, ("num_beams",)),
        ("/api/vqa", None, ("question", "required")),
        ("/api/vqa", {"question": "  "}, ("question",)),
        ("/api/vqa", {"question": "why," * 20}, ("question", "tokens")),
        ("/api/vqa", {"question": "x?", "method": "sample"}, ("method",)),
    ):
        refused(upload(path, data), 422, *words)
    chunks = iter([b'{"prompt": ', b'"a red circle"}'])
    refused(
        client.post(
            "/api/generate",
            content=chunks,
            headers={"content-type": "application/json"},
        ),
        411,
    )
    refused(client.get("/api/nothing"), 404)
    refused(client.get("/static/../../etc/passwd"), 404)
    refused(client.get("/static/secret.py"), 404, "no static file")
    assert client.post("/api/generate", json={"prompt": "a red circle"}).status_code == 200  # still serving


def test_the_page_and_its_assets_load_nothing_remote(client):
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    for text in (
        page.text,
        client.get("/static/app.js").text,
        client.get("/static/common.js").text,
        client.get("/static/style.css").text,
    ):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_fifty_concurrent_requests_are_batched_and_none_is_lost(client, server):
    before = client.get("/api/health").json()["batches_run"]
    prompts = [f"a {c} circle" for c in ("red", "blue", "green", "yellow", "purple")] * 10

    def one(prompt: str) -> tuple[int, str, float]:
        start = time.perf_counter()
        response = client.post("/api/generate", json={"prompt": prompt})
        return (
            response.status_code,
            response.json().get("prompt", response.text),
            time.perf_counter() - start,
        )

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, prompts))
    latencies = sorted(t for *_, t in results)
    print(
        f"50 concurrent requests: latency p50 {latencies[24]:.3f} s, p90 {latencies[44]:.3f} s, "
        f"p99 {latencies[49]:.3f} s (benchmarks/bench_serve.py measures this properly)"
    )
    results = [(status, prompt) for status, prompt, _ in results]
    assert [status for status, _ in results] == [200] * 50
    assert [prompt for _, prompt in results] == prompts  # each answer belongs to its request
    batches = client.get("/api/health").json()["batches_run"] - before
    assert batches < 50, "requests that arrived together were not batched"


def test_the_cli_serves_a_run_on_localhost_and_refuses_bad_flags(served_run, capsys):
    from vilgkit.cli import main

    assert main(["serve", str(served_run), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(served_run), "--max-candidates", "0"]) == 2
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    command = [
        sys.executable,
        "-m",
        "vilgkit",
        "serve",
        str(served_run),
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=5).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "vilgkit serve did not start"
                time.sleep(0.2)
        assert info["name"] == "gen_tiny" and info["settings"]["top_k"] == 4
    finally:
        proc.terminate()
        proc.wait(30)
    assert f"http://127.0.0.1:{port}/" in proc.stdout.read().decode()


def test_a_run_without_saved_settings_serves_the_plain_defaults(tiny_run):
    from fastapi.testclient import TestClient

    from vilgkit import Pipeline
    from vilgkit.serve import create_app

    app = create_app(Pipeline.from_run_dir(tiny_run, device="cpu"))
    with TestClient(app) as c:
        info = c.get("/api/info").json()
        assert not info["settings_saved"] and info["evaluation"] is None and info["settings"]["top_k"] is None
        result = c.post("/api/generate", json={"prompt": "a red circle"}).json()
        assert len(result["candidates"]) == 1 and result["settings"]["cfg_scale"] == 1.0
        refused(c.get("/report"), 404, "no evaluation report")
