"""``POST /v1/score`` is served by ``middleware.DirectRoutes``, ahead of FastAPI's routing, and
answers every request exactly as its FastAPI route does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from fastapi import BackgroundTasks, Depends, Request, Response
from fastapi.testclient import TestClient

from kpi_pipeline import pipeline, store
from kpi_pipeline.api import routes
from kpi_pipeline.api.app import create_app
from kpi_pipeline.api.auth import require_key
from kpi_pipeline.api.middleware import DirectRoutes
from kpi_pipeline.config import Settings
from kpi_pipeline_tests.api.conftest import API_KEY, OTHER_KEY, Seeded

MAX_POINTS = 3


def build(seeded_or_url: Seeded | str, direct: bool, root_path: str = "",
          **settings) -> TestClient:
    """A client of the API on a seeded database (or on ``url``), with or without
    ``DirectRoutes`` (without it, FastAPI's route serves ``POST /v1/score``)."""
    if isinstance(seeded_or_url, str):
        url, engine = seeded_or_url, store.make_engine(seeded_or_url)
    else:
        url, engine = seeded_or_url.url, seeded_or_url.engine
    options = {"api_keys": f"{API_KEY},{OTHER_KEY}", "api_max_batch_points": MAX_POINTS}
    settings = Settings(database_url=url, **(options | settings))
    app = create_app(settings, engine=engine)
    if not direct:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not DirectRoutes]
    return TestClient(app, raise_server_exceptions=False, root_path=root_path)


@pytest.fixture(scope="module")
def clients(module_seeded: Seeded) -> Iterator[tuple[TestClient, TestClient]]:
    with ExitStack() as stack:
        yield tuple(stack.enter_context(build(module_seeded, direct)) for direct in (True, False))


def answer(response) -> tuple:
    """What a caller sees, but the request ID and the date (new on every request)."""
    body = response.json() if response.content else None
    if isinstance(body, dict):
        body.pop("request_id", None)
    headers = sorted((name, value) for name, value in response.headers.multi_items()
                     if name not in ("x-request-id", "date"))
    return response.status_code, body, headers


def send(client: TestClient, method: str, path: str, headers: dict, body: dict | bytes | None):
    content = body if isinstance(body, bytes) else None
    return client.request(method, path, headers=headers, follow_redirects=False,
                          json=None if isinstance(body, bytes) else body, content=content)


def point(hour: int, value: float = 100.0) -> dict:
    return {"timestamp": f"2025-03-18T{hour:02d}:00:00Z", "value": value}


KEY = {"X-API-Key": API_KEY}
REQUESTS = {  # case: (method, path, headers, body), the status both answer
    "scored": (("POST", "/v1/score", KEY, {"kpi": "sales", "points": [point(0), point(2, 1e6)]}),
               200),
    "bearer key": (("POST", "/v1/score", {"Authorization": f"Bearer {OTHER_KEY}"},
                    {"kpi": "sales", "points": [point(1)]}), 200),
    "no key": (("POST", "/v1/score", {}, {"kpi": "sales", "points": [point(0)]}), 401),
    "wrong key": (("POST", "/v1/score", {"X-API-Key": "nope"}, {"kpi": "sales", "points": []}),
                  401),
    "other scheme": (("POST", "/v1/score", {"Authorization": f"Basic {API_KEY}"}, {}), 401),
    "unknown KPI": (("POST", "/v1/score", KEY, {"kpi": "nope", "points": [point(0)]}), 404),
    "no model": (("POST", "/v1/score", KEY, {"kpi": "orders", "points": [point(0)]}), 409),
    "invalid body": (("POST", "/v1/score", KEY, {"kpi": "sales", "points": [{"value": "x"}]}),
                     422),
    "too many points": (("POST", "/v1/score", KEY, {
        "kpi": "sales", "points": [point(h) for h in range(MAX_POINTS + 1)]}), 422),
    "repeated time": (("POST", "/v1/score", KEY, {"kpi": "sales", "points": [point(0)] * 2}),
                      422),
    "long ago": (("POST", "/v1/score", KEY,
                  {"kpi": "sales", "points": [{"timestamp": "2020-01-01", "value": 1.0}]}), 200),
    "trailing slash": (("POST", "/v1/score/", KEY, {"kpi": "sales", "points": [point(0)]}),
                       307),
    "other method": (("GET", "/v1/score", KEY, None), 405),
    "not declared JSON": (("POST", "/v1/score", {**KEY, "Content-Type": "text/plain"},
                           b'{"kpi": "sales", "points": []}'), 422),
    "malformed JSON": (("POST", "/v1/score", {**KEY, "Content-Type": "application/json"},
                        b'{"kpi": '), 422),
    "empty body": (("POST", "/v1/score", KEY, b""), 422),
    "not UTF-8": (("POST", "/v1/score", {**KEY, "Content-Type": "application/json"},
                   '{"kpi": "\u00e9"}'.encode("latin-1")), 400),
}


@pytest.mark.parametrize("case", REQUESTS)
def test_the_direct_route_answers_as_fastapis_route_does(clients, case):
    (method, path, headers, body), status = REQUESTS[case]

    direct, routed = (send(client, method, path, headers, body) for client in clients)

    assert direct.status_code == status, direct.text
    assert answer(direct) == answer(routed)


