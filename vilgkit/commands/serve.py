"""``vilgkit serve RUN_DIR [--host 127.0.0.1 --port 8000]``: an HTTP API and a page over a trained run.

The run's saved inference settings (``RUN_DIR/inference.json``) are every request's defaults. Binds
to localhost unless ``--host`` says otherwise; the server has no authentication (docs/serve.md).
"""

from __future__ import annotations

import argparse

HELP = "serve a trained run over HTTP: a JSON API and a page (text→image, captions, VQA)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vilgkit.serve.limits import Limits

    d = Limits()
    parser.add_argument("run_dir", help="a finished run directory (holds recipe.resolved.yaml)")
    add_server_arguments(parser, default_port=8000)
    parser.add_argument(
        "--stage",
        default=None,
        help="generator stage to load (default: the last one trained)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    # (flag, type, default, help): the request limits (their defaults are Limits') and the batcher
    flags = (
        ("--max-candidates", int, d.max_candidates, "most candidates per prompt"),
        ("--max-prompt-chars", int, d.max_prompt_chars, "longest prompt/question in characters"),
        ("--max-upload-bytes", int, d.max_upload_bytes, "largest uploaded image in bytes"),
        ("--max-pending", int, d.max_pending, "requests queued at once, more get 503"),
        ("--batch-window-ms", float, 10.0, "how long requests arriving together are collected into one batch"),
        ("--max-batch", int, 16, "most prompts/images in one model call"),
    )
    for flag, kind, default, text in flags:
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default: %(default)s)")


def add_server_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    """``--host`` / ``--port`` (shared with ``vilgkit humaneval serve``)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument(
        "--port",
        type=int,
        default=default_port,
        help=f"TCP port (default: {default_port})",
    )


def check_server_arguments(args: argparse.Namespace, command: str) -> None:
    """A port out of range is an input error; a non-local address is allowed but warned about."""
    import sys

    from vilgkit.errors import VilgkitError

    if not 0 <= args.port <= 65535:
        raise VilgkitError(f"vilgkit {command}: --port must be 0 to 65535, got {args.port}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"vilgkit {command}: warning: listening on {args.host}: anyone who can reach it can use the server "
            "(no authentication; see docs/serve.md)",
            file=sys.stderr,
        )


def require_serve_extra(command: str) -> None:
    from importlib.util import find_spec

    from vilgkit.errors import VilgkitError

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if find_spec(m) is None]
    if missing:
        raise VilgkitError(
            f"vilgkit {command} needs the [serve] extra (missing: {', '.join(missing)}): pip install 'vilgkit[serve]'"
        )


def run_server(app, host: str, port: int, what: str) -> None:
    import uvicorn

    print(f"vilgkit: serving {what} on http://{host}:{port}/ (Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main(args: argparse.Namespace) -> int:
    from vilgkit.errors import VilgkitError
    from vilgkit.pipeline import Pipeline
    from vilgkit.serve.limits import Limits

    require_serve_extra("serve")
    check_server_arguments(args, "serve")
    for flag in (
        "max_candidates",
        "max_prompt_chars",
        "max_upload_bytes",
        "max_pending",
        "max_batch",
    ):
        if getattr(args, flag) < 1:
            raise VilgkitError(f"vilgkit serve: --{flag.replace('_', '-')} must be at least 1")
    if args.batch_window_ms < 0:
        raise VilgkitError("vilgkit serve: --batch-window-ms must be ≥ 0")
    from vilgkit.serve import create_app

    pipe = Pipeline.from_run_dir(args.run_dir, stage=args.stage, device=args.device)
    limits = Limits(
        max_prompt_chars=args.max_prompt_chars,
        max_candidates=args.max_candidates,
        max_upload_bytes=args.max_upload_bytes,
        max_pending=args.max_pending,
    )
    app = create_app(
        pipe,
        limits=limits,
        window_s=args.batch_window_ms / 1000,
        max_batch=args.max_batch,
    )
    run_server(app, args.host, args.port, f"{app.state.info['name']} ({args.run_dir})")
    return 0
