"""``/docs`` (Swagger UI) and ``/redoc`` render the API's operations in headless Chromium with
every request to another host refused: their scripts and styles come from the API itself.

Uses Debian's Chromium through Playwright, as the dashboard's browser test does (the same
helpers; skipped, with the reason, only where Chromium is not installed)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest
import uvicorn

from kpi_pipeline.api.app import create_app
from kpi_pipeline.config import Settings
from kpi_pipeline_tests.api.conftest import API_KEY
from kpi_pipeline_tests.dashboard import browser

pytestmark = pytest.mark.skipif(browser.chromium_missing() is not None, reason=browser.chromium_missing() or "")

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def operations(base_url: str) -> int:
    """Operations in the API's OpenAPI document (every route but the documentation's own)."""
    with urlopen(base_url + "/openapi.json") as response:
        paths = json.load(response)["paths"]
    return sum(method in HTTP_METHODS for item in paths.values() for method in item)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[str]:
    """The API on a free loopback port, over an empty SQLite database; yields its base URL."""
    database = tmp_path_factory.mktemp("docs") / "kpi.db"
    app = create_app(Settings(database_url=f"sqlite:///{database}", api_keys=API_KEY))
    port = browser.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + browser.STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def offline_page(served):
    """A page that may reach the API only: every other request is refused and recorded as
    (resource type, URL)."""
    refused: list[tuple[str, str]] = []
    local = urlsplit(served).netloc

    def only_local(route):
        if urlsplit(route.request.url).netloc == local:
            route.continue_()
        else:
            refused.append((route.request.resource_type, route.request.url))
            route.abort()

    with browser.browser_page() as page:
        page.route("**/*", only_local)
        yield page, refused


def test_swagger_ui_renders_every_operation_offline(served, offline_page):
    page, refused = offline_page

    page.goto(served + "/docs")
    page.wait_for_selector(".opblock", timeout=browser.RENDER_TIMEOUT_MS)

    assert page.locator(".opblock").count() == operations(served) >= 9
    assert page.locator(".opblock-summary-path[data-path='/v1/score']").count() == 1
    assert page.get_by_text("kpi-pipeline API", exact=False).first.is_visible()
    assert refused == []


def test_redoc_renders_the_operations_offline(served, offline_page):
    page, refused = offline_page

    page.goto(served + "/redoc")
    heading = page.get_by_role("heading", name="Score points in real time with the KPI's newest model")
    heading.wait_for(timeout=browser.RENDER_TIMEOUT_MS)

    assert heading.is_visible()
    # ReDoc's "powered by" footer fetches its logo from Redocly's site: a picture, not an asset
    # the page needs.
    assert {kind for kind, _url in refused} <= {"image"}
