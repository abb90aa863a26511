"""Regenerate the README's dashboard screenshots from a freshly seeded database.

``make screenshots`` runs ``python -m kpi_pipeline_tests.dashboard.screenshots --out
docs/screenshots``: it seeds a temporary SQLite database (``seed.py``), marks one anomaly as a
false alarm so every marker style shows, serves the dashboard and photographs the overview and
the KPI page in headless Chromium.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

from kpi_pipeline import store
from kpi_pipeline_tests.dashboard import browser, seed

SHOTS = {
    # name: (path, element that shows the page is drawn, viewport height)
    "overview": ("/", '[data-testid="stDataFrame"]', 760),
    "kpi": (f"/kpi?kpi={seed.NEWEST_ANOMALY[0]}", browser.PLOT_POINTS, 1280),
}
FALSE_ALARM = ("orders", seed.END - pd.Timedelta(hours=30))


def seed_showcase(url: str) -> None:
    engine = seed.seed_database(url)
    store.set_feedback(engine, *FALSE_ALARM, "false_positive", "promotion email went out late")
    engine.dispose()


def capture(base: str, out_dir: Path) -> dict[str, Path]:
    """Screenshot every page of ``SHOTS`` from the dashboard at ``base`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    with browser.browser_page() as page:
        for name, (path, ready, height) in SHOTS.items():
            page.set_viewport_size({"width": browser.VIEWPORT["width"], "height": height})
            browser.open_and_settle(page, base + path, ready)
            written[name] = out_dir / f"{name}.png"
            page.screenshot(path=str(written[name]))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    missing = browser.chromium_missing()
    if missing:
        sys.exit(f"cannot take screenshots: {missing}")
    with tempfile.TemporaryDirectory() as workdir:
        url = f"sqlite:///{Path(workdir) / 'kpi.db'}"
        seed_showcase(url)
        with browser.dashboard_server(url) as base:
            for name, path in capture(base, args.out).items():
                print(f"{name}: {path}")


if __name__ == "__main__":
    main()
