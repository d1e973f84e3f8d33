"""The docs page and the dashboard in a real headless Chromium (Debian's `chromium`, driven
by Playwright; no browser is downloaded), against the real server on a random port.

The dashboard is checked the way a user sees it: enter the key, watch a job submitted through
the API appear, progress and finish without a page load, open its detail and see the output,
cancel and delete a queued job with the page's buttons. Screenshots go to the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ahv.models.face.mtcnn import build_mtcnn_models
from scripts.make_test_models import make_test_models
from scripts.tiny_models_objects import make_yolo
from tests import media as fixtures
from tests.conftest import KEY_A, Api, MediaServer, Receiver, StartServer
from tests.fake_providers import FakeGoogle
from tests.test_faceswap_video import SIZE, make_clip, video_config

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = os.environ.get("AHV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
MARKER = "loaded-once"
ROW = '#jobs-body tr[data-job-id="{}"]'
GOOGLE_KEY = "AIza-dashboard-test-key"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            await chromium.close()


class Dashboard:
    """One open dashboard tab, with what it loaded and the script errors it had."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.navigations = 0
        self.errors: list[str] = []
        self.requests: list[str] = []  # every URL the page asked for, in order
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("framenavigated", self._navigated)

    def _navigated(self, frame: Any) -> None:
        if frame == self.page.main_frame:
            self.navigations += 1

    async def wait_row(self, job_id: str, status: str, timeout_ms: int = 20_000) -> Any:
        row = self.page.locator(f'{ROW.format(job_id)}[data-status="{status}"]')
        await row.wait_for(timeout=timeout_ms)
        return row

    async def check_not_reloaded(self) -> None:
        assert await self.page.evaluate("window.__loadMarker") == MARKER
        assert self.navigations == 1
        assert self.errors == []


async def open_dashboard(browser: Any, api: Api, key: str = KEY_A) -> Dashboard:
    page = await browser.new_page(viewport={"width": 1500, "height": 1100})
    dash = Dashboard(page)
    await page.goto(api.url + "/dashboard")
    await page.evaluate(f"window.__loadMarker = {MARKER!r}")
    await page.fill("#key-input", key)
    await page.click("#key-submit")
    await page.locator("#app").wait_for(state="visible")
    return dash


async def test_docs_page_in_browser_has_the_real_base_url(
    api: Api, browser: Any, tmp_path: Path
) -> None:
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    response = await page.goto(api.url + "/")
    assert response.status == 200
    assert await page.locator("#api-base").inner_text() == api.url
    example = await page.locator("#task-upscale pre[data-kind=async]").first.inner_text()
    assert example.startswith(f'curl -X POST "{api.url}/v1/jobs" \\')
    assert '"task": "upscale"' in example
    direct = await page.locator("#task-upscale pre[data-kind=direct]").first.inner_text()
    assert direct.startswith(f'curl -X POST "{api.url}/upscale" \\')
    # The status badges open the matching sample body (no script needed).
    failed = page.locator('details[data-status="failed"] pre')
    assert not await failed.is_visible()
    await page.click('details[data-status="failed"] summary')
    assert '"code": "timeout"' in await failed.inner_text()
    # The page is long: its top and one task section, not a full-page capture (slow).
    await page.screenshot(path=tmp_path / "docs.png")
    await page.locator("#task-upscale").screenshot(path=tmp_path / "docs-upscale.png")
    await page.click("#open-dashboard")
    await page.wait_for_url(api.url + "/dashboard")
    await page.locator("#key-form").wait_for()


