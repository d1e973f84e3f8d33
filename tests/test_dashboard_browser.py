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

import pytest

from tests import media as fixtures
from tests.conftest import KEY_A, Api, MediaServer, Receiver, StartServer

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = os.environ.get("AHV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
MARKER = "loaded-once"
ROW = '#jobs-body tr[data-job-id="{}"]'


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
        page.on("pageerror", lambda error: self.errors.append(str(error)))
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


def has_route(api: Api, path: str) -> bool:
    return any(r.canonical == path for r in api.server.app.router.resources())


async def has_redeliver(api: Api) -> bool:
    # The same rule the page uses: an unknown endpoint is `not_found`, an unknown job is not.
    status, body, _ = await api.call("POST", "/v1/jobs/" + "0" * 32 + "/redeliver")
    return not (status == 405 or (status == 404 and body["error"]["code"] == "not_found"))


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
    expected_mode = "live" if has_route(api, "/v1/events") else "polling"
    await page.locator(f'#conn-mode[data-mode="{expected_mode}"]').wait_for(timeout=10_000)
    await page.locator('#backends-body tr[data-backend="cpu"]').wait_for()
    assert await page.locator('tr[data-backend="cpu"] .slots-text').inner_text() == "0/2"
    assert await page.evaluate("sessionStorage.getItem('ahv.apiKey')") == KEY_A

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
    await page.locator('[data-stat="succeeded"] b', has_text="1").wait_for()
    stats = (await api.call("GET", "/stats"))[1]
    if stats.get("history"):  # the hour's charts, once the server keeps a history
        await page.locator('#chart-queue[data-empty="false"] svg polyline').wait_for()
        await page.locator('#chart-finished[data-empty="false"] svg').wait_for()
    else:
        assert await page.locator("#chart-queue").inner_text() == "no data yet"
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

    # Redeliver: sent again where the server has the endpoint, else the button goes away.
    await page.click("#btn-redeliver")
    if await has_redeliver(api):
        await receiver.wait_for("/ok", count=2)
    else:
        await page.locator("#btn-redeliver").wait_for(state="hidden")
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
