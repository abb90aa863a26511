"""The dashboard served by ``kpi-pipeline dashboard`` and loaded in headless Chromium.

Uses Debian's Chromium through Playwright (``scripts/ensure-chromium.sh``, run by ``make test``,
installs it); skipped, with the reason, only where it is not installed. Screenshots of every
page land in ``artifacts/dashboard/`` (git-ignored; ``KPI_TEST_ARTIFACTS`` moves them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kpi_pipeline.config import PROJECT_ROOT
from kpi_pipeline_tests.dashboard import browser, screenshots, seed

ARTIFACTS = Path(os.environ.get("KPI_TEST_ARTIFACTS", PROJECT_ROOT / "artifacts")) / "dashboard"

pytestmark = pytest.mark.skipif(browser.chromium_missing() is not None, reason=browser.chromium_missing() or "")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The dashboard on a free port, over a seeded SQLite database with one false alarm."""
    workdir = tmp_path_factory.mktemp("served")
    url = f"sqlite:///{workdir / 'kpi.db'}"
    screenshots.seed_showcase(url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser.dashboard_server(url, log=ARTIFACTS / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def page(served):
    with browser.browser_page() as opened:
        yield opened


def _no_streamlit_exception(page) -> None:
    shown = page.locator(browser.EXCEPTION)
    assert shown.count() == 0, shown.first.inner_text()


def test_overview_renders_every_kpi(served, page):
    browser.open_and_settle(page, served + "/", '[data-testid="stDataFrame"]')
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

    _no_streamlit_exception(page)
    assert page.get_by_role("heading", name="KPI overview").is_visible()
    grid = page.locator('[data-testid="stDataFrame"]')
    # The data grid draws on a canvas and mirrors its cells in an accessible table.
    cells = grid.locator("table").inner_text()
    assert all(kpi.name in cells for kpi in seed.KPIS)
    assert "anomalous · critical" in cells
    assert grid.locator("canvas").count() > 0


def test_kpi_page_draws_the_chart_with_its_anomalies(served, page):
    kpi = seed.NEWEST_ANOMALY[0]
    browser.open_and_settle(page, f"{served}/kpi?kpi={kpi}", browser.PLOT_POINTS)
    page.screenshot(path=str(ARTIFACTS / "kpi.png"), full_page=True)

    _no_streamlit_exception(page)
    plot = page.locator(".js-plotly-plot").first
    # The actual line is one SVG path through every hourly point of the default 14 days.
    lines = plot.locator(".scatterlayer .trace .js-line")
    longest = max(len(lines.nth(i).get_attribute("d") or "") for i in range(lines.count()))
    assert longest > 14 * 24 * 5
    # One marker per anomaly: critical, high (a false alarm here, drawn grey) and low.
    assert plot.locator(".scatterlayer .trace .points path").count() == 3
    legend = plot.locator(".legend").text_content()
    assert "critical" in legend and "false positive" in legend and "expected band" in legend


def test_model_page_renders(served, page):
    browser.open_and_settle(page, f"{served}/model?kpi=orders", '[data-testid="stDataFrame"]')
    page.screenshot(path=str(ARTIFACTS / "model.png"), full_page=True)

    _no_streamlit_exception(page)
    assert page.get_by_role("heading", name="Models of orders").is_visible()
