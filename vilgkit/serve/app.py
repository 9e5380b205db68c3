"""The ``vilgkit serve`` application: a JSON API over a trained run and the page that uses it.

Endpoints (all JSON; errors are ``{"error": "<one line>"}`` with a 4xx/5xx status):

* ``GET  /api/info`` — the run: name, stage, image size, saved inference settings, evaluated numbers, limits;
* ``POST /api/generate`` — ``{"prompt": ..., <settings>}`` → every candidate best first, with rerank scores;
* ``POST /api/jobs/generate`` — the same, answered at once with a job to poll (``202``);
* ``GET  /api/jobs/{id}`` — a job's status, phase, progress and, when done, its result;
* ``POST /api/caption`` — multipart ``image`` (+ ``method``, ``num_beams``) → its caption;
* ``POST /api/vqa`` — multipart ``image`` + ``question`` (+ ``method``, ``num_beams``) → the answer;
* ``GET  /api/health``; ``GET /`` the page; ``GET /report`` the run's evaluation report (HTML).

Settings a request leaves out are the run's saved inference settings (``RUN_DIR/inference.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from vilgkit.serve.batching import BatchQueue, Job
from vilgkit.serve.limits import (
    Limits,
    RequestError,
    check_text,
    image_settings,
    read_image,
    text_settings,
)
from vilgkit.serve.page import install_page_routes


class GenerateRequest(BaseModel):
    """Text → image; a setting left out (``null``) is the run's saved one."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    num_candidates: int | None = None
    reranker: str | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float | None = None
    seed: int | None = None


def closing(resource):
    """A lifespan that closes ``resource`` when the server shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        resource.close()

    return lifespan


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal as ``{"error": "<one line>"}``: our checks, FastAPI's validation, unknown routes."""

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        for e in err.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)


def install_body_limit(app: FastAPI, max_bytes: int) -> None:
    """Refuse a request whose declared body is over ``max_bytes`` before reading it (413), and a
    body of undeclared length (411: a chunked upload could otherwise grow without bound)."""

    @app.middleware("http")
    async def _limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is None and "chunked" in request.headers.get("transfer-encoding", "").lower():
            return JSONResponse({"error": "send the request body with a Content-Length"}, status_code=411)
        if length is not None and (not length.isdigit() or int(length) > max_bytes):
            return JSONResponse({"error": f"request body over {max_bytes} bytes"}, status_code=413)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


