"""Human evaluation campaigns: agreement against reference cases, the store, the report, the CLI, the rating API."""

from __future__ import annotations

import json
import sqlite3

import pytest
from PIL import Image

from vilgkit.humaneval import PROTOCOLS, Campaign, CampaignError, krippendorff_alpha
from vilgkit.humaneval.report import campaign_report, to_markdown

# ---------------------------------------------------------------------------------------- agreement


def test_alpha_of_the_hand_computed_case():
    """Units (1,1), (1,2), (2,2): o = [[2,1],[1,2]], n_1 = n_2 = 3, n = 6.

    interval: D_o = (1 + 1)/6 = 1/3, D_e = (3·3 + 3·3)/(6·5) = 3/5 → alpha = 1 − (1/3)/(3/5) = 4/9.
    ordinal: δ²(1,2) = (n_1 + n_2 − (n_1 + n_2)/2)² = 9 → D_o = 18/6 = 3, D_e = 162/30 → 4/9.
    nominal with two values equals interval → 4/9.
    """
    units = [[1, 1], [1, 2], [2, 2]]
    for level in ("nominal", "ordinal", "interval"):
        assert krippendorff_alpha(units, level) == pytest.approx(4 / 9)


def test_alpha_reproduces_krippendorffs_published_example():
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units, missing
    values; published alpha: nominal 0.743, ordinal 0.815, interval 0.849."""
    nan = None
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
    units = [[v for v in unit if v is not None] for unit in zip(*coders)]
    assert round(krippendorff_alpha(units, "nominal"), 3) == 0.743
    assert round(krippendorff_alpha(units, "ordinal"), 3) == 0.815
    assert round(krippendorff_alpha(units, "interval"), 3) == 0.849


def test_alpha_edge_cases():
    assert krippendorff_alpha([[3, 3], [1, 1, 1], [5, 5]], "interval") == 1.0
    assert krippendorff_alpha([[2, 2], [2, 2]], "ordinal") is None  # no variation: undefined
    assert krippendorff_alpha([[1], [5]], "interval") is None  # nothing pairable
    # a unit with a single rating does not count
    assert krippendorff_alpha([[1, 1], [1, 2], [2, 2], [5]], "interval") == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha([[1, 2]], "ratio")


# ---------------------------------------------------------------------------------------- store + report


def synthetic_campaign(path, protocol="caption", systems=("A", "B"), inputs=4, raters_per_item=3) -> Campaign:
    meta = {
        "protocol": protocol,
        "raters_per_item": raters_per_item,
        "seed": 7,
        "items_source": "test",
        "systems": {s: {"name": f"run_{s.lower()}"} for s in systems},
        "num_inputs": inputs,
    }
    campaign = Campaign.create(path, meta)
    campaign.add_inputs(
        [
            {
                "text": f"prompt {i}",
                "question": f"q{i}?",
                "truth": "red",
                "image": b"\x89PNG fake",
            }
            for i in range(inputs)
        ]
    )
    ids = campaign.input_ids()
    campaign.add_items(
        ids,
        [{"input_id": i, "system": s, "output_text": f"output {i}.{n}"} for i in ids for n, s in enumerate(systems)],
    )
    return campaign


def test_report_computes_the_means_pass_rate_agreement_and_the_paired_difference(
    tmp_path,
):
    campaign = synthetic_campaign(
        tmp_path / "c.sqlite",
        protocol="vqa",
        systems=("A", "B", "human"),
        inputs=2,
        raters_per_item=2,
    )
    with sqlite3.connect(campaign.path) as conn:
        items = {
            (system, input_id): item
            for item, system, input_id in conn.execute("SELECT id, system, input_id FROM items")
        }
    # (turing, quality) per rater: A is judged human 1 of 4 times, B 3 of 4, humans 4 of 4
    given = {
        ("A", 1): [(0, 1), (0, 0)],
        ("A", 2): [(1, 2), (0, 1)],
        ("B", 1): [(1, 2), (1, 2)],
        ("B", 2): [(1, 1), (0, 1)],
        ("human", 1): [(1, 2), (1, 2)],
        ("human", 2): [(1, 2), (1, 1)],
    }
    for key, pairs in given.items():
        for rater, (turing, quality) in zip(("ann", "bob"), pairs):
            campaign.rate(rater, items[key], {"turing": turing, "quality": quality})
    report = campaign_report(campaign, rounds=200)
    a, b, human = (report["results"][s] for s in ("A", "B", "human"))
    assert a["turing_pass_rate"]["mean"] == pytest.approx(25.0) and b["turing_pass_rate"]["mean"] == pytest.approx(75.0)
    assert human["turing_pass_rate"]["mean"] == pytest.approx(100.0)
    assert a["quality"]["mean"] == pytest.approx(1.0) and b["quality"]["mean"] == pytest.approx(1.5)
    lo, hi = b["quality"]["ci"]
    assert 1.0 <= lo <= 1.5 <= hi <= 2.0  # the item means are 2.0 and 1.0
    units = [
        [1, 0],
        [2, 1],
        [2, 2],
        [1, 1],
        [2, 2],
        [2, 1],
    ]  # quality per item, in any order
    assert report["agreement"]["quality"]["ordinal"] == pytest.approx(krippendorff_alpha(units, "ordinal"))
    assert report["agreement"]["quality"]["interval"] == pytest.approx(krippendorff_alpha(units, "interval"))
    assert report["comparison_b_minus_a"]["quality"]["mean"] == pytest.approx(0.5)
    assert report["ratings_given"] == 12 == report["ratings_needed"] and report["raters"] == 2
    markdown = to_markdown(report)
    assert "| A: run_a | 25.0" in markdown and "Turing test passing rate (%)" in markdown
    assert "Quality evaluation avg. score" in markdown and "Krippendorff" in markdown


def test_ratings_are_checked_and_stored_whole_or_not_at_all(tmp_path):
    campaign = synthetic_campaign(tmp_path / "c.sqlite")
    item = campaign.next_item("ann")["id"]
    bad = [
        ({"fluency": 2, "relevance": 1}, "exactly the criteria"),
        ({"fluency": 2, "relevance": 1, "richness": 3}, "0 to 2"),
        ({"fluency": 2, "relevance": 1, "richness": True}, "integer"),
        (
            {"fluency": 2, "relevance": 1, "richness": 1, "clarity": 4},
            "exactly the criteria",
        ),
    ]
    for scores, message in bad:
        with pytest.raises(CampaignError, match=message):
            campaign.rate("ann", item, scores)
    assert campaign.ratings() == []
    campaign.rate("ann", item, {"fluency": 2, "relevance": 1, "richness": 0})
    with pytest.raises(CampaignError, match="already rated") as err:
        campaign.rate("ann", item, {"fluency": 1, "relevance": 1, "richness": 1})
    assert err.value.status == 409 and len(campaign.ratings()) == 3
    with pytest.raises(CampaignError, match="no such item"):
        campaign.rate("ann", 999, {"fluency": 1, "relevance": 1, "richness": 1})
    for name in ("", " ", "x" * 65, "tab\there"):
        with pytest.raises(CampaignError, match="rater"):
            campaign.next_item(name)


def test_random_order_per_rater_enough_raters_per_item_and_resuming(tmp_path):
    path = tmp_path / "c.sqlite"
    campaign = synthetic_campaign(path, inputs=6, raters_per_item=2)  # 12 items

    def rate_all(c: Campaign, rater: str, limit: int) -> list[int]:
        seen = []
        while len(seen) < limit and (item := c.next_item(rater)) is not None:
            c.rate(rater, item["id"], {"fluency": 1, "relevance": 1, "richness": 1})
            seen.append(item["id"])
        return seen

    ann = rate_all(campaign, "ann", 5)
    ann += rate_all(Campaign(path), "ann", 100)  # a new process: she continues where she stopped
    bob = rate_all(Campaign(path), "bob", 100)
    assert sorted(ann) == sorted(bob) == sorted(set(ann)) and len(ann) == 12
    assert ann != bob  # each rater has an own random order
    assert ann != sorted(ann) or bob != sorted(bob)  # and it is not the items' order
    assert Campaign(path).next_item("cay") is None  # every item has its two raters
    assert set(campaign.item(ann[0])) == {
        "id",
        "text",
        "question",
        "output",
        "image",
    }  # blind: no system


def test_item_ids_do_not_reveal_the_system(tmp_path):
    campaign = Campaign.create(
        tmp_path / "c.sqlite", {"protocol": "caption", "raters_per_item": 1, "seed": 0, "systems": {"A": {}, "B": {}}}
    )
    campaign.add_inputs([{"image": b"x"} for _ in range(20)])
    ids = campaign.input_ids()
    for start in range(0, 20, 4):  # batches of four inputs, as `create` stores them
        batch = ids[start : start + 4]
        campaign.add_items(
            batch,
            [{"input_id": i, "system": s, "output_text": "c"} for i in batch for s in "AB"],
        )
    with sqlite3.connect(campaign.path) as conn:
        parity = {(system, item % 2) for item, system in conn.execute("SELECT id, system FROM items")}
    assert parity == {("A", 0), ("A", 1), ("B", 0), ("B", 1)}


def test_create_refuses_a_different_campaign_in_the_same_file_and_non_campaign_files(
    tmp_path,
):
    synthetic_campaign(tmp_path / "c.sqlite")
    with pytest.raises(CampaignError, match="different campaign"):
        synthetic_campaign(tmp_path / "c.sqlite", protocol="text2image")
    (tmp_path / "x.sqlite").write_bytes(b"not a database at all")
    with pytest.raises(CampaignError, match="not a vilgkit campaign"):
        Campaign(tmp_path / "x.sqlite")
    with pytest.raises(CampaignError, match="not found"):
        Campaign(tmp_path / "missing.sqlite")


def test_the_protocols_have_the_papers_scales():
    scales = {p: {c.key: (c.low, c.high) for c in proto.criteria} for p, proto in PROTOCOLS.items()}
    assert scales == {
        "text2image": {"clarity": (1, 5), "texture": (1, 5), "relevance": (1, 5)},
        "caption": {"fluency": (0, 2), "relevance": (0, 2), "richness": (0, 2)},
        "vqa": {"turing": (0, 1), "quality": (0, 2)},
    }


# ---------------------------------------------------------------------------------------- CLI + rating API


@pytest.mark.slow
def test_cli_create_resume_report_and_errors(served_run, tiny_run, tmp_path, capsys):
    from vilgkit.cli import main

    path = tmp_path / "ab.sqlite"
    args = [
        "humaneval",
        "create",
        str(path),
        "--run",
        str(served_run),
        "--run",
        str(tiny_run),
        "--protocol",
        "text2image",
        "--num-items",
        "3",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    campaign = Campaign(path)
    assert campaign.counts()["items"] == 6 and set(campaign.meta["systems"]) == {
        "A",
        "B",
    }
    assert campaign.meta["systems"]["A"]["settings"]["top_k"] == 4  # each run's saved settings
    assert main(args) == 0 and Campaign(path).counts()["items"] == 6  # resumed: nothing added twice
    capsys.readouterr()
    assert main(args[:-4] + ["--num-items", "5", "--device", "cpu"]) == 2
    assert "different campaign" in capsys.readouterr().err
    assert (
        main(
            [
                "humaneval",
                "create",
                str(tmp_path / "v.sqlite"),
                "--run",
                str(served_run),
                "--protocol",
                "vqa",
                "--num-items",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert set(Campaign(tmp_path / "v.sqlite").meta["systems"]) == {
        "A",
        "human",
    }  # the human answers, blind
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name, colour in (("red.png", "red"), ("blue.png", "blue")):
        Image.new("RGB", (48, 40), colour).save(pictures / name)
    own = tmp_path / "own.jsonl"
    own.write_text(
        '{"image": "pictures/red.png", "question": "what colour?", "answer": "red"}\n\n'
        '{"image": "pictures/blue.png", "question": "what colour?"}\n'
    )
    command = [
        "humaneval",
        "create",
        str(tmp_path / "own.sqlite"),
        "--run",
        str(served_run),
        "--protocol",
        "vqa",
    ]
    assert main([*command, "--items", str(own), "--device", "cpu"]) == 0
    own_campaign = Campaign(tmp_path / "own.sqlite")
    assert own_campaign.counts()["items"] == 2 and set(own_campaign.meta["systems"]) == {"A"}  # not every answer known
    assert own_campaign.next_item("ann")["question"] == "what colour?"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle"}\n{"prompt": "x", "rm": "-rf"}\n')
    assert (
        main(
            [
                "humaneval",
                "create",
                str(tmp_path / "j.sqlite"),
                "--run",
                str(served_run),
                "--protocol",
                "text2image",
                "--items",
                str(bad),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "bad.jsonl:2" in capsys.readouterr().err
    item = campaign.next_item("ann")
    campaign.rate("ann", item["id"], {"clarity": 4, "texture": 3, "relevance": 2})
    assert (
        main(
            [
                "humaneval",
                "report",
                str(path),
                "--out",
                str(tmp_path / "rep"),
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert (tmp_path / "rep" / "report.md").is_file() and report["ratings_given"] == 1
    assert main(["humaneval", "report", str(tmp_path / "nope.sqlite")]) == 2
    assert main(["humaneval", "serve", str(path), "--port", "-1"]) == 2
    assert main(["humaneval", "serve", str(tmp_path / "nope.sqlite")]) == 2
    assert main(["humaneval"]) == 2
    assert "create, serve or report" in capsys.readouterr().err


@pytest.mark.slow
def test_rating_api_serves_items_blind_and_refuses_bad_ratings(tmp_path):
    from tests.serve.conftest import LiveServer, require_serve_extra

    require_serve_extra()
    import httpx

    from vilgkit.humaneval.app import create_rating_app

    campaign = synthetic_campaign(tmp_path / "c.sqlite", inputs=2, raters_per_item=1)
    live = LiveServer(create_rating_app(campaign, bootstrap_rounds=20))
    try:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            info = c.get("/api/campaign").json()
            assert info["protocol"] == "caption" and [k["key"] for k in info["criteria"]] == [
                "fluency",
                "relevance",
                "richness",
            ]
            assert "systems" not in info and "run_a" not in json.dumps(info)
            item = c.get("/api/next", params={"rater": "ann"}).json()["item"]
            assert item["output"].startswith("output ") and c.get(item["image"]).content == b"\x89PNG fake"
            ok = c.post(
                "/api/ratings",
                json={
                    "rater": "ann",
                    "item": item["id"],
                    "scores": {"fluency": 2, "relevance": 2, "richness": 1},
                },
            )
            assert ok.status_code == 200 and ok.json()["counts"]["mine"] == 1
            for body, status in [
                (
                    {
                        "rater": "ann",
                        "item": item["id"],
                        "scores": {"fluency": 2, "relevance": 2, "richness": 1},
                    },
                    409,
                ),
                (
                    {
                        "rater": "ann",
                        "item": 999,
                        "scores": {"fluency": 2, "relevance": 2, "richness": 1},
                    },
                    404,
                ),
                (
                    {
                        "rater": "ann",
                        "item": item["id"],
                        "scores": {"fluency": 9, "relevance": 2, "richness": 1},
                    },
                    422,
                ),
                ({"rater": "", "item": item["id"], "scores": {}}, 422),
                ({"rater": "ann", "item": "x", "scores": {}}, 422),
                ({"rater": "ann"}, 422),
            ]:
                response = c.post("/api/ratings", json=body)
                assert response.status_code == status and response.json()["error"], body
            assert c.get("/api/next").status_code == 422  # no rater
            assert c.get("/api/items/999/image").status_code == 404
            report = c.get("/api/report").json()
            assert report["report"]["ratings_given"] == 1 and "Fluency" in report["markdown"]
    finally:
        live.stop()
