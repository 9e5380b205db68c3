"""``vilgkit humaneval serve``: the rating page and its API over one campaign file.

* ``GET  /api/campaign`` — the protocol (criteria, scales), the counts; never which model made what;
* ``GET  /api/next?rater=NAME`` — that rater's next item in their own random order (``item: null``: done);
* ``GET  /api/items/{id}/image`` — the item's picture (PNG);
* ``POST /api/ratings`` — ``{"rater", "item", "scores": {criterion: score}}``, stored in one transaction;
* ``GET  /api/report`` — the report (``vilgkit humaneval report``'s JSON and Markdown), for the organiser;
* ``GET  /`` — the page.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from vilgkit.humaneval.report import campaign_report, to_markdown
from vilgkit.humaneval.store import Campaign, CampaignError
from vilgkit.serve.app import install_body_limit, install_error_handlers
from vilgkit.serve.limits import RequestError
from vilgkit.serve.page import install_static


class RatingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rater: str
    item: int
    scores: dict[str, int]


def create_rating_app(campaign: Campaign, *, bootstrap_rounds: int = 1000) -> FastAPI:
    """The rating server's app for an opened campaign."""
    protocol = campaign.protocol
    app = FastAPI(
        title=f"vilgkit humaneval: {campaign.path.name}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    install_body_limit(app, 64 * 1024)
    install_static(
        app,
        "vilgkit.humaneval",
        "index.html",
        ("rate.js",),
        shared=("common.js", "style.css"),
    )

    def refused(err: CampaignError) -> RequestError:
        return RequestError(err.status, str(err))

    # Handlers are plain `def`: FastAPI runs them in its thread pool, so SQLite never blocks the loop.
    @app.get("/api/campaign")
    def get_campaign() -> dict[str, Any]:
        criteria = [
            {
                "key": c.key,
                "label": c.label,
                "question": c.question,
                "scores": c.scores,
                "labels": list(c.labels),
            }
            for c in protocol.criteria
        ]
        return {
            "name": campaign.path.stem,
            "protocol": protocol.name,
            "title": protocol.title,
            "criteria": criteria,
            "raters_per_item": campaign.meta["raters_per_item"],
            "counts": campaign.counts(),
        }

    @app.get("/api/next")
    def next_item(rater: str) -> dict[str, Any]:
        try:
            return {
                "item": campaign.next_item(rater),
                "counts": campaign.counts(rater.strip()),
            }
        except CampaignError as err:
            raise refused(err) from None

    @app.get("/api/items/{item_id}/image")
    def item_image(item_id: int) -> Response:
        try:
            return Response(campaign.image(item_id), media_type="image/png")
        except CampaignError as err:
            raise refused(err) from None

    @app.post("/api/ratings")
    def rate(req: RatingRequest) -> dict[str, Any]:
        try:
            campaign.rate(req.rater, req.item, req.scores)
            return {"stored": True, "counts": campaign.counts(req.rater.strip())}
        except CampaignError as err:
            raise refused(err) from None

    @app.get("/api/report")
    def report() -> dict[str, Any]:
        data = campaign_report(campaign, rounds=bootstrap_rounds)
        return {"report": data, "markdown": to_markdown(data)}

    return app
