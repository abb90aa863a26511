"""``POST /v1/score`` answers every kind of request, good and bad, in the API's shapes: the key
check, the body, the scoring errors, a root path and CORS, an outage and a bug."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from kpi_pipeline import store
from kpi_pipeline.api import realtime
from kpi_pipeline.api.app import create_app
from kpi_pipeline.config import Settings
from kpi_pipeline_tests.api.conftest import API_KEY, OTHER_KEY, Seeded

MAX_POINTS = 3


def build(seeded_or_url: Seeded | str, root_path: str = "", **settings) -> TestClient:
    """A client of the API on a seeded database (or on ``url``)."""
    if isinstance(seeded_or_url, str):
        url, engine = seeded_or_url, store.make_engine(seeded_or_url)
    else:
        url, engine = seeded_or_url.url, seeded_or_url.engine
    options = {"api_keys": f"{API_KEY},{OTHER_KEY}", "api_max_batch_points": MAX_POINTS}
    app = create_app(Settings(database_url=url, **(options | settings)), engine=engine)
    return TestClient(app, raise_server_exceptions=False, root_path=root_path)


@pytest.fixture(scope="module")
def client(module_seeded: Seeded) -> Iterator[TestClient]:
    with build(module_seeded) as client:
        yield client


def send(client: TestClient, method: str, path: str, headers: dict, body: dict | bytes | None):
    content = body if isinstance(body, bytes) else None
    return client.request(
        method,
        path,
        headers=headers,
        follow_redirects=False,
        json=None if isinstance(body, bytes) else body,
        content=content,
    )


def point(hour: int, value: float = 100.0) -> dict:
    return {"timestamp": f"2025-03-18T{hour:02d}:00:00Z", "value": value}


KEY = {"X-API-Key": API_KEY}
REQUESTS = {  # case: (method, path, headers, body), the status and error code of the answer
    "scored": (("POST", "/v1/score", KEY, {"kpi": "sales", "points": [point(0), point(2, 1e6)]}), 200, None),
    "bearer key": (
        ("POST", "/v1/score", {"Authorization": f"Bearer {OTHER_KEY}"}, {"kpi": "sales", "points": [point(1)]}),
        200,
        None,
    ),
    "no key": (("POST", "/v1/score", {}, {"kpi": "sales", "points": [point(0)]}), 401, "unauthorized"),
    "wrong key": (("POST", "/v1/score", {"X-API-Key": "nope"}, {"kpi": "sales", "points": []}), 401, "unauthorized"),
    "other scheme": (("POST", "/v1/score", {"Authorization": f"Basic {API_KEY}"}, {}), 401, "unauthorized"),
    "unknown KPI": (("POST", "/v1/score", KEY, {"kpi": "nope", "points": [point(0)]}), 404, "not_found"),
    "no model": (("POST", "/v1/score", KEY, {"kpi": "orders", "points": [point(0)]}), 409, "no_model"),
    "invalid body": (("POST", "/v1/score", KEY, {"kpi": "sales", "points": [{"value": "x"}]}), 422, "validation_error"),
    "too many points": (
        ("POST", "/v1/score", KEY, {"kpi": "sales", "points": [point(h) for h in range(MAX_POINTS + 1)]}),
        422,
        "validation_error",
    ),
    "repeated time": (("POST", "/v1/score", KEY, {"kpi": "sales", "points": [point(0)] * 2}), 422, "validation_error"),
    "long ago": (
        ("POST", "/v1/score", KEY, {"kpi": "sales", "points": [{"timestamp": "2020-01-01", "value": 1.0}]}),
        200,
        None,
    ),
    "trailing slash": (("POST", "/v1/score/", KEY, {"kpi": "sales", "points": [point(0)]}), 307, None),
    "other method": (("GET", "/v1/score", KEY, None), 405, "method_not_allowed"),
    "not declared JSON": (
        ("POST", "/v1/score", {**KEY, "Content-Type": "text/plain"}, b'{"kpi": "sales", "points": []}'),
        422,
        "validation_error",
    ),
    "malformed JSON": (
        ("POST", "/v1/score", {**KEY, "Content-Type": "application/json"}, b'{"kpi": '),
        422,
        "validation_error",
    ),
    "empty body": (("POST", "/v1/score", KEY, b""), 422, "validation_error"),
    "not UTF-8": (
        ("POST", "/v1/score", {**KEY, "Content-Type": "application/json"}, '{"kpi": "\u00e9"}'.encode("latin-1")),
        400,
        "bad_request",
    ),
}


@pytest.mark.parametrize("case", REQUESTS)
def test_each_kind_of_request_gets_its_answer(client, case):
    (method, path, headers, body), status, error = REQUESTS[case]

    response = send(client, method, path, headers, body)

    assert response.status_code == status, response.text
    if error is not None:
        assert response.json()["error"] == error
        assert response.json()["request_id"] == response.headers["x-request-id"]


def test_an_outage_is_a_503_and_a_bug_a_500(module_seeded, monkeypatch):
    body = {"kpi": "sales", "points": [point(0)]}
    with build("postgresql+psycopg://postgres@127.0.0.1:1/closed") as client:
        outage = client.post("/v1/score", headers=KEY, json=body)

    def broken(*_args, **_kwargs):
        raise RuntimeError("bug in scoring")

    monkeypatch.setattr(realtime, "score_points", broken)
    with build(module_seeded) as client:
        bug = client.post("/v1/score", headers=KEY, json=body)

    assert (outage.status_code, outage.json()["error"]) == (503, "database_unavailable")
    assert (bug.status_code, bug.json()["error"]) == (500, "internal_error")
    assert "bug in scoring" not in bug.text


def test_behind_a_root_path_and_with_cors(module_seeded):
    body = {"kpi": "sales", "points": [point(4)]}
    origin = {"Origin": "https://dash.example"}
    with build(module_seeded, root_path="/api", api_cors_origins="https://dash.example") as client:
        keyed = [
            send(client, "POST", path, KEY | origin, body) for path in ("/v1/score", "/api/v1/score")
        ]  # without and with the root path
        unkeyed = send(client, "POST", "/api/v1/score", origin, body)

    for response in keyed:
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == "https://dash.example"
    assert keyed[0].json() == keyed[1].json()
    assert unkeyed.status_code == 401
    assert unkeyed.headers["access-control-allow-origin"] == "https://dash.example"


def test_without_configured_keys_the_write_is_refused(module_seeded):
    with build(module_seeded, api_keys="") as client:
        response = send(client, "POST", "/v1/score", KEY, {"kpi": "sales", "points": [point(0)]})

    assert response.status_code == 401
    assert "no API keys configured" in response.json()["message"]


def test_persisted_points_are_counted(seeded):
    with build(seeded) as client:
        first, again = (
            send(client, "POST", "/v1/score", KEY, {"kpi": "sales", "points": [point(5)], "persist": True})
            for _ in range(2)
        )

    assert [r.status_code for r in (first, again)] == [200, 200]
    assert first.json()["persisted"] == {"inserted": 1, "updated": 0, "unchanged": 0}
    assert again.json()["persisted"] == {"inserted": 0, "updated": 0, "unchanged": 1}
