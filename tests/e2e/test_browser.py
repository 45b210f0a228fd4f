"""End-to-end in a browser: headless Chromium (Debian's ``/usr/bin/chromium``,
driven by Playwright) logs in on a real JupyterHub, starts a server through the
spawn form, follows the Outpost's progress on the spawn-pending page and lands
in the server; a failed start shows the Outpost's error text escaped; the
default spawn form shows the Outpost's flavors with their usage.

Screenshots of every step go to ``$OUTPOSTSPAWNER_ARTIFACTS/browser/<test>/``
(default ``test-artifacts/`` in the repository root).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, async_playwright, expect

from outpostspawner.testing import Fault

from . import flavor_setup
from .conftest import start_hub, stop_hub, wait_for

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
#: Chromium in a closed network: no sandbox (root in CI), no background traffic
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: every Playwright wait (actions, navigations, expectations), in milliseconds
TIMEOUT_MS = 30_000
#: seconds to wait for a browser context, the browser or the Playwright driver to close
CLOSE_TIMEOUT = 30
#: seconds the reference Outpost takes to answer a start, so the page shows it pending
START_DELAY = 5
#: an Outpost error text that would inject elements if it reached the page as HTML
EVIL = "<b>boom</b> & <script>window.__outpost_xss = 1</script>"

OPTIONS_FORM = """
<label for="system">System</label>
<select id="system" name="system" class="form-control">
  <option value="cpu">CPU</option>
  <option value="gpu">GPU</option>
</select>
<label for="memory">Memory (GB)</label>
<input id="memory" name="memory" type="number" value="2" class="form-control">
<label for="e2e_delay">Hold the start (seconds)</label>
<input id="e2e_delay" name="e2e_delay" type="number" value="0" class="form-control">
"""

EXTRA_CONFIG = f"""
c.OutpostSpawner.options_form = {OPTIONS_FORM!r}
c.OutpostSpawner.options_from_form = "simple"
"""

#: records the text of every event the spawn-pending page adds to its event log
PROGRESS_RECORDER = """
(() => {
  const watch = () => {
    const log = document.getElementById("progress-log");
    if (!log) return;
    new MutationObserver((records) => {
      for (const record of records) {
        for (const node of record.addedNodes) {
          if (node.nodeType === 1 && node.classList.contains("progress-log-event")) {
            window.recordProgressEvent(node.textContent);
          }
        }
      }
    }).observe(log, { childList: true });
  };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", watch);
  } else {
    watch();
  }
})();
"""

#: a request from the page as a frontend makes it: same-origin, with the server's XSRF token
FETCH_API = """
async (url) => {
  const xsrf = document.cookie.match(/(?:^|; )_xsrf=([^;]*)/);
  const headers = xsrf ? { "X-XSRFToken": decodeURIComponent(xsrf[1]) } : {};
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 30000);
  try {
    const resp = await fetch(url, { headers, signal: controller.signal });
    return { status: resp.status, body: await resp.text() };
  } finally {
    clearTimeout(timer);
  }
}
"""

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


def artifacts_dir() -> Path:
    """Where screenshots are kept: ``$OUTPOSTSPAWNER_ARTIFACTS`` or ``test-artifacts/``."""
    return Path(os.environ.get("OUTPOSTSPAWNER_ARTIFACTS") or REPO / "test-artifacts")


class Screenshots:
    """Numbered full-page screenshots of one test."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.count = 0
        self.paths: list[Path] = []

    async def take(self, page: Page, step: str) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{step}.png"
        await page.screenshot(path=str(path), full_page=True, timeout=TIMEOUT_MS)
        self.paths.append(path)
        return path


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser():
    """Headless Chromium from ``/usr/bin/chromium``, closed after the module."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package. "
            "Install it with `make system-deps` (apt-get install chromium).",
            pytrace=False,
        )
    playwright = await async_playwright().start()
    try:
        # launch() gives Chromium a fresh temporary profile and removes it on close
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=TIMEOUT_MS,
        )
        try:
            yield browser
        finally:
            await asyncio.wait_for(browser.close(), timeout=CLOSE_TIMEOUT)
    finally:
        # ends the driver process, and with it a browser that did not close
        await asyncio.wait_for(playwright.stop(), timeout=CLOSE_TIMEOUT)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser_hub(outpost, tmp_path_factory):
    """A Hub (module scope) whose spawn page shows an options form."""
    hub = await start_hub(
        tmp_path_factory.mktemp("browser-hub"), outpost, extra_config=EXTRA_CONFIG
    )
    try:
        yield hub
    finally:
        await stop_hub(hub)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def flavors_hub(tmp_path_factory):
    """A Hub with the default spawn form, asking an Outpost that has flavors."""
    async with flavor_setup.flavors_outpost(tmp_path_factory.mktemp("flavors-outpost")) as o:
        hub = await start_hub(
            tmp_path_factory.mktemp("flavors-hub"), o, extra_config=flavor_setup.HUB_CONFIG
        )
        o.flavors_update_token = hub.outpost_service_token
        try:
            yield hub
        finally:
            await stop_hub(hub)


@pytest.fixture
def progress_events() -> list[str]:
    """The text of every entry the spawn-pending pages of ``page`` added to their event log."""
    return []


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser, progress_events, shots):
    """A page in a fresh browser context (no cookies), closed after the test; the
    page as the test left it (where it stopped, if it failed) is kept as ``last.png``."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)

        def record(text: str) -> None:
            progress_events.append(text)

        await context.expose_function("recordProgressEvent", record)
        await context.add_init_script(PROGRESS_RECORDER)
        page = await context.new_page()
        yield page
        try:
            await page.screenshot(
                path=str(shots.directory / "last.png"), full_page=True, timeout=TIMEOUT_MS
            )
        except PlaywrightError as e:  # e.g. the page crashed: keep the test's own outcome
            warnings.warn(f"no last screenshot: {e}", stacklevel=1)
    finally:
        await asyncio.wait_for(context.close(), timeout=CLOSE_TIMEOUT)


