"""The explorer in a real browser: `streamlit run` on the fixture store, each page loaded in headless chromium.

Chromium is driven through chromedriver's WebDriver HTTP API (plain urllib, no extra packages): Streamlit draws
its pages over a websocket after the load event, so a one-shot `chromium --screenshot` (even with
--virtual-time-budget) captures only the loading skeleton; WebDriver lets the test wait until the page is drawn.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_results import write_results_store  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver")
APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000"]
PAGES = [("", "Runs"), ("runs", "Runs"), ("phases", "Phase transitions"), ("passk", "pass@k"), ("spectra", "Spectra"),
         ("retention", "Retention"), ("hypothesis", "Hypothesis")]
# The page is drawn when its title is up, every image has loaded, no skeleton is left and the script is idle.
DRAWN_JS = """
const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
return {title: (document.querySelector('h1') || {}).innerText || '',
        images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
        busy: document.querySelectorAll(
          '[data-testid="stSkeleton"], [data-testid="stStatusWidgetRunningIcon"]').length};
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium (make browser-deps installs it)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="no chromedriver (apt package chromium-driver)"),
]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float, proc: subprocess.Popen) -> None:
    """Poll `url` until it answers 200, failing early if the process died."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


class WebDriver:
    """The few W3C WebDriver calls the test needs, over chromedriver's HTTP port."""

    def __init__(self, port: int, args: list[str]):
        """Open a chromium session with these command-line flags."""
        self.base = f"http://127.0.0.1:{port}"
        caps = {"goog:chromeOptions": {"binary": CHROMIUM, "args": args}, "pageLoadStrategy": "eager",
                "timeouts": {"pageLoad": 120_000, "script": 60_000}}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        """One WebDriver request; returns its `value`."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=90) as r:
            return json.loads(r.read())["value"]

    def get(self, url: str) -> None:
        """Load a URL (as if typed into the address bar)."""
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def script(self, js: str):
        """Run JavaScript in the page and return its result."""
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": js, "args": []})

    def screenshot(self) -> bytes:
        """PNG of the viewport."""
        return base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot"))

    def dom(self) -> str:
        """The page's current DOM as HTML (what --dump-dom prints)."""
        return self._call("GET", f"/session/{self.session}/source")

    def quit(self) -> None:
        """Close the browser."""
        self._call("DELETE", f"/session/{self.session}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run streamlit_app.py -- --out <fixture store>` on a free local port."""
    store = write_results_store(tmp_path_factory.mktemp("results"))
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none",
           "--", "--out", str(store)]
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=APP.parent)
    try:
        wait_for(f"http://127.0.0.1:{port}/_stcore/health", 120, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Terminate a helper process, killing it when it does not exit within 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless chromium session for all pages."""
    port = free_port()
    proc = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/status", 30, proc)
        driver = WebDriver(port, [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"])
        yield driver
        driver.quit()
    finally:
        stop(proc)


def wait_drawn(browser: WebDriver, title: str, timeout: float = 150) -> dict:
    """Poll until the page shows `title`, its images have loaded and the script is idle (twice in a row)."""
    end, calm, state = time.monotonic() + timeout, 0, {}
    while time.monotonic() < end:
        try:
            state = browser.script(DRAWN_JS)
        except urllib.error.URLError:  # the page may still be loading (chromedriver answers 500 meanwhile)
            time.sleep(1)
            continue
        done = state["title"] == title and state["images"] > 0 and state["loaded"] == state["images"]
        calm = calm + 1 if done and state["busy"] == 0 else 0
        if calm >= 2:
            return state
        time.sleep(0.5)
    raise TimeoutError(f"page {title!r} not drawn in {timeout} s: {state}")


def blankness(png: bytes) -> tuple[int, float]:
    """(distinct colors, largest channel standard deviation) of a screenshot."""
    from PIL import Image, ImageStat

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 24) or []
    return len(colors), max(ImageStat.Stat(img).stddev)


@pytest.mark.parametrize("path,title", PAGES, ids=[t for _, t in PAGES])
def test_page_draws_in_chromium(server, browser, tmp_path, path, title):
    browser.get(f"{server}/{path}")
    state = wait_drawn(browser, title)
    dom = browser.dom()
    png = browser.screenshot()
    keep = os.environ.get("TINA_PROBE_SCREENSHOTS")
    for folder in filter(None, (tmp_path, keep and Path(keep))):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{path or 'runs'}.png").write_bytes(png)
    assert f">{title}<" in dom.replace("&amp;", "&")
    assert 'data-testid="stImage"' in dom and state["loaded"] >= 1
    assert 'data-testid="stException"' not in dom and "Traceback" not in dom
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    colors, spread = blankness(png)
    assert colors > 100 and spread > 5, (colors, spread)  # a blank or skeleton page has a few colors, spread ~0
