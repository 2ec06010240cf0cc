"""`magref app` in a real browser: Debian's chromium, headless, driven by Playwright.

The README's test command installs chromium (apt) and Playwright (pip); no browser is
downloaded. `MAGREF_APP_SCREENSHOT=docs/app.png` makes the first test write the README's
picture of a finished two-reference video.
"""

import json
import os
import shutil
import time

import pytest

from conftest import DEFAULTS, EXAMPLES
from test_app import PROMPT, start_server

REFS = [str(EXAMPLES / "character.png"), str(EXAMPLES / "mug.png")]


def _chromium() -> str:
    path = os.environ.get("MAGREF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("the browser tests need Debian's chromium: apt-get install chromium (the README's test command does)")
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser-out")
    proc, url = start_server(out)
    yield url, out
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(served[0])
    page.wait_for_selector("#refs input[type=file]", state="attached")
    yield page
    page.close()


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def _videos(out):
    return sorted(p.name for p in out.iterdir() if p.suffix in (".mp4", ".json", ".part"))


def _generate_two_references(page) -> None:
    page.set_input_files("#refs input[type=file]", REFS)
    page.wait_for_selector("#canvas img", timeout=30_000)  # the composed canvas, before generating
    page.wait_for_selector("#mask img")
    page.fill("#prompt textarea", PROMPT)
    page.click("#generate")
    page.wait_for_selector("#video video", timeout=180_000)


def test_two_references_preview_generate_and_play(page, served):
    url, out = served
    _generate_two_references(page)
    assert "Done in" in page.inner_text("#status")
    playing = page.wait_for_function(
        "() => { const v = document.querySelector('#video video'); if (!v) return false;"
        " if (v.paused) v.play(); return v.readyState >= 2 && v.currentTime > 0 && !v.paused"
        f" && v.videoWidth === {DEFAULTS['width']}; }}", timeout=30_000)
    assert playing
    sidecars = [json.loads(p.read_text()) for p in out.glob("*.json")]
    mine = [s for s in sidecars if s["settings"]["prompt"] == PROMPT and len(s["settings"]["refs"]) == 2]
    assert mine and mine[0]["status"] == "complete" and (out / mine[0]["output"]["file"]).is_file()
    links = [a.get_attribute("href") or "" for a in page.locator("#downloads a").all()]
    name = mine[0]["output"]["file"]
    assert any(h.endswith(name) for h in links) and any(h.endswith(name.replace(".mp4", ".json")) for h in links), links
    shot = os.environ.get("MAGREF_APP_SCREENSHOT")
    if shot:
        page.screenshot(path=shot, full_page=True)


def test_a_bad_image_shows_the_one_line_error_beside_the_references(page, served, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not an image")
    page.set_input_files("#refs input[type=file]", [REFS[0], str(bad)])
    error = page.wait_for_selector("#error-refs", state="visible", timeout=30_000)
    text = error.inner_text()
    assert "holiday.png" in text and "Fix:" in text and "Traceback" not in text, text
    assert page.locator("#canvas img").count() == 0


def test_cancel_stops_the_run_and_writes_nothing(page, served):
    url, out = served
    before = _videos(out)
    page.set_input_files("#refs input[type=file]", REFS[:1])
    page.fill("#prompt textarea", PROMPT)
    _set_number(page, "steps", 1000)
    page.click("#generate")
    page.wait_for_function("() => /step \\d+\\/1000/.test(document.body.innerText)", timeout=120_000)  # the progress bar runs
    page.click("#cancel")
    # generous for a loaded machine (the suite beside a training run once took > 60 s here); a cancel
    # that did not stop the job would finish its 1000 steps, show no "Cancelled" and write a video
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Cancelled')", timeout=240_000)
    assert _videos(out) == before
    # the button said it was cancelling and comes back once the job has stopped
    page.wait_for_function("() => document.querySelector('#cancel').innerText.trim() === 'Cancel' && !document.querySelector('#cancel').disabled",
                           timeout=60_000)


def test_two_clients_are_queued_not_interleaved(browser, served):
    url, out = served
    pages = []
    for prompt in ("A person jumps up and down in a meadow.", "A mug moves away on a beach."):
        p = browser.new_page()
        p.goto(url)
        p.wait_for_selector("#refs input[type=file]", state="attached")
        p.set_input_files("#refs input[type=file]", REFS)
        p.fill("#prompt textarea", prompt)
        _set_number(p, "steps", 12)
        pages.append((p, prompt))
    for p, _ in pages:
        p.click("#generate")
    for p, _ in pages:
        p.wait_for_function("() => document.querySelector('#status').innerText.includes('Done in')", timeout=240_000)
        p.close()
    spans = []
    for prompt in (pr for _, pr in pages):
        s = next(json.loads(f.read_text()) for f in out.glob("*.json") if json.loads(f.read_text())["settings"]["prompt"] == prompt)
        end = s["created_unix"]
        spans.append((end - s["timings_s"]["generate"] - s["timings_s"]["write_video"], end))
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0 + 0.05, spans  # the second generation started after the first finished


def test_history_restores_a_runs_settings(page, served):
    url, out = served
    if not list(out.glob("*.json")):  # this test process's server has made nothing yet (under -n 2 the generating tests may run in the other)
        _generate_two_references(page)
    done = sorted(out.glob("*.json"), key=lambda f: json.loads(f.read_text())["created_unix"])
    assert done
    target = json.loads(done[0].read_text())
    page.reload()
    page.wait_for_selector("#history")
    page.click("#history-pick input")
    page.click(f"li:has-text('{target['output']['file']}')")
    page.click("#restore")
    page.wait_for_function(f"() => document.querySelector('#prompt textarea').value === {json.dumps(target['settings']['prompt'])}", timeout=30_000)
    assert page.locator("#steps input").first.input_value() == str(target["settings"]["steps"])
    assert page.locator("#seed input").first.input_value() == str(target["settings"]["seed"])
    time.sleep(0.5)
