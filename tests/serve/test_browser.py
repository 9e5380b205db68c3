"""The pages in headless Chromium (Debian's package, driven by Playwright): generate, caption, rate, report.

Screenshots go to docs/serve/ (docs/serve.md shows them). Without a browser the tests skip, saying so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

httpx = pytest.importorskip("httpx", reason="httpx is missing: pip install -e '.[dev]'")

pytestmark = pytest.mark.slow
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "serve"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="playwright is not installed (pip install playwright)",
    )
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium); the browser tests need one")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, offline=False)
    page = context.new_page()
    remote = []
    page.on(
        "request",
        lambda r: remote.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None,
    )
    yield page
    context.close()
    assert remote == [], f"the page fetched something remote: {remote}"


def test_type_a_prompt_and_see_candidate_images(page, server):
    page.goto(server.url)
    expect(page.locator("#run-name")).to_have_text("gen_tiny")
    assert "shapes_prompt_accuracy" in page.inner_text("#eval-table")
    assert "top_k" in page.inner_text("#settings-table")
    page.fill("#prompt", "a large red circle in the centre")
    page.click("#generate-btn")
    page.wait_for_selector("#candidates figure.candidate img", timeout=60_000)
    images = page.query_selector_all("#candidates figure.candidate img")
    assert len(images) == 2  # the run's saved num_candidates
    for img in page.locator("#candidates figure.candidate img").all():
        expect(img).to_have_js_property("naturalWidth", 32)
    labels = page.inner_text("#candidates")
    assert "#1" in labels and "#2" in labels  # ranks with their scores
    expect(page.locator("#used-settings")).to_contain_text("top_k 4")  # the run's saved settings
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "generate.png"), full_page=True)


def test_upload_an_image_and_read_its_caption_and_answer(page, server, tmp_path):
    picture = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (220, 30, 30)).save(picture)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        files = {"image": ("red.png", picture.read_bytes(), "image/png")}
        expected = c.post("/api/caption", files=files).json()["caption"]
        expected_answer = c.post("/api/vqa", files=files, data={"question": "what colour is it?"}).json()["answer"]
    page.goto(server.url)
    page.set_input_files("#caption-file", str(picture))
    page.click("#caption-btn")
    page.wait_for_selector("#caption-result[data-caption]", state="attached", timeout=60_000)
    assert page.get_attribute("#caption-result", "data-caption") == expected
    page.set_input_files("#vqa-file", str(picture))
    page.fill("#vqa-question", "what colour is it?")
    page.click("#vqa-btn")
    page.wait_for_selector("#vqa-answer[data-answer]", state="attached", timeout=60_000)
    assert page.get_attribute("#vqa-answer", "data-answer") == expected_answer
    page.screenshot(path=str(SHOTS / "caption_vqa.png"), full_page=True)


def test_a_bad_request_shows_the_servers_message(page, server):
    page.goto(server.url)
    page.fill("#prompt", "red," * 20)
    page.click("#generate-btn")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "tokens long" in page.inner_text("#error")


def test_rate_three_items_and_see_the_reports_numbers(page, served_run, tmp_path):
    from tests.serve.conftest import LiveServer
    from vilgkit.humaneval.app import create_rating_app
    from vilgkit.humaneval.create import create_campaign
    from vilgkit.humaneval.report import campaign_report

    campaign = create_campaign(
        tmp_path / "t2i.sqlite",
        "text2image",
        [str(served_run)],
        num_items=3,
        raters_per_item=1,
        device="cpu",
        log=lambda *_: None,
    )
    live = LiveServer(create_rating_app(campaign, bootstrap_rounds=50))
    try:
        page.goto(live.url)
        expect(page.locator("#campaign-title")).to_have_text("Text → image")
        page.fill("#rater", "ann")
        page.click("#start-btn")
        given = []
        for n, scores in enumerate([(5, 4, 3), (4, 4, 2), (3, 2, 1)]):
            expect(page.locator("#mine")).to_have_text(str(n))
            expect(page.locator("#item-image")).to_have_js_property("complete", True)
            assert page.inner_text("#item-text").startswith("Text: ")
            for key, score in zip(("clarity", "texture", "relevance"), scores):
                page.check(f"#score-{key}-{score}")
            if n == 0:
                page.screenshot(path=str(SHOTS / "humaneval_rate.png"), full_page=True)
            page.click("#submit-btn")
            given.append(scores)
        page.wait_for_selector("#finished:not([hidden])")
        page.click("#report-btn")
        page.wait_for_selector("#report-table")
        report = campaign_report(campaign, rounds=50)["results"]["A"]
        cells = {
            c.get_attribute("data-key"): c.inner_text() for c in page.query_selector_all("#report-table td[data-key]")
        }
        assert cells["clarity"].startswith(f"{report['clarity']['mean']:.2f}") and report["clarity"]["mean"] == 4.0
        assert cells["relevance"].startswith("2.00") and cells["average"].startswith(f"{report['average']['mean']:.2f}")
        page.screenshot(path=str(SHOTS / "humaneval_report.png"), full_page=True)
    finally:
        live.stop()
