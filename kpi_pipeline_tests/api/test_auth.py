"""API keys (kpi_pipeline/api/auth.py): who may read and who may write."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from kpi_pipeline.api import auth
from kpi_pipeline.api.auth import ApiKeys
from kpi_pipeline.config import Settings
from kpi_pipeline_tests.api.conftest import API_KEY, OTHER_KEY, Seeded, make_client

INGEST = {"observations": [{"kpi": "sales", "timestamp": "2030-01-01T00:00:00Z", "value": 1}]}


@pytest.fixture(scope="module")
def client(module_seeded: Seeded) -> Iterator[TestClient]:
    # The one write these tests make is the same row every time.
    with make_client(module_seeded.engine, module_seeded.url) as client:
        yield client


def post(client, headers):
    return client.post("/v1/observations", json=INGEST, headers=headers)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-API-Key": ""}, "missing API key"),
        ({"X-API-Key": "wrong"}, "invalid API key"),
        ({"X-API-Key": API_KEY + " "}, "invalid API key"),
        ({"X-API-Key": "", "Authorization": f"Basic {API_KEY}"}, "missing API key"),
        ({"X-API-Key": "", "Authorization": "Bearer wrong"}, "invalid API key"),
    ],
)
def test_writes_without_a_valid_key_are_401_json(client, headers, message):
    response = post(client, headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["error"] == "unauthorized" and message in body["message"]
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": API_KEY},
        {"X-API-Key": OTHER_KEY},
        {"X-API-Key": "", "Authorization": f"Bearer {API_KEY}"},
        {"X-API-Key": "", "Authorization": f"bearer {OTHER_KEY}"},
    ],
)
def test_any_configured_key_as_header_or_bearer_token_may_write(client, headers):
    assert post(client, headers).status_code == 200


def test_reads_need_a_key_when_keys_are_configured_but_health_does_not(client):
    assert client.get("/v1/kpis", headers={"X-API-Key": ""}).status_code == 401
    assert client.get("/v1/anomalies", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/v1/kpis").status_code == 200
    assert client.get("/health", headers={"X-API-Key": ""}).status_code == 200
    assert client.get("/openapi.json", headers={"X-API-Key": ""}).status_code == 200


def test_public_reads_open_the_gets_but_not_the_posts(module_seeded):
    with make_client(module_seeded.engine, module_seeded.url, api_public_reads=True) as client:
        assert client.get("/v1/kpis", headers={"X-API-Key": ""}).status_code == 200
        assert post(client, {"X-API-Key": ""}).status_code == 401


def test_without_configured_keys_reads_are_open_and_writes_refused(module_seeded):
    with make_client(module_seeded.engine, module_seeded.url, api_keys="") as client:
        read = client.get("/v1/scores/latest", headers={"X-API-Key": ""})
        write = post(client, {"X-API-Key": "anything"})

    assert read.status_code == 200
    assert write.status_code == 401 and "no API keys configured" in write.json()["message"]


def test_the_openapi_schema_declares_both_ways_to_send_a_key(client):
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]

    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "One of the keys in KPI_API_KEYS.",
    }
    assert schemes["HTTPBearer"]["scheme"] == "bearer"


def test_the_openapi_schema_requires_a_key_exactly_where_one_is_checked(module_seeded, client):
    either = [{"APIKeyHeader": []}, {"HTTPBearer": []}]

    def security(spec):
        return {
            (path, method): operation.get("security")
            for path, operations in spec["paths"].items()
            for method, operation in operations.items()
        }

    keyed = security(client.get("/openapi.json").json())
    with make_client(module_seeded.engine, module_seeded.url, api_public_reads=True) as public:
        opened = security(public.get("/openapi.json").json())

    assert keyed[("/v1/score", "post")] == either and keyed[("/v1/kpis", "get")] == either
    for (path, method), required in keyed.items():
        assert required == (None if path.startswith("/health") else either), (path, method)
        assert opened[path, method] == (either if method == "post" else None), (path, method)


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    compared, compare = [], hmac.compare_digest

    def spy(a, b):
        compared.append(b)
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = ApiKeys(SecretStr(f" {API_KEY} , ,{OTHER_KEY}"))

    assert keys.accepts(API_KEY) and keys.accepts(OTHER_KEY)
    assert not keys.accepts(API_KEY[:-1]) and not keys.accepts("")
    # Even when the first key matches, the second is compared too.
    assert compared[:2] == [API_KEY.encode(), OTHER_KEY.encode()]
    assert len(compared) == 8


def test_keys_never_appear_in_reprs_logs_or_responses(client, caplog):
    caplog.set_level(logging.DEBUG)

    response = post(client, {"X-API-Key": OTHER_KEY + "x"})
    post(client, {"X-API-Key": OTHER_KEY})

    settings = Settings(api_keys=f"{API_KEY},{OTHER_KEY}")
    texts = [repr(settings), repr(ApiKeys(settings.api_keys)), response.text, caplog.text]
    assert all(API_KEY not in text and OTHER_KEY not in text for text in texts)
    assert "POST /v1/observations 401" in caplog.text  # the access line was logged
