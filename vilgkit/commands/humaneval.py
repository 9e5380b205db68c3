"""``vilgkit humaneval create|serve|report``: human evaluation campaigns (the paper's Tables 2, 5, 6).

* ``create CAMPAIGN.sqlite --run RUN [--run RUN_B] --protocol text2image|caption|vqa [--items shapes|FILE.jsonl]``
* ``serve CAMPAIGN.sqlite [--host 127.0.0.1 --port 8001]`` — the rating page;
* ``report CAMPAIGN.sqlite [--out DIR]`` — ``report.md`` + ``report.json`` (prints the Markdown).
"""

from __future__ import annotations

import argparse

from vilgkit.commands._argtypes import flags

HELP = "human evaluation campaigns: create one from runs, serve the rating page, report the paper's tables"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vilgkit.commands.serve import add_server_arguments
    from vilgkit.humaneval.protocols import PROTOCOLS

    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    create = sub.add_parser("create", help="build a campaign file from one run (or two: blind A/B)")
    create.add_argument(
        "campaign",
        help="the campaign file to write (SQLite, e.g. campaigns/t2i.sqlite)",
    )
    create.add_argument(
        "--run",
        action="append",
        required=True,
        help="a run directory (twice: A/B comparison)",
    )
    create.add_argument("--protocol", required=True, choices=list(PROTOCOLS))
    create.add_argument(
        "--items",
        default="shapes",
        help="'shapes' (the run's held-out scenes) or a JSONL file",
    )
    create.add_argument("--num-items", type=int, default=50, help="inputs to take (default: 50)")
    create.add_argument(
        "--raters-per-item",
        type=int,
        default=3,
        help="ratings wanted per item (paper: 3)",
    )
    create.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seed and the raters' random orders",
    )
    create.add_argument("--batch-size", type=int, default=8, help="inputs generated per batch")
    create.add_argument("--device", default="auto")
    serve = sub.add_parser("serve", help="serve the rating page for a campaign")
    serve.add_argument("campaign", help="the campaign file")
    add_server_arguments(serve, default_port=8001)
    serve.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap rounds of the report's intervals",
    )
    report = sub.add_parser("report", help="the campaign's tables (Markdown + JSON) with agreement and CIs")
    report.add_argument("campaign", help="the campaign file")
    report.add_argument("--out", default=None, help="output folder (default: next to the campaign file)")
    report.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds (default: 1000)")
    report.add_argument("--confidence", type=float, default=0.95, help="interval level (default: 0.95)")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vilgkit.errors import VilgkitError
    from vilgkit.humaneval.store import Campaign

    if args.action is None:
        raise VilgkitError("vilgkit humaneval: give an action: create, serve or report")
    if args.action == "create":
        from vilgkit.humaneval.create import create_campaign

        create_campaign(
            args.campaign,
            args.protocol,
            args.run,
            args.items,
            **flags(args, "num_items", "raters_per_item", "seed", "batch_size", "device"),
        )
        return 0
    campaign = Campaign(args.campaign)
    if args.bootstrap < 0:
        raise VilgkitError("--bootstrap must be ≥ 0")
    if args.action == "report":
        from vilgkit.humaneval.report import write_report

        if not 0 < args.confidence < 1:
            raise VilgkitError(f"--confidence must be between 0 and 1, got {args.confidence}")
        out = Path(args.out) if args.out else Path(args.campaign).with_suffix("")
        _, markdown = write_report(
            campaign,
            out,
            rounds=args.bootstrap,
            confidence=args.confidence,
            seed=args.seed,
        )
        print(markdown)
        print(f"vilgkit humaneval: wrote {out / 'report.md'} and {out / 'report.json'}")
        return 0
    from vilgkit.commands.serve import (
        check_server_arguments,
        require_serve_extra,
        run_server,
    )

    require_serve_extra("humaneval serve")
    check_server_arguments(args, "humaneval serve")
    from vilgkit.humaneval.app import create_rating_app

    run_server(
        create_rating_app(campaign, bootstrap_rounds=args.bootstrap),
        args.host,
        args.port,
        f"the rating page of {campaign.path}",
    )
    return 0
