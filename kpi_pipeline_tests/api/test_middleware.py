"""Request IDs, access lines, body limits, CORS and the last-resort 500
(kpi_pipeline/api/middleware.py and app.py). No query matters here, so SQLite serves."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import anyio
import pytest
from fastapi.testclient import TestClient

from kpi_pipeline import store
from kpi_pipeline.store import serving
from kpi_pipeline_tests.api.conftest import make_client

CHUNK = 64 * 1024
LIMIT = (1 << 20) + 400 * 10  # app.BODY_BYTES_BASE + BODY_BYTES_PER_POINT * the batch limit


@pytest.fixture
def app_client(sqlite_url: str) -> Iterator[TestClient]:
    engine = store.make_engine(sqlite_url)
    with make_client(engine, sqlite_url, api_max_batch_points=10) as client:
        yield client
    engine.dispose()


def test_every_response_carries_a_request_id_and_the_access_log_names_it(app_client, caplog):
    caplog.set_level(logging.INFO, logger="kpi_pipeline.api.access")

    first = app_client.get("/health/live")
    second = app_client.get("/v1/kpis?kpi=a", headers={"X-API-Key": ""})

    first_id, second_id = first.headers["x-request-id"], second.headers["x-request-id"]
    assert len(first_id) == 32 and first_id != second_id
    assert second.json()["request_id"] == second_id
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith(f"[{first_id}] GET /health/live 200 ") for line in lines)
    # The path is logged without its query string.
    assert any(line.startswith(f"[{second_id}] GET /v1/kpis 401 ") for line in lines)


@pytest.mark.parametrize(
    ("offered", "kept"),
    [("order-42.retry_1", True), ("x" * 65, False), ("has space", False), ("ümlaut".encode("latin-1"), False)],
)
def test_a_callers_request_id_is_kept_only_if_it_is_a_plain_token(app_client, offered, kept):
    response = app_client.get("/health/live", headers={"X-Request-ID": offered})

    assert (response.headers["x-request-id"] == offered) is kept


def test_a_body_larger_than_the_batch_limit_allows_is_413_before_it_is_read(app_client):
    too_big = b"x" * (LIMIT + 1)

    response = app_client.post("/v1/observations", content=too_big, headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def post_chunked(app, path: str, headers: list[tuple[bytes, bytes]], total: int):
    """POST ``total`` bytes to ``app`` in chunks without a Content-Length, as a client sending
    ``Transfer-Encoding: chunked`` does; returns the status, the body, and how many bytes the
    app read."""
    sent, answer = 0, {"body": b""}

    async def receive():
        nonlocal sent
        if sent >= total:
            return {"type": "http.disconnect"}
        sent += CHUNK
        return {"type": "http.request", "body": b"[" * CHUNK, "more_body": sent < total}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1),
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked"), *headers],
    }
    await app(scope, receive, send)
    return answer["status"], json.loads(answer["body"]), sent


@pytest.mark.parametrize("path", ["/v1/score", "/v1/observations"])
@pytest.mark.parametrize("key", [b"test-key-one", None], ids=["with key", "without key"])
def test_a_chunked_body_is_refused_once_it_passes_the_limit_not_read_to_the_end(app_client, path, key):
    headers = [(b"x-api-key", key)] if key else []

    status, body, read = anyio.run(post_chunked, app_client.app, path, headers, 100 << 20)

    assert status == 413
    assert body["error"] == "payload_too_large"
    assert body["message"] == f"request body larger than {LIMIT} bytes"
    assert read <= LIMIT + CHUNK


def test_an_unexpected_error_is_a_logged_500_with_the_request_id(app_client, monkeypatch, caplog):
    def broken(*_args, **_kwargs):
        raise RuntimeError("bug in a query")

    monkeypatch.setattr(serving, "latest_scores", broken)

    response = app_client.get("/v1/scores/latest")

    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal_error" and "bug" not in body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    failure = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert failure.getMessage() == f"[{body['request_id']}] unhandled error"
    assert "bug in a query" in caplog.text  # the traceback went to the log


def test_unknown_routes_and_methods_answer_in_the_error_shape(app_client):
    missing = app_client.get("/v2/nothing")
    wrong_method = app_client.delete("/v1/kpis")

    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405, "method_not_allowed")


def test_cors_is_off_by_default_and_allows_only_configured_origins(sqlite_url):
    preflight = {"Origin": "https://dash.example", "Access-Control-Request-Method": "GET"}
    engine = store.make_engine(sqlite_url)

    with make_client(engine, sqlite_url) as client:
        closed = client.options("/v1/kpis", headers=preflight)
    with make_client(engine, sqlite_url, api_cors_origins="https://dash.example") as client:
        allowed = client.options("/v1/kpis", headers=preflight)
        other = client.options("/v1/kpis", headers={**preflight, "Origin": "https://evil.test"})
        simple = client.get("/health/live", headers={"Origin": "https://dash.example"})
    engine.dispose()

    assert "access-control-allow-origin" not in closed.headers
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
    assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
    assert simple.headers["access-control-expose-headers"].lower() == "x-request-id"
