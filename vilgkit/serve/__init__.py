"""``vilgkit serve``: an HTTP API and a page over a trained run (needs the ``[serve]`` extra).

:func:`create_app` builds the FastAPI application for a loaded :class:`vilgkit.Pipeline`;
``vilgkit serve RUN_DIR`` runs it with uvicorn on 127.0.0.1:8000. See docs/serve.md.
"""

from __future__ import annotations

from vilgkit.serve.limits import Limits, RequestError

__all__ = ["Limits", "RequestError", "create_app"]


def create_app(*args, **kwargs):
    """See :func:`vilgkit.serve.app.create_app` (imported lazily: FastAPI is an optional extra)."""
    from vilgkit.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