async def test_dashboard_follows_a_job_live_without_reload(
    api: Api, browser: Any, tmp_path: Path
) -> None:
    page = await browser.new_page()
    await page.goto(api.url + "/dashboard")
    await page.fill("#key-input", "not-a-key")
    await page.click("#key-submit")
    await page.locator("#key-error", has_text="refused").wait_for()
    assert await page.locator("#app").is_hidden()

    dash = await open_dashboard(browser, api)
    page = dash.page

    # Live: the page reads GET /v1/events (not the polling fallback), and job changes come
    # from it: while the job runs, the job list is not fetched again (polling would fetch it
    # every 2 s; live mode only re-syncs every 15 s).
    def lists() -> list[str]:
        return [url for url in dash.requests if url.startswith(api.url + "/v1/jobs?")]

    await page.locator('#conn-mode[data-mode="live"]').wait_for(timeout=10_000)
    await page.locator('#backends-body tr[data-backend="cpu"]').wait_for()
    assert await page.locator('tr[data-backend="cpu"] .slots-text').inner_text() == "0/2"
    assert await page.evaluate("sessionStorage.getItem('ahv.apiKey')") == KEY_A

    lists_before = len(lists())
    job = await api.submit("sleep", {"seconds": 5, "steps": 50})
    job_id = job["job_id"]
    await page.locator(ROW.format(job_id)).wait_for(timeout=10_000)
    await page.wait_for_function(
        """id => {
            const row = document.querySelector(`#jobs-body tr[data-job-id="${id}"]`);
            return row && row.dataset.status === 'running' && Number(row.dataset.progress) > 0;
        }""",
        arg=job_id,
        timeout=15_000,
    )
    row = page.locator(ROW.format(job_id))
    assert await row.locator(".task").inner_text() == "sleep"
    await page.locator('tr[data-backend="cpu"] .slots-text', has_text="1/2").wait_for()
    await page.screenshot(path=tmp_path / "dashboard-running.png", full_page=True)

    await dash.wait_row(job_id, "succeeded")
    assert await row.locator(".progress-wrap small").inner_text() == "100%"
    assert (await row.locator(".duration").inner_text()).endswith(" s")
    # Queued, running, progress and the end all came through the one event stream.
    assert len(lists()) - lists_before <= 1, lists()
    assert dash.requests.count(api.url + "/v1/events") == 1, dash.requests
    assert await page.locator("#conn-mode").get_attribute("data-mode") == "live"
    await page.locator('[data-stat="succeeded"] b', has_text="1").wait_for()
    # The hour's charts: the queue depth line, and this minute's finished bar.
    await page.locator('#chart-queue[data-empty="false"] svg polyline').wait_for()
    await page.locator('#chart-finished[data-empty="false"] svg g rect.bar-ok').wait_for()
    tip = await page.locator("#chart-finished svg g title").last.text_content()
    assert tip is not None and tip.endswith(": 1 finished, of which 0 failed or rejected"), tip
    legend = await page.locator("#chart-finished").locator("xpath=..").locator("h2").inner_text()
    assert "every final status" in legend and "of which failed or rejected" in legend
    await page.screenshot(path=tmp_path / "dashboard-succeeded.png", full_page=True)
    await dash.check_not_reloaded()


async def test_job_detail_shows_output_inputs_and_deliveries(
    api: Api, browser: Any, media: MediaServer, receiver: Receiver, tmp_path: Path
) -> None:
    image_url = media.add("astronaut.png", fixtures.astronaut_png(), "image/png")
    dash = await open_dashboard(browser, api)
    page = dash.page
    job = await api.submit(
        "upscale", {"image_url": image_url, "scale": 2}, webhook_url=receiver.url("/ok")
    )
    job_id = job["job_id"]
    done = await api.wait(job_id)
    assert done["status"] == "succeeded", done
    await receiver.wait_for("/ok")

    row = await dash.wait_row(job_id, "succeeded")
    await row.click()
    detail = page.locator(f'#job-detail[data-job-id="{job_id}"][data-status="succeeded"]')
    await detail.wait_for()
    await page.wait_for_function(
        """() => {
            const img = document.getElementById('detail-image');
            return img && img.complete && img.naturalWidth > 0;
        }"""
    )
    natural = await page.evaluate("document.getElementById('detail-image').naturalWidth")
    assert natural == done["result"]["meta"]["width"] == 1024
    assert await page.get_attribute("#detail-image", "src") == done["result"]["url"]
    link = page.locator('#detail-inputs [data-input="image_url"] a')
    assert await link.get_attribute("href") == image_url
    assert '"backend": "cpu-' in await page.locator("#detail-meta").inner_text()

    delivered = page.locator('#deliveries-body tr[data-state="delivered"]')
    await delivered.wait_for()
    assert await delivered.locator(".last-status").inner_text() == "200"
    assert await delivered.locator(".attempts").inner_text() == "1"
    await page.screenshot(path=tmp_path / "dashboard-detail.png", full_page=True)

    # Redeliver: the same event sent again, and the log shows it delivered once more.
    await page.click("#btn-redeliver")
    first, again = await receiver.wait_for("/ok", count=2)
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    await page.locator("#toast", has_text="Webhook queued for delivery again.").wait_for()
    await page.locator('#deliveries-body tr[data-state="delivered"]').wait_for()
    await dash.check_not_reloaded()


