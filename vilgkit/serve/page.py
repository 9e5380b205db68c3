"""The page of ``vilgkit serve``: static HTML, JS and CSS from this package, nothing remote.

Served with a Content-Security-Policy that allows scripts, styles and connections to this server
only (images also as ``data:`` URLs, which is how the API returns them), so the page works offline
and cannot load code from elsewhere.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


def static_text(package: str, name: str) -> str:
    """A file of ``<package>/static`` as text."""
    return resources.files(package).joinpath("static", name).read_text(encoding="utf-8")


def install_static(
    app: FastAPI,
    package: str,
    index: str,
    assets: tuple[str, ...],
    shared: tuple[str, ...] = (),
) -> None:
    """``GET /`` → ``index``; ``GET /static/<name>`` for the listed assets only (an exact allow-list):
    ``assets`` from ``<package>/static``, ``shared`` from this package's (helpers and style)."""
    page = static_text(package, index)
    files = {name: static_text(package, name) for name in assets}
    files.update({name: static_text("vilgkit.serve", name) for name in shared})

    @app.get("/", response_class=HTMLResponse)
    async def index_page() -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    @app.get("/static/{name}")
    async def static_file(name: str) -> Response:
        from vilgkit.serve.limits import RequestError

        if name not in files:
            raise RequestError(404, f"no static file {name!r}")
        media = STATIC_TYPES[name[name.rindex(".") :]]
        return Response(files[name], media_type=media, headers={"Content-Security-Policy": CSP})


def install_page_routes(app: FastAPI) -> None:
    """The model page: prompt → candidate grid, image → caption, image + question → answer."""
    install_static(app, "vilgkit.serve", "index.html", ("app.js", "style.css", "common.js"))