async def wait_for(job: Job, timeout_s: float) -> Any:
    """The job's result once the worker finishes it, or its error as an exception."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    job.on_done(lambda: loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None)))
    try:
        await asyncio.wait_for(finished, timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(504, f"the request took over {timeout_s:g} s; poll /api/jobs/{job.id}") from None
    if job.error is not None:
        raise job.error
    return job.result


def run_info(pipe, limits: Limits) -> dict[str, Any]:
    """What the page shows about the run: name, model sizes, saved settings, evaluated numbers."""
    import yaml

    from vilgkit.engine.runner import RESOLVED_RECIPE

    run_dir = Path(pipe.run_dir) if pipe.run_dir is not None else None
    recipe = yaml.safe_load((run_dir / RESOLVED_RECIPE).read_text()) if run_dir else {}
    settings = pipe.settings
    evaluation = None
    report = run_dir / settings.report if run_dir and settings.report else None
    if report is not None and report.is_file():
        record = json.loads(report.read_text())
        evaluation = {
            "metrics": record.get("metrics", {}),
            "num_samples": record.get("num_samples"),
            "report": str(settings.report),
        }
    return {
        "name": (recipe or {}).get("name") or (run_dir.name if run_dir else "pipeline"),
        "run_dir": str(run_dir) if run_dir else None,
        "stage": Path(pipe.stage_dir).name if getattr(pipe, "stage_dir", None) else None,
        "image_size": pipe.image_size,
        "grid": list(pipe.grid),
        "max_text_len": pipe.max_text_len,
        "settings": settings.to_dict(),
        "settings_saved": settings.saved,
        "evaluation": evaluation,
        "limits": limits.public(),
    }


def create_app(
    pipe,
    *,
    limits: Limits | None = None,
    window_s: float = 0.01,
    max_batch: int = 16,
    request_timeout_s: float = 600.0,
) -> FastAPI:
    """The server's app for a loaded :class:`vilgkit.Pipeline` (``app.state.queue`` runs the model).

    Args:
        pipe: the pipeline (``Pipeline.from_run_dir``); its ``settings`` are the requests' defaults.
        limits: request limits.
        window_s: how long the batching queue collects requests that arrive together.
        max_batch: most prompts / images in one model call.
        request_timeout_s: a waiting request gives up (504) after this long; the job goes on.
    """
    from vilgkit.errors import InputError
    from vilgkit.serve.inference import ModelRunner
    from vilgkit.text_encoding import encode_texts

    limits = limits or Limits()
    runner = ModelRunner(pipe)
    queue = BatchQueue(runner, window_s=window_s, max_batch=max_batch, max_pending=limits.max_pending)
    info = run_info(pipe, limits)
    app = FastAPI(
        title=f"vilgkit serve: {info['name']}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=closing(queue),
    )
    app.state.queue, app.state.pipe, app.state.info = queue, pipe, info
    install_error_handlers(app)
    install_body_limit(app, limits.max_upload_bytes + 64 * 1024)  # the image plus the form fields
    install_page_routes(app)

    def check_tokens(text: str, what: str) -> None:
        try:
            encode_texts(pipe.text_tokenizer, [text], pipe.max_text_len, what=what)
        except InputError as err:
            message = str(err).replace(f"{what} 0", what).split(" Shorten it or pass truncate")[0]
            raise RequestError(422, message) from None

    def submit_generate(req: GenerateRequest) -> Job:
        prompt = check_text(req.prompt, "prompt", limits)
        check_tokens(prompt, "prompt")
        settings = image_settings(
            req.model_dump(),
            pipe.settings,
            limits,
            int(pipe.generator.image_vocab_size),
        )
        runner.reranker(settings["reranker"])  # an unknown reranker is the client's error, before queueing
        return queue.submit(
            "generate",
            tuple(sorted(settings.items())),
            {"prompt": prompt, "settings": settings},
        )

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "pending": queue.pending(),
            "batches_run": queue.batches_run,
        }

    @app.get("/api/info")
    async def get_info() -> dict[str, Any]:
        return info

    @app.post("/api/generate")
    async def generate(req: GenerateRequest) -> Any:
        return await wait_for(submit_generate(req), request_timeout_s)

    @app.post("/api/jobs/generate", status_code=202)
    async def generate_job(req: GenerateRequest) -> Any:
        job = submit_generate(req)
        return {**job.public(), "poll": f"/api/jobs/{job.id}"}

    @app.get("/api/jobs/{job_id}")
    async def get_job(job_id: str) -> Any:
        job = queue.get(job_id)
        if job is None:
            raise RequestError(
                404,
                f"job {job_id!r}: no such job (finished jobs are kept for a while only)",
            )
        return job.public()

    async def image_field(image: UploadFile) -> Any:
        data = await image.read(limits.max_upload_bytes + 1)
        return read_image(data, "image", limits)

    @app.post("/api/caption")
    async def caption(
        image: UploadFile = File(...),
        method: str | None = Form(None),
        num_beams: int | None = Form(None),
    ) -> Any:
        settings = text_settings({"method": method, "num_beams": num_beams}, pipe.settings, limits, vqa=False)
        payload = {"image": await image_field(image), "settings": settings}
        return await wait_for(
            queue.submit("caption", tuple(sorted(settings.items())), payload),
            request_timeout_s,
        )

    @app.post("/api/vqa")
    async def vqa(
        image: UploadFile = File(...),
        question: str = Form(...),
        method: str | None = Form(None),
        num_beams: int | None = Form(None),
    ) -> Any:
        question = check_text(question, "question", limits)
        check_tokens(question, "question")
        settings = text_settings({"method": method, "num_beams": num_beams}, pipe.settings, limits, vqa=True)
        payload = {
            "image": await image_field(image),
            "question": question,
            "settings": settings,
        }
        return await wait_for(
            queue.submit("vqa", tuple(sorted(settings.items())), payload),
            request_timeout_s,
        )

    @app.get("/report", response_class=HTMLResponse)
    async def report() -> Response:
        ev = info["evaluation"]
        path = Path(info["run_dir"]) / Path(ev["report"]).parent / "report.html" if ev else None
        if path is None or not path.is_file():
            raise RequestError(404, "this run has no evaluation report (run its Evaluate stage)")
        return HTMLResponse(path.read_text(encoding="utf-8"))

    return app