async def test_job_detail_shows_every_file_of_a_several_image_result(
    start_server: StartServer, aiohttp_server: Any, browser: Any, tmp_path: Path
) -> None:
    google = await FakeGoogle.start(aiohttp_server, GOOGLE_KEY)
    api = await start_server(providers={"google": {"api_key": GOOGLE_KEY, "base_url": google.url}})
    dash = await open_dashboard(browser, api)
    page = dash.page
    # The provider's backend says which provider and where; OpenAI, not set up, says so.
    google_row = page.locator('#backends-body tr[data-backend="google"]')
    await google_row.wait_for()
    assert await google_row.locator(".providers .chip").inner_text() == "google"
    assert google.url in await google_row.locator(".providers").inner_text()
    openai_row = page.locator('#backends-body tr[data-backend="provider:openai"]')
    assert "not configured" in await openai_row.inner_text()
    assert "cx_image unavailable" in await openai_row.locator(".health").inner_text()
    job = await api.submit("gg_image", {"prompt": "a red fox", "number_of_images": 3})
    done = await api.wait(job["job_id"])
    assert done["status"] == "succeeded", done["error"]
    files = done["result"]["files"]
    assert len(files) == 3

    row = await dash.wait_row(job["job_id"], "succeeded")
    await row.click()
    await page.locator(f'#job-detail[data-job-id="{job["job_id"]}"]').wait_for()
    gallery = page.locator("#detail-files figure.result-file")
    await gallery.nth(2).wait_for()
    assert await gallery.count() == 3
    await page.wait_for_function(
        """() => [...document.querySelectorAll('#detail-files img')]
                   .every(img => img.complete && img.naturalWidth > 0)"""
    )
    sources = await page.eval_on_selector_all("#detail-files img", "imgs => imgs.map(i => i.src)")
    assert sources == [f["url"] for f in files]
    assert await page.get_attribute("#detail-image", "src") == done["result"]["url"]
    # A prompt is text, not a link to /dashboard's neighbour; options left out are not shown.
    prompt = page.locator('#detail-inputs [data-input="prompt"]')
    assert await prompt.inner_text() == "a red fox"
    assert await prompt.locator("a").count() == 0
    assert await page.locator('#detail-inputs [data-input="negative_prompt"]').count() == 0
    assert await page.locator('#detail-inputs [data-input="number_of_images"]').inner_text() == "3"
    await page.locator("#job-detail").screenshot(path=tmp_path / "dashboard-several-files.png")
    assert google.key not in await page.content()
    await dash.check_not_reloaded()


