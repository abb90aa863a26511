"""Bad input of every class is a 422 with a readable message (kpi_pipeline/api/schemas.py and
the checks in routes.py), and never reaches the database."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from kpi_pipeline_tests.api.conftest import Seeded, make_client

MAX_POINTS = 5
MAX_DAYS = 30


@pytest.fixture(scope="module")
def client(module_seeded: Seeded) -> Iterator[TestClient]:
    # Refused requests write nothing, so the whole module shares one seeded database.
    settings = {"api_max_batch_points": MAX_POINTS, "api_max_range_days": MAX_DAYS}
    with make_client(module_seeded.engine, module_seeded.url, **settings) as client:
        yield client


def point(value: object = 1.0, timestamp: object = "2025-03-18T00:00:00Z", **extra) -> dict:
    return {"timestamp": timestamp, "value": value, **extra}


def score_body(**changes) -> dict:
    return {"kpi": "sales", "points": [point()]} | changes


def raw_json_score(value_literal: str) -> str:
    """A /v1/score body whose value is spelled as given (JSON has no NaN; Python writes it)."""
    return f'{{"kpi": "sales", "points": [{{"timestamp": "2025-03-18T00:00:00Z", "value": {value_literal}}}]}}'


def assert_readable_422(response, *where: str) -> dict:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_error"
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["details"], body
    for fragment in where:
        assert fragment in body["message"], body["message"]
    return body


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("NaN", "finite number"),
        ("Infinity", "finite number"),
        ("-Infinity", "finite number"),
        ('"12.5"', "valid number"),
        ('"abc"', "valid number"),
        ("true", "valid number"),
        ("null", "valid number"),
        ('{"v": 1}', "valid number"),
    ],
)
def test_score_values_must_be_finite_json_numbers(client, literal, message):
    response = client.post("/v1/score", content=raw_json_score(literal), headers={"Content-Type": "application/json"})

    assert_readable_422(response, "body.points.0.value", message)


@pytest.mark.parametrize(
    "timestamp",
    [
        "yesterday",
        "2025-13-01T00:00:00Z",
        "2025-02-30T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "",
        None,
        1741000000,
        "1741000000",
    ],
)
def test_score_timestamps_must_be_valid_times(client, timestamp):
    response = client.post("/v1/score", json=score_body(points=[point(timestamp=timestamp)]))

    assert_readable_422(response, "body.points.0.timestamp")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (score_body(extra=1), "body.extra: Extra inputs are not permitted"),
        (score_body(points=[point(unit="EUR")]), "body.points.0.unit"),
        ({"points": [point()]}, "body.kpi: Field required"),
        (score_body(kpi=""), "body.kpi"),
        (score_body(kpi="k" * 201), "body.kpi"),
        (score_body(points=[]), "body.points"),
        (score_body(points=[point()] * 2), "body.points.1.timestamp: duplicate timestamp"),
        (score_body(persist="maybe"), "body.persist"),
        (score_body(kpi="sa\x00les"), "body.kpi: Value error, text must not contain NUL"),
    ],
)
def test_score_requests_refuse_unknown_missing_and_inconsistent_fields(client, body, where):
    assert_readable_422(client.post("/v1/score", json=body), where)


def test_batches_over_the_limit_are_refused(client):
    points = [point(timestamp=f"2025-03-18T{hour:02d}:00:00Z") for hour in range(MAX_POINTS + 1)]
    rows = [{"kpi": "sales", **p} for p in points]

    scoring = client.post("/v1/score", json=score_body(points=points))
    ingestion = client.post("/v1/observations", json={"observations": rows})

    assert_readable_422(scoring, "body.points", f"more than the limit of {MAX_POINTS}")
    assert_readable_422(ingestion, "body.observations", f"more than the limit of {MAX_POINTS}")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"observations": [{"kpi": "sales", "timestamp": "2025-01-01", "value": 1, "x": 2}]}, "body.observations.0.x"),
        ({"observations": [{"kpi": "sales", "timestamp": "2025-01-01", "value": [1]}]}, "body.observations.0.value"),
        ({"observations": [{"kpi": "sales", "value": 1}]}, "body.observations.0.timestamp"),
        ({"observations": []}, "body.observations"),
        ({"rows": []}, "body.rows"),
        # A lone surrogate, as JSON escapes can spell it (the raw JSON text has \udc80).
        ('{"observations": [{"kpi": "s\\udc80", "timestamp": "2025-01-01", "value": 1}]}', "body.observations.0.kpi"),
        ({"observations": [{"kpi": "s", "timestamp": "2025-01-01", "value": "1\x00"}]}, "body.observations.0.value"),
    ],
)
def test_observation_batches_must_be_well_formed(client, body, where):
    if isinstance(body, str):
        response = client.post("/v1/observations", content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post("/v1/observations", json=body)

    assert_readable_422(response, where)


def test_malformed_json_is_422(client):
    response = client.post("/v1/score", content=b'{"kpi": ', headers={"Content-Type": "application/json"})

    assert_readable_422(response, "JSON")


@pytest.mark.parametrize(
    ("params", "where"),
    [
        (
            {"start": "2025-03-10T00:00:00Z", "end": "2025-03-01T00:00:00Z"},
            "query.end: end (2025-03-01T00:00:00+00:00) is before start",
        ),
        ({"start": "2025-01-01T00:00:00Z", "end": "2025-03-01T00:00:00Z"}, f"more than the maximum of {MAX_DAYS}"),
        ({"start": "last week"}, "query.start"),
        ({"start": "0.5"}, "query.start: Value error, expected an ISO 8601 time"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 10_001}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
    ],
)
def test_score_series_query_must_be_sane(client, params, where):
    assert_readable_422(client.get("/v1/kpis/sales/scores", params=params), where)


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"since": "2025-03-10T00:00:00Z", "until": "2025-03-01T00:00:00Z"}, "query.until"),
        ({"since": "2024-01-01T00:00:00Z", "until": "2025-03-01T00:00:00Z"}, "maximum of 30"),
        ({"min_severity": "severe"}, "query.min_severity"),
        ({"cursor": "not-a-cursor"}, "query.cursor: not a cursor this API issued"),
        ({"cursor": "WzEsMl0"}, "query.cursor"),  # valid base64 of [1,2], wrong types
        ({"limit": 1001}, "query.limit"),
    ],
)
def test_anomaly_query_must_be_sane(client, params, where):
    assert_readable_422(client.get("/v1/anomalies", params=params), where)


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/anomalies/sales/not-a-time/feedback", {"label": "true_positive"}, "path.ts"),
        ("/v1/anomalies/sales/2025-03-14T00:00:00Z/feedback", {"label": "maybe"}, "body.label"),
        ("/v1/anomalies/sales/2025-03-14T00:00:00Z/feedback", {"label": "true_positive", "by": "me"}, "body.by"),
    ],
)
def test_feedback_input_must_be_valid(client, path, body, where):
    assert_readable_422(client.post(path, json=body), where)


def test_kpi_names_in_paths_must_be_storable_text(client):
    response = client.get("/v1/kpis/sa%00les/scores")

    assert_readable_422(response, "path.kpi")


def test_too_many_kpis_in_one_query_are_refused(client):
    response = client.get("/v1/scores/latest", params={"kpi": [f"k{i}" for i in range(1001)]})

    assert_readable_422(response, "query.kpi")


def test_validation_messages_do_not_echo_the_input(client):
    secret = "s3cret-looking-value"
    response = client.post("/v1/score", json=score_body(points=[point(value=secret)]))

    assert secret not in json.dumps(assert_readable_422(response))


@pytest.mark.parametrize(
    ("content", "headers", "status", "where"),
    [
        (b"", {"Content-Type": "application/json"}, 422, "body: Field required"),
        (b'{"kpi": "sales", "points": []}', {"Content-Type": "text/plain"}, 422, "body"),
        (b'{"kpi": "sales", "points": []}', {}, 422, "body"),
        ('{"kpi": "s\u00e9"}'.encode("latin-1"), {"Content-Type": "application/json"}, 400, "error parsing the body"),
        (
            b'{"kpi": "sales", "points": [{"timestamp": "2025-03-18T00:00:00Z"}]}',
            {"Content-Type": "application/json; charset=utf-8"},
            422,
            "body.points.0.value",
        ),
        (
            b'{"kpi": "sales", "points": [{"timestamp": "2025-03-18T00:00:00Z"}]}',
            {"Content-Type": "application/vnd.api+json"},
            422,
            "body.points.0.value",
        ),
        # A byte order mark and UTF-16 are JSON to json.loads, which FastAPI uses.
        (
            b"\xef\xbb\xbf" + b'{"kpi": "sales", "points": [{"timestamp": "2025-03-18T00:00:00Z"}]}',
            {"Content-Type": "application/json"},
            422,
            "body.points.0.value",
        ),
        (
            '{"kpi": "sales", "points": [{"timestamp": "2025-03-18T00:00:00Z"}]}'.encode("utf-16"),
            {"Content-Type": "application/json"},
            422,
            "body.points.0.value",
        ),
        (b'{"kpi": ', {"Content-Type": "application/json"}, 422, "body.8: JSON decode error"),
        (
            b'{"kpi": "sales", "points": []}',
            {"Content-Type": "application/a/b+json"},
            422,
            "body: Input should be a valid dictionary or object to extract fields from",
        ),
    ],
)
def test_a_score_body_is_json_only_if_declared_so_and_readable(client, content, headers, status, where):
    response = client.post("/v1/score", content=content, headers=headers)

    assert response.status_code == status, response.text
    assert where in response.json()["message"]


DEPTH = 100_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/score", "[" * DEPTH + "]" * DEPTH),
        ("/v1/score", '{"kpi": "sales", "points": ' + "[" * DEPTH + "]" * DEPTH + "}"),
        ("/v1/observations", "[" * DEPTH + "]" * DEPTH),
    ],
    ids=["bare array", "nested in a field", "observations"],
)
def test_deeply_nested_json_is_a_client_error_not_a_crash(client, path, body):
    response = client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})

    assert response.status_code == 400, response.text
    assert response.json()["message"] == "There was an error parsing the body"
