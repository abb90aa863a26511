"""The API on each Postgres driver SQLAlchemy offers for ``postgresql+<driver>://`` URLs that
the project supports: psycopg 3 (what a bare ``postgresql://`` means) and psycopg2 (the driver
dagster-postgres installs, and the one many existing URLs name)."""

from __future__ import annotations

import sqlalchemy as sa

from kpi_pipeline import store
from kpi_pipeline_tests.api.conftest import Seeded, make_client

READS = [
    "/health",
    "/v1/kpis",
    "/v1/scores/latest",
    "/v1/scores/latest?kpi=sales",
    "/v1/kpis/sales/scores?limit=50",
    "/v1/anomalies",
]


def answers(url: str) -> dict[str, object]:
    engine = store.make_engine(url)
    try:
        with make_client(engine, url) as client:
            found = {}
            for path in READS:
                response = client.get(path)
                assert response.status_code == 200, (path, response.text)
                body = response.json()
                if path == "/health":  # changes with every call
                    body.pop("latest_score_age_seconds")
                found[path] = body
            return found
    finally:
        engine.dispose()


def test_reads_answer_alike_on_psycopg2_and_psycopg(module_seeded: Seeded):
    psycopg2_url = sa.make_url(module_seeded.url).set(drivername="postgresql+psycopg2")

    on_psycopg2 = answers(psycopg2_url.render_as_string(hide_password=False))

    assert on_psycopg2 == answers(module_seeded.url)


def test_writes_and_scoring_work_on_psycopg2(seeded: Seeded):
    url = sa.make_url(seeded.url).set(drivername="postgresql+psycopg2")
    url = url.render_as_string(hide_password=False)
    engine = store.make_engine(url)
    rows = [{"kpi": "visits", "timestamp": f"2025-03-01T0{hour}:00:00Z", "value": hour} for hour in range(3)]
    point = {"timestamp": "2025-03-18T00:00:00Z", "value": 100.0}
    try:
        with make_client(engine, url) as client:
            ingested = client.post("/v1/observations", json={"observations": rows})
            scored = client.post("/v1/score", json={"kpi": "sales", "points": [point], "persist": True})
    finally:
        engine.dispose()

    assert ingested.status_code == 200, ingested.text
    assert ingested.json()["inserted"] == 3
    assert scored.status_code == 200, scored.text
    assert scored.json()["persisted"]["inserted"] == 1
    assert len(store.load_observations(seeded.engine, ["visits"])) == 3