async def test_cancel_and_delete_a_queued_job_from_the_page(
    start_server: StartServer, browser: Any, tmp_path: Path
) -> None:
    api = await start_server(
        backends=[{"name": "cpu", "device": "cpu", "slots": 1, "tasks": ["upscale", "sleep"]}]
    )
    blocker = await api.submit("sleep", {"seconds": 30, "steps": 300})
    await api.wait(blocker["job_id"], frozenset({"running"}))
    queued = await api.submit("sleep", {"seconds": 1})
    job_id = queued["job_id"]
    try:
        dash = await open_dashboard(browser, api)
        page = dash.page
        row = await dash.wait_row(job_id, "queued")
        assert await row.locator(".queue-pos").inner_text() == str(queued["queue_position"])
        assert (await row.locator(".eta").inner_text()).startswith(("in ", "due"))
        await row.click()
        await page.locator(f'#job-detail[data-job-id="{job_id}"][data-status="queued"]').wait_for()
        await page.click("#btn-cancel")
        await dash.wait_row(job_id, "canceled", timeout_ms=10_000)
        await page.locator('#job-detail[data-status="canceled"]').wait_for()
        assert (await api.job(job_id))["status"] == "canceled"
        assert (await api.job(blocker["job_id"]))["status"] == "running"
        await page.screenshot(path=tmp_path / "dashboard-canceled.png", full_page=True)

        # The filters: by status, by task, and back to all.
        await page.select_option("#filter-status", "running")
        await page.locator(ROW.format(job_id)).wait_for(state="detached")
        await dash.wait_row(blocker["job_id"], "running")
        await page.select_option("#filter-status", "")
        await page.select_option("#filter-task", "upscale")
        await page.locator("#jobs-empty").wait_for(state="visible")
        assert await page.locator("#jobs-body tr").count() == 0
        await page.select_option("#filter-task", "sleep")
        await dash.wait_row(job_id, "canceled")
        await dash.wait_row(blocker["job_id"], "running")

        async def accept(dialog: Any) -> None:
            await dialog.accept()

        page.once("dialog", accept)
        await page.click("#btn-delete")
        await page.locator(ROW.format(job_id)).wait_for(state="detached")
        status, body, _ = await api.call("GET", f"/v1/jobs/{job_id}")
        assert status == 404 and body["error"]["code"] == "job_not_found"
        await dash.check_not_reloaded()

        # The key is kept for the tab's session: a reload opens the dashboard directly.
        await page.reload()
        await page.locator("#app").wait_for(state="visible")
        await page.locator(ROW.format(blocker["job_id"])).wait_for()
    finally:
        await api.call("POST", f"/v1/jobs/{blocker['job_id']}/cancel")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: Any) -> Path:
    """Tiny random-weight face models (scripts/make_test_models.py), the real MTCNN detector
    and a tiny YOLO detector (scripts/tiny_models_objects.py), all with the real signatures."""
    directory = Path(tmp_path_factory.mktemp("models"))
    make_test_models(directory)
    build_mtcnn_models(directory)
    make_yolo(directory / "yolo_tiny.onnx")
    return directory


def models_cell(page: Any, backend: str) -> Any:
    return page.locator(f'#backends-body tr[data-backend="{backend}"] td.models')


async def test_job_detail_plays_a_video_result(
    start_server: StartServer, models_dir: Path, media: MediaServer, browser: Any, tmp_path: Path
) -> None:
    api = await start_server(**video_config(models_dir))
    clip = make_clip(tmp_path / "clip.mp4", 24)
    job = await api.submit(
        "faceswap_video",
        {
            "target_url": media.add("clip.mp4", clip.read_bytes(), "video/mp4"),
            "source_url": media.add("face.png", fixtures.astronaut_png(), "image/png"),
        },
    )
    done = await api.wait(job["job_id"], timeout_s=90)
    assert done["status"] == "succeeded", done["error"]
    url, meta = done["result"]["url"], done["result"]["meta"]

    dash = await open_dashboard(browser, api)
    page = dash.page
    # Every response the page got for the result file (Chromium asks for media by ranges).
    answers: list[tuple[int, str]] = []
    page.on(
        "response",
        lambda r: (
            answers.append((r.status, r.headers.get("content-type", ""))) if r.url == url else None
        ),
    )
    row = await dash.wait_row(job["job_id"], "succeeded")
    await row.click()
    await page.locator(f'#job-detail[data-job-id="{job["job_id"]}"]').wait_for()
    video = page.locator("#detail-video")
    await video.wait_for()
    assert await video.get_attribute("src") == url
    assert await page.locator("#detail-image").count() == 0
    # Chromium read the file as a video: its size and length are the job's.
    await page.wait_for_function(
        "() => { const v = document.getElementById('detail-video');"
        " return v && (v.readyState >= 1 || v.error); }",
        timeout=15_000,
    )
    facts = await page.evaluate(
        """() => { const v = document.getElementById('detail-video');
                   return {error: v.error && v.error.code, width: v.videoWidth,
                           height: v.videoHeight, duration: v.duration}; }"""
    )
    assert facts["error"] is None, facts
    assert (facts["width"], facts["height"]) == (meta["width"], meta["height"]) == SIZE
    assert abs(facts["duration"] - meta["duration_s"]) < 0.1 and abs(facts["duration"] - 2.0) < 0.1
    assert answers and all(s in (200, 206) and t == "video/mp4" for s, t in answers), answers
    # The whole file, as a plain GET from the page (no key needed for /files/).
    whole = await page.evaluate(
        """async url => { const r = await fetch(url);
                          return [r.status, r.headers.get('content-type'),
                                  (await r.arrayBuffer()).byteLength]; }""",
        url,
    )
    async with api.session.get(url) as response:
        assert whole == [200, "video/mp4", len(await response.read())]
    # A frame from the middle, for the screenshot.
    await page.evaluate(
        """() => new Promise(done => { const v = document.getElementById('detail-video');
                                      v.addEventListener('seeked', done, {once: true});
                                      v.currentTime = 1.0; })"""
    )
    await page.locator("#job-detail").screenshot(path=tmp_path / "dashboard-video.png")
    # The face models the job used are loaded on its backend.
    await models_cell(page, "cpu").locator(".chip", has_text="inswapper_128").wait_for()
    await dash.check_not_reloaded()


