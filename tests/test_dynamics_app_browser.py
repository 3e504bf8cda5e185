"""The Series dynamics page in a real browser: `streamlit run` on the dynamics fixture store, loaded in headless
chromium through the WebDriver helpers of test_app_browser.py (same checks: drawn, images loaded, no traceback,
not blank)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_results import write_dynamics_store  # noqa: E402
from test_app_browser import (  # noqa: E402
    APP,
    CHROMEDRIVER,
    CHROMIUM,
    blankness,
    browser,  # noqa: F401  (the shared chromium session fixture)
    free_port,
    stop,
    wait_drawn,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium (make browser-deps installs it)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="no chromedriver (apt package chromium-driver)"),
]


@pytest.fixture(scope="module")
def dynamics_server(tmp_path_factory):
    """`streamlit run streamlit_app.py -- --out <dynamics fixture store>` on a free local port."""
    store = write_dynamics_store(tmp_path_factory.mktemp("results"))
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--", "--out", str(store)]
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=APP.parent)
    try:
        wait_for(f"http://127.0.0.1:{port}/_stcore/health", 120, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_dynamics_page_draws_in_chromium(dynamics_server, browser, tmp_path):  # noqa: F811
    browser.get(f"{dynamics_server}/dynamics")
    state = wait_drawn(browser, "Series dynamics")
    dom = browser.dom()
    png = browser.screenshot()
    keep = os.environ.get("TINA_PROBE_SCREENSHOTS")
    for folder in filter(None, (tmp_path, keep and Path(keep))):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dynamics.png").write_bytes(png)
    assert ">Series dynamics<" in dom
    assert state["images"] >= 2 and state["loaded"] == state["images"]
    assert "Problems across the series" in dom and "pass@k: base vs checkpoint" in dom
    assert 'data-testid="stException"' not in dom and "Traceback" not in dom
    colors, spread = blankness(png)
    assert colors > 100 and spread > 5, (colors, spread)