@pytest.fixture
def shots(request):
    """Screenshots of this test, in a fresh directory under the artifacts dir."""
    directory = artifacts_dir() / "browser" / request.node.name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return Screenshots(directory)


async def login(page: Page, hub, user: str, shots: Screenshots) -> None:
    await page.goto(f"{hub.url}/hub/login")
    await page.fill("#username_input", user)
    await page.fill("#password_input", hub.password)
    await shots.take(page, "login")
    await page.click("#login_submit")
    await page.wait_for_url(lambda url: "/hub/login" not in url, timeout=TIMEOUT_MS)


async def submit_spawn_form(page: Page, hub, user: str, shots: Screenshots, **fields) -> None:
    """Open the spawn page, fill the options form and press Start."""
    await page.goto(f"{hub.url}/hub/spawn/{user}")
    await expect(page.locator("#spawn_form")).to_be_visible(timeout=TIMEOUT_MS)
    for name, value in fields.items():
        if name == "system":
            await page.select_option("#system", value)
        else:
            await page.fill(f"#{name}", str(value))
    await shots.take(page, "spawn-form")
    await page.click("#spawn_form button[type=submit]")
    await page.wait_for_url(re.compile(rf"/hub/spawn-pending/{user}"), timeout=TIMEOUT_MS)


