"""The dashboard served for real and driven by the system's headless Chromium via Playwright.

Shared by the browser test and the screenshot generator. Chromium is Debian's package
(``scripts/ensure-chromium.sh`` installs it); Playwright never downloads a browser here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path(os.environ.get("KPI_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 960}
STARTUP_SECONDS = 60
RENDER_TIMEOUT_MS = 45_000

PLOT_POINTS = ".js-plotly-plot .scatterlayer .trace path, .js-plotly-plot .scatterlayer .point"
"""SVG elements that exist only once Plotly has drawn data (line paths or marker points)."""
EXCEPTION = '[data-testid="stException"]'


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        return (
            f"no Chromium at {CHROMIUM}: `bash scripts/ensure-chromium.sh` (run by `make test`) "
            "installs Debian's chromium, which needs root and apt"
        )
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def dashboard_server(database_url: str, backtest_dir: Path | None = None, log: Path | None = None) -> Iterator[str]:
    """``kpi-pipeline dashboard`` on a free local port; yields its base URL."""
    port = free_port()
    command = [
        sys.executable,
        "-c",
        "from kpi_pipeline.cli import app; app()",
        "--database-url",
        database_url,
        "dashboard",
        "--port",
        str(port),
    ]
    if backtest_dir is not None:
        command += ["--backtest-dir", str(backtest_dir)]
    output = open(log, "wb") if log else subprocess.DEVNULL
    server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, server)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if log:
            output.close()


def _wait_healthy(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the dashboard exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the dashboard did not answer on {base} within {STARTUP_SECONDS} s")


@contextmanager
def browser_page() -> Iterator:
    """A fresh headless Chromium page (its own throw-away profile)."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="kpi-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport=VIEWPORT,
                device_scale_factor=1,
            )
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def open_and_settle(page, url: str, ready_selector: str) -> None:
    """Load ``url`` and wait until ``ready_selector`` shows and Streamlit stopped running."""
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(ready_selector, timeout=RENDER_TIMEOUT_MS)
    page.wait_for_function(
        '() => !document.querySelector(\'[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]\')',
        timeout=RENDER_TIMEOUT_MS,
    )
    page.wait_for_timeout(800)  # let charts finish their entry transition
