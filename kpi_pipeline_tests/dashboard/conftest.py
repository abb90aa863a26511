"""Run the dashboard's pages in-process with ``streamlit.testing.v1.AppTest``.

``open_page(url, page, **query)`` points the dashboard at a database (through the environment,
as ``kpi-pipeline dashboard`` does), runs the app, switches to ``views/<page>.py`` with the
query parameters and returns the ``AppTest``. Streamlit's caches and the settings are reset
after each test so no test sees another's database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from kpi_pipeline.config import get_settings
from kpi_pipeline.dashboard import data
from kpi_pipeline_tests.dashboard import seed
from kpi_pipeline_tests.dashboard.helpers import APP, assert_no_exception

RUN_TIMEOUT = 60

OpenPage = Callable[..., AppTest]


@pytest.fixture
def open_page(monkeypatch, tmp_path) -> Iterator[OpenPage]:
    opened: set[str] = set()

    def open_(url: str, page: str = "overview", backtest_dir: Path | None = None, **query: str) -> AppTest:
        monkeypatch.setenv("KPI_DATABASE_URL", url)
        opened.add(url)
        monkeypatch.setenv("KPI_BACKTEST_DIR", str(backtest_dir or tmp_path / "no-backtests"))
        get_settings.cache_clear()
        app = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT).run()
        if page != "overview" or query:
            app.switch_page(f"views/{page}.py")
            app.query_params.update(query)
            app.run()
        assert_no_exception(app)
        return app

    yield open_
    for url in opened:
        data.engine(url).dispose()  # the cached engine: close its pooled connections
    st.cache_data.clear()
    st.cache_resource.clear()
    get_settings.cache_clear()


@pytest.fixture
def seeded_pg(pg_url: str) -> str:
    """A PostgreSQL database holding the seed (``seed.KPIS``, 30 days, no trained models)."""
    seed.seed_database(pg_url).dispose()
    return pg_url


@pytest.fixture
def seeded_sqlite(sqlite_url: str) -> str:
    """A SQLite database holding the seed."""
    seed.seed_database(sqlite_url).dispose()
    return sqlite_url