def test_the_direct_route_answers_errors_as_fastapis_route_does(module_seeded, monkeypatch):
    """A database outage is a 503 and a bug a 500, with the same bodies either way."""
    closed = "postgresql+psycopg://postgres@127.0.0.1:1/closed"
    body = {"kpi": "sales", "points": [point(0)]}
    with build(closed, True) as direct, build(closed, False) as routed:
        outage = [client.post("/v1/score", headers=KEY, json=body) for client in (direct, routed)]

    def broken(*_args, **_kwargs):
        raise RuntimeError("bug in scoring")

    monkeypatch.setattr(pipeline, "score_points", broken)
    with build(module_seeded, True) as direct, build(module_seeded, False) as routed:
        bug = [client.post("/v1/score", headers=KEY, json=body) for client in (direct, routed)]

    assert [r.status_code for r in outage] == [503, 503]
    assert answer(outage[0]) == answer(outage[1])
    assert [r.status_code for r in bug] == [500, 500]
    assert answer(bug[0]) == answer(bug[1])


def test_the_direct_route_is_the_one_that_answers(clients):
    """FastAPI's dependency overrides do not reach it: without a key, the route with its key
    check overridden lets the request through, the direct route refuses it."""
    direct, routed = clients
    body = {"kpi": "sales", "points": [point(3)]}
    for client in clients:
        client.app.dependency_overrides[require_key] = lambda: None
    try:
        answers = [client.post("/v1/score", json=body).status_code for client in (direct, routed)]
    finally:
        for client in clients:
            client.app.dependency_overrides.clear()

    assert answers == [401, 200]


def test_behind_a_root_path_and_with_cors_the_answers_are_the_same(module_seeded):
    body = {"kpi": "sales", "points": [point(4)]}
    origin = {**KEY, "Origin": "https://dash.example"}
    answers = []
    for direct in (True, False):
        with build(module_seeded, direct, root_path="/api",
                   api_cors_origins="https://dash.example") as client:
            client.app.dependency_overrides[require_key] = lambda: None  # see below
            answers.append([
                send(client, "POST", path, origin, body)
                for path in ("/v1/score", "/api/v1/score")  # without and with the root path
            ] + [
                send(client, "POST", path, {"Origin": "https://dash.example"}, body)
                for path in ("/v1/score", "/api/v1/score")
            ])

    direct, routed = answers
    for keyed_direct, keyed_routed in zip(direct[:2], routed[:2]):
        assert keyed_direct.status_code == 200
        assert keyed_direct.headers["access-control-allow-origin"] == "https://dash.example"
        assert answer(keyed_direct) == answer(keyed_routed)
    # Served directly under the root path too: the override does not reach it.
    assert [r.status_code for r in direct[2:]] == [401, 401]
    assert [r.status_code for r in routed[2:]] == [200, 200]


def test_without_configured_keys_both_refuse_the_write(module_seeded):
    body = {"kpi": "sales", "points": [point(0)]}
    answers = []
    for direct in (True, False):
        with build(module_seeded, direct, api_keys="") as client:
            answers.append(send(client, "POST", "/v1/score", KEY, body))

    assert answers[0].status_code == 401
    assert "no API keys configured" in answers[0].json()["message"]
    assert answer(answers[0]) == answer(answers[1])


def test_persisted_points_are_counted_the_same(seeded):
    answers = []
    for direct, hour in ((True, 5), (False, 6)):
        with build(seeded, direct) as client:
            answers.append(send(client, "POST", "/v1/score", KEY,
                                {"kpi": "sales", "points": [point(hour)], "persist": True}))

    assert [r.status_code for r in answers] == [200, 200]
    assert [r.json()["persisted"] for r in answers] == [
        {"inserted": 1, "updated": 0, "unchanged": 0}
    ] * 2


def test_direct_writes_are_their_routes_endpoints_with_nothing_for_fastapi_to_solve(
    monkeypatch,
):
    """``direct_writes`` refuses an operation whose route would run something the direct path
    does not: another endpoint, parameters or dependencies of its own."""
    assert routes.direct_writes() == {("POST", "/v1/score"): routes.score}

    for wrong in ({("POST", "/v1/score"): routes.ingest},
                  {("POST", "/v1/observations"): routes.ingest},
                  {("POST", "/v1/nothing"): routes.score}):
        monkeypatch.setattr(routes, "DIRECT_WRITES", wrong)
        with pytest.raises(RuntimeError):
            routes.direct_writes()


def _sync(request: Request) -> Response: ...
async def _background(request: Request, tasks: BackgroundTasks) -> Response: ...
async def _response(request: Request, response: Response) -> Response: ...
async def _plain(request: Request) -> Response: ...


@pytest.mark.parametrize(
    ("endpoint", "options"),
    [(_sync, {}), (_background, {}), (_response, {}), (_plain, {"max_body_size": 10}),
     (_plain, {"dependencies": [Depends(require_key)]})],
)
def test_direct_writes_refuse_what_fastapi_would_do_around_an_endpoint(monkeypatch, endpoint,
                                                                       options):
    monkeypatch.setattr(routes.writes, "routes", list(routes.writes.routes))  # restored after
    routes.writes.add_api_route("/direct-test", endpoint, methods=["POST"], **options)
    monkeypatch.setattr(routes, "DIRECT_WRITES", {("POST", "/v1/direct-test"): endpoint})

    with pytest.raises(RuntimeError, match="cannot be served directly"):
        routes.direct_writes()
    if not options:  # the same endpoint shape, but async and taking the request only: fine
        routes.writes.add_api_route("/direct-ok", _plain, methods=["POST"])
        monkeypatch.setattr(routes, "DIRECT_WRITES", {("POST", "/v1/direct-ok"): _plain})
        assert routes.direct_writes() == {("POST", "/v1/direct-ok"): _plain}