async def test_login_spawn_form_progress_and_server(
    browser_hub, outpost_settings, page, progress_events, shots
):
    hub = browser_hub
    user = "browser-alice"
    outpost_settings.start_delay = START_DELAY

    await login(page, hub, user, shots)
    await submit_spawn_form(page, hub, user, shots, system="gpu", memory=4)

    # the start is pending at the Outpost: the page shows the spawner's event
    message = page.locator("#progress-message")
    await expect(message).to_contain_text(
        "Sending the start request to the Outpost.", timeout=TIMEOUT_MS
    )
    await expect(page.locator("#progress-bar")).to_have_attribute(
        "aria-valuenow", "20", timeout=TIMEOUT_MS
    )
    await page.click("#progress-details summary")  # open the event log
    await expect(page.locator("#progress-log")).to_contain_text(
        "Server requested", timeout=TIMEOUT_MS
    )
    await shots.take(page, "spawn-pending")

    # ready: the page reloads and the Hub sends the browser on to the server
    await page.wait_for_url(re.compile(rf"/user/{user}/"), timeout=TIMEOUT_MS)
    await page.wait_for_load_state("load", timeout=TIMEOUT_MS)
    landing = page.url
    assert landing.startswith(f"{hub.url}/user/{user}/"), landing
    has_lab = importlib.util.find_spec("jupyterlab") is not None
    if has_lab:
        # JupyterLab is the single-user server's default UI when it is installed
        await page.wait_for_url(re.compile(rf"/user/{user}/lab"), timeout=TIMEOUT_MS)
        await expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=TIMEOUT_MS)
    else:
        # jupyter-server without a frontend shows its own landing page
        await expect(page.locator("h1")).to_have_text(
            "A Jupyter Server is running.", timeout=TIMEOUT_MS
        )
    await shots.take(page, "server")
    resp = await page.request.get(page.url, timeout=TIMEOUT_MS)
    assert resp.status == 200, resp.status
    # the page reaches the server's REST API as a frontend does
    answer = await page.evaluate(FETCH_API, f"/user/{user}/api")
    assert answer["status"] == 200, answer
    assert "version" in json.loads(answer["body"])
    if has_lab:
        # JupyterLab's page needs a login, so the browser went through the Hub's
        # OAuth: its session may use the authenticated API (jupyter-server's own
        # landing page needs no login, so there it would be a 403)
        answer = await page.evaluate(FETCH_API, f"/user/{user}/api/status")
        assert answer["status"] == 200, answer
        assert "started" in json.loads(answer["body"])

    # every progress event of the start was shown in the page's event log, in order
    expected = [
        "Server requested",
        "Sending the start request to the Outpost.",
        "The Outpost started the server.",
        f"Server ready at /user/{user}/",
    ]
    shown = progress_events
    positions = []
    for text in expected:
        found = [i for i, event in enumerate(shown) if text in event]
        assert found, f"{text!r} not in the page's event log {shown}"
        positions.append(found[0])
    assert positions == sorted(positions), shown

    # the form's options reached the Outpost
    (start,) = hub.start_requests(user)
    options = start.json["user_options"]
    assert options["system"] == "gpu"
    assert options["memory"] == "4"
    record = hub.outpost.get_service(start.json["name"])
    assert record is not None and record.ready

    resp = await hub.api("DELETE", hub.server_path(user))
    assert resp.code in (202, 204), resp.text
    await hub.wait_stopped(user)


async def assert_not_injected(page: Page) -> None:
    """None of the error text's markup became part of the page."""
    assert await page.locator("b", has_text="boom").count() == 0
    assert await page.evaluate("() => window.__outpost_xss === undefined")
    injected = await page.evaluate(
        "() => [...document.scripts].some((s) => s.textContent.includes('__outpost_xss'))"
    )
    assert not injected


async def test_failed_start_shows_escaped_outpost_error(
    browser_hub, outpost_settings, page, progress_events, shots
):
    hub = browser_hub
    user = "browser-bob"
    outpost_settings.faults.add(Fault("start", "419", body=EVIL, count=1))

    await login(page, hub, user, shots)
    # hold the start for a moment so the page's event stream sees the failure live
    await submit_spawn_form(page, hub, user, shots, e2e_delay=3)

    message = page.locator("#progress-message")
    await expect(message).to_contain_text(EVIL, timeout=TIMEOUT_MS)
    await expect(page.locator("#progress-bar")).to_have_class(
        re.compile(r"\bbg-danger\b"), timeout=TIMEOUT_MS
    )
    await expect(page.locator("#progress-details")).to_have_attribute(
        "open", "", timeout=TIMEOUT_MS
    )
    await shots.take(page, "spawn-failed")
    assert EVIL in await page.inner_text("#progress-message")
    assert EVIL in await page.inner_text("#progress-log")
    assert any(EVIL in event for event in progress_events), progress_events
    await assert_not_injected(page)

    # the failure page the Hub shows afterwards escapes it too
    await hub.wait_stopped(user)
    await page.goto(f"{hub.url}/hub/spawn-pending/{user}")
    await expect(page.locator("h1")).to_have_text("Spawn failed", timeout=TIMEOUT_MS)
    await shots.take(page, "failure-page")
    assert EVIL in await page.inner_text("body")
    await assert_not_injected(page)

    # the Outpost was asked once and cleaned up
    (start,) = hub.start_requests(user)
    assert hub.outpost.get_service(start.json["name"]) is None


