"""vlm-ad serve in a real browser: Playwright (PyPI) drives Debian's chromium against a server started here on a
free local port with a tiny model.

Without /usr/bin/chromium (or the playwright package) these tests skip, except under CI (``VLM_AD_CI=1``, set by
``.ci/run``), where a missing browser is a failure: the browser tests must run there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from vlm_ad.testing import CHROMIUM

pytest.importorskip("faiss")
pytest.importorskip("fastapi")

pytestmark = pytest.mark.browser


def _need_browser():
    missing = []
    if not Path(CHROMIUM).is_file():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install 'vlm-ad[dev]')")
    if missing:
        why = "browser tests need " + " and ".join(missing)
        if os.environ.get("VLM_AD_CI"):
            pytest.fail(why + "; VLM_AD_CI is set, so they may not skip")
        pytest.skip(why)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The tiny model's category, and the URL of a server over it (with a report folder and examples)."""
    _need_browser()
    from tests.conftest import build_tiny_model
    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.report import report_provenance, run_report
    from vlm_ad.web import create_app, serving

    root = tmp_path_factory.mktemp("browser")
    cat, model_dir = build_tiny_model(root, n_test_good=1, n_test_per_type=2)
    pipe = Pipeline(load_detector(model_dir), exemplar_root=cat)
    run_report(cat / "test", pipe, root / "report", provenance=report_provenance(pipe, model_dir, "grounded"))
    app = create_app(pipe, reports=root / "report", examples=cat / "test",
                     info={"model": str(model_dir), "reasoner": "grounded"})
    with serving(app) as url:
        yield cat, url, root


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    from vlm_ad.testing import launch_chromium

    with sync_playwright() as pw:
        b = launch_chromium(pw)
        yield b
        b.close()


@pytest.fixture
def page(browser, site):
    _, url, _ = site
    p = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests: list[str] = []
    p.on("request", lambda req: requests.append(req.url))
    p.goto(url)
    p.wait_for_selector("body[data-ready='1']")
    yield p
    p.close()
    assert all(u.startswith((url, "data:")) for u in requests), f"the page fetched from elsewhere: {requests}"


def test_upload_shows_the_overlay_and_the_chat_names_the_region(page, site):
    cat, _, _ = site
    image = sorted((cat / "test" / "hole").glob("*.png"))[0]
    page.set_input_files("#file", str(image))
    page.wait_for_function("document.getElementById('overlay').complete && "
                           "document.getElementById('overlay').naturalWidth > 0 && "
                           "document.getElementById('overlay').src.startsWith('data:image/png')")
    assert page.locator("#overlay").get_attribute("data-image-id") == image.name
    assert page.locator("#verdict").inner_text() == "ANOMALOUS"
    assert re.match(r"confidence \d\.\d\d", page.locator("#confidence").inner_text())
    assert page.locator("#steps li").count() >= 1 and page.locator("#steps .chip").count() >= 1
    first = page.locator(".region").first
    region_id = first.get_attribute("data-region")
    assert region_id == "R1" and first.locator("img").count() == 2  # the region next to its nearest exemplar
    assert "nearest normal" in first.inner_text()
    location = first.inner_text().split("\n")[0].split(",")[0].removeprefix("R1").strip()
    page.fill("#question", "where is the defect?")
    page.click("#ask")
    answer = page.locator("#chat-log .a").last
    page.wait_for_function("document.querySelector('#chat-log .a:last-child').textContent !== '...'")
    assert region_id in answer.inner_text() and location in answer.inner_text()
    page.fill("#question", "how sure are you?")
    page.click("#ask")
    page.wait_for_function("document.querySelectorAll('#chat-log .a').length === 2 && "
                           "document.querySelector('#chat-log .a:last-child').textContent !== '...'")
    assert page.locator("#chat-log .q").count() == 2  # the conversation stays on the page
    assert page.locator("#message").is_hidden()


def test_a_corrupt_upload_shows_a_message_not_a_trace(page, site, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    page.set_input_files("#file", str(broken))
    page.wait_for_selector("#message:not([hidden])")
    text = page.locator("#message").inner_text()
    assert "Could not analyse broken.png" in text and "cannot read image broken.png" in text
    assert "Traceback" not in text and "/tmp" not in text
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as fh:
        fh.truncate(51_000_000)  # above the default 50 MB limit (sparse: costs no disk)
    page.set_input_files("#file", str(huge))
    page.wait_for_function("document.getElementById('message').textContent.includes('huge.png')")
    assert "51.0 MB, above this server's 50 MB upload limit" in page.locator("#message").inner_text()


def test_unverified_claim_flags_are_shown(browser, site):
    """A model that calls an anomalous image normal is overruled by the measurement; the page shows the flag."""
    pytest.importorskip("langchain_core")
    import json

    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.reasoning import create_reasoner
    from vlm_ad.testing import scripted_chat_model
    from vlm_ad.web import create_app, serving

    cat, _, root = site
    reply = json.dumps({"verdict": "normal", "confidence": 0.9, "defect_type": None, "location": None,
                        "cited_regions": [], "steps": [{"text": "The image looks normal.", "evidence": ["S"]}],
                        "summary": "The part is normal."})
    reasoner = create_reasoner("chat", chat_model=scripted_chat_model([reply]))
    app = create_app(Pipeline(load_detector(root / "model"), reasoner, exemplar_root=cat))
    image = sorted((cat / "test" / "hole").glob("*.png"))[0]
    with serving(app) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#flags li")
        flag = page.locator("#flags li").first
        assert flag.is_visible() and flag.inner_text().startswith("flag: unverified: the model said 'normal'")
        assert page.locator("#verdict").inner_text() == "ANOMALOUS"  # the measurement's verdict is kept
        page.close()


def test_report_tab_filters_sorts_and_opens_a_record(page, site):
    page.click("#tab-report")
    page.wait_for_selector("#report-rows tr")
    scores = [float(t) for t in page.locator("#report-rows tr td:nth-child(2)").all_inner_texts()]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    page.select_option("#sort", "score_asc")
    page.wait_for_function("(() => { const c = [...document.querySelectorAll('#report-rows tr td:nth-child(2)')]"
                           ".map(t => parseFloat(t.textContent)); return c.length && c[0] <= c[c.length - 1]; })()")
    page.select_option("#filter", "anomalous")
    page.wait_for_function("[...document.querySelectorAll('#report-rows tr td:nth-child(3)')]"
                           ".every(t => t.textContent.startsWith('anomalous'))")
    page.locator("#report-rows tr").first.click()
    page.wait_for_function("document.getElementById('record-overlay').naturalWidth > 0")
    assert page.locator("#record-verdict").inner_text().startswith("ANOMALOUS")
    assert page.locator("#record-steps li").count() >= 1