async def test_scan_objects_detail_shows_its_json_and_the_detector_loads(
    start_server: StartServer, models_dir: Path, media: MediaServer, browser: Any, tmp_path: Path
) -> None:
    api = await start_server(
        models={"dir": str(models_dir), "files": {"yolo_tiny": {"file": "yolo_tiny.onnx"}}},
        objects={"detector": "yolo_tiny"},
        backends=[{"name": "cpu", "device": "cpu", "slots": 2, "tasks": ["scan_objects"]}],
    )
    dash = await open_dashboard(browser, api)
    page = dash.page
    cell = models_cell(page, "cpu")
    await cell.wait_for()
    assert await cell.inner_text() == "none"  # nothing has run yet
    assert await cell.locator(".chip").count() == 0

    image_url = media.add("astronaut.png", fixtures.astronaut_png(), "image/png")
    job = await api.submit("scan_objects", {"image_url": image_url})
    done = await api.wait(job["job_id"], timeout_s=30)
    assert done["status"] == "succeeded", done["error"]
    meta = done["result"]["meta"]
    labels = {o["label"] for o in meta["objects"]}
    assert meta["count"] == len(meta["objects"]) > 0 and "person" in labels

    # The table follows by itself: the detector the job used is now loaded.
    await cell.locator(".chip", has_text="yolo_tiny").wait_for(timeout=10_000)
    assert [c.strip() for c in await cell.locator(".chip").all_inner_texts()] == ["yolo_tiny"]
    await page.locator("#backends").screenshot(path=tmp_path / "dashboard-models-loaded.png")

    row = await dash.wait_row(job["job_id"], "succeeded")
    await row.click()
    await page.locator(f'#job-detail[data-job-id="{job["job_id"]}"]').wait_for()
    shown = page.locator("#detail-meta")
    await shown.wait_for()
    assert await shown.is_visible()
    # The JSON on the page is the result's, whole: every object with its label, score, box.
    text = await shown.inner_text()
    assert msgspec.json.decode(text.encode()) == meta
    for label in labels:
        assert f'"label": "{label}"' in text
    assert '"objects": [' in text
    # Hundreds of boxes (the tiny colour-threshold detector finds many on the photo) scroll
    # inside the JSON's box: the panel stays short enough to reach the rest of the detail.
    assert meta["count"] > 50
    sizes = await shown.evaluate("e => [e.clientHeight, e.scrollHeight]")
    assert sizes[0] < 700 < sizes[1], sizes
    # No file: no image or video preview, and not "No output".
    assert await page.locator("#detail-output img, #detail-output video").count() == 0
    assert "No output." not in await page.locator("#detail-output").inner_text()
    assert (
        await page.locator('#detail-inputs [data-input="image_url"] a').get_attribute("href")
        == image_url
    )
    await page.locator("#job-detail").screenshot(path=tmp_path / "dashboard-scan-json.png")
    await dash.check_not_reloaded()