async def test_default_form_shows_flavors_with_usage_and_starts_the_one_chosen(
    flavors_hub, page, shots
):
    hub = flavors_hub
    user = "browser-carol"
    # another user holds the only server of the flavor "small"
    await hub.create_user("browser-holder")
    resp = await hub.api(
        "POST", hub.server_path("browser-holder"), body=flavor_setup.options("small")
    )
    assert resp.code in (201, 202), resp.text
    await hub.wait_ready("browser-holder")
    token = await hub.create_user(user)

    async def small_in_use():
        resp = await hub.api("GET", "/outpostflavors", token=token)
        return resp.json()[flavor_setup.SYSTEM]["small"]["current"] == 1

    await wait_for(small_in_use, timeout=20, message="the Outpost's push after the start")

    await login(page, hub, user, shots)
    await page.goto(f"{hub.url}/hub/spawn/{user}")
    form = page.locator("#spawn_form")
    await expect(form).to_be_visible(timeout=TIMEOUT_MS)
    await shots.take(page, "flavors-form")
    system = flavor_setup.SYSTEM
    small = page.locator(f'input[value="{system}/small"]')
    medium = page.locator(f'input[value="{system}/medium"]')
    short = page.locator(f'input[value="{system}/short"]')
    await expect(small).to_be_disabled()
    await expect(medium).to_be_enabled()
    await expect(medium).to_be_checked()  # the first flavor with room
    small_label = page.locator(f'label[for="{await small.get_attribute("id")}"]')
    await expect(small_label).to_contain_text("1 of 1 in use")
    await expect(small_label).to_contain_text("full")
    # the Outpost's texts are shown as text, never as markup
    await expect(small_label).to_contain_text("Small <b>1 CPU</b>")
    await expect(small_label).to_contain_text("<script>window.__outpost_xss = 1</script>")
    assert await page.evaluate("() => window.__outpost_xss === undefined")
    assert await form.locator("b", has_text="1 CPU").count() == 0
    medium_label = page.locator(f'label[for="{await medium.get_attribute("id")}"]')
    await expect(medium_label).to_contain_text("0 of 10 in use; 0 of 1 yours")
    short_label = page.locator(f'label[for="{await short.get_attribute("id")}"]')
    await expect(short_label).to_contain_text(f"runs at most {flavor_setup.SHORT_RUNTIME} seconds")
    await expect(form.locator("legend")).to_have_text(flavor_setup.TITLE)
    await expect(form.locator(".outpost-credits")).to_contain_text(f"{flavor_setup.TITLE} credits")
    await expect(form.locator(".outpost-credits")).to_contain_text("hours: 5")

    await medium.check()
    await page.click("#spawn_form button[type=submit]")
    await page.wait_for_url(re.compile(rf"/user/{user}/"), timeout=TIMEOUT_MS)
    await shots.take(page, "flavor-server")
    (start,) = hub.start_requests(user)
    sent = start.json["user_options"]
    assert (sent["system"], sent["flavor"]) == (system, "medium")

    for name in (user, "browser-holder"):
        resp = await hub.api("DELETE", hub.server_path(name))
        assert resp.code in (202, 204), resp.text
        await hub.wait_stopped(name)
