"""Every endpoint (kpi_pipeline/api/routes.py) on real Postgres, seeded with a trained model
and the pipeline's own scores.

Tests that only read share one seeded database (``reader``, ``module_seeded``); tests that
write get their own (``client``, ``seeded``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from kpi_pipeline import derived, pipeline, store
from kpi_pipeline.api import routes
from kpi_pipeline.api.schemas import LatestScores, ScoreSeries
from kpi_pipeline.store import serving
from kpi_pipeline_tests.api.conftest import HOURS, TRAIN_HOURS, VERSION, Seeded, make_client

HOUR = pd.Timedelta(hours=1)


@pytest.fixture(scope="module")
def reader(module_seeded: Seeded) -> Iterator[TestClient]:
    with make_client(module_seeded.engine, module_seeded.url) as client:
        yield client


def iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- health ---------------------------------------------------------------------------------


def test_health_reports_the_database_and_the_age_of_the_latest_score(reader, module_seeded):
    body = reader.get("/health", headers={"X-API-Key": ""}).json()

    assert body["status"] == body["database"] == "ok"
    assert body["scored_kpis"] == 1
    assert pd.Timestamp(body["latest_score_ts"]) == module_seeded.ts[-1]
    scored_at = store.load_scores(module_seeded.engine, ["sales"])["scored_at"].max()
    assert pd.Timestamp(body["latest_scored_at"]) == scored_at
    assert 0 <= body["latest_score_age_seconds"] < 600


def test_health_reaches_the_database_every_time_but_rereads_freshness_only_now_and_then(module_seeded, monkeypatch):
    reads, read = [], serving.score_freshness

    def counted(engine):
        reads.append(engine)
        return read(engine)

    def unreachable(_engine):
        raise sa.exc.OperationalError("SELECT 1", {}, OSError("connection refused"))

    monkeypatch.setattr(serving, "score_freshness", counted)
    with make_client(module_seeded.engine, module_seeded.url) as client:
        probe = client.app.state.api.freshness
        first, again = client.get("/health"), client.get("/health")
        assert len(reads) == 1 and first.json() == again.json() | {
            "latest_score_age_seconds": first.json()["latest_score_age_seconds"]
        }
        probe.ttl = 0
        client.get("/health")
        assert len(reads) == 2
        probe.ttl = 60
        monkeypatch.setattr(serving, "ping", unreachable)
        assert client.get("/health").status_code == 503
        assert len(reads) == 2


def test_health_is_503_when_the_database_does_not_answer_in_time(module_seeded, monkeypatch):
    monkeypatch.setattr(routes, "HEALTH_TIMEOUT_S", 0.05)
    monkeypatch.setattr(serving, "score_freshness", lambda engine: time.sleep(0.5))

    with make_client(module_seeded.engine, module_seeded.url) as client:
        response = client.get("/health")

    assert response.status_code == 503
    assert response.json()["message"] == "the database did not answer within 0.05 s"


def test_health_is_503_when_the_database_is_unreachable():
    port = closed_port()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/kpi"

    with make_client(store.make_engine(url), url) as client:
        health = client.get("/health")
        scores = client.get("/v1/scores/latest")
        series = client.get("/v1/kpis/sales/scores")
        live = client.get("/health/live")

    assert health.status_code == 503
    assert health.json() == {
        "status": "unavailable",
        "database": "unreachable",
        "message": "the database is unreachable",
    }
    assert scores.status_code == series.status_code == 503
    assert scores.json()["error"] == series.json()["error"] == "database_unavailable"
    assert str(port) not in scores.text  # the driver's message stays in the log
    assert live.status_code == 200


# -- reads ----------------------------------------------------------------------------------


def test_kpis_lists_latest_value_score_anomaly_state_and_model(reader, module_seeded):
    kpis = {entry["kpi"]: entry for entry in reader.get("/v1/kpis").json()["kpis"]}

    assert list(kpis) == ["orders", "sales"]
    sales = kpis["sales"]
    assert sales["latest_observation"] == {
        "timestamp": iso(module_seeded.ts[-1]),
        "value": pytest.approx(module_seeded.values[-1]),
    }
    last_score = store.load_scores(module_seeded.engine, ["sales"]).iloc[-1]
    assert sales["latest_score"]["timestamp"] == iso(last_score["ts"])
    assert sales["latest_score"]["score"] == pytest.approx(last_score["score"])
    assert sales["is_anomalous"] is bool(last_score["is_anomaly"]) is False
    assert sales["model"]["version"] == VERSION
    assert sales["model"]["train_end"] == iso(module_seeded.ts[TRAIN_HOURS - 1])
    orders = kpis["orders"]
    assert orders["latest_score"] is None and orders["model"] is None
    assert orders["is_anomalous"] is False and orders["latest_observation"] is not None


def test_kpi_is_anomalous_when_its_latest_point_is(client, seeded):
    store.upsert_scores(
        seeded.engine,
        pd.DataFrame(
            {
                "kpi": ["orders"],
                "ts": [seeded.ts[-1]],
                "value": [1.0],
                "score": [0.9],
                "is_anomaly": [True],
                "severity": ["critical"],
            }
        ),
    )

    kpis = {entry["kpi"]: entry for entry in client.get("/v1/kpis").json()["kpis"]}

    assert kpis["orders"]["is_anomalous"] is True
    assert kpis["orders"]["latest_score"]["severity"] == "critical"


def test_latest_scores_per_kpi_and_the_requested_kpis_without_scores(reader, module_seeded):
    everything = reader.get("/v1/scores/latest").json()
    some = reader.get("/v1/scores/latest", params={"kpi": ["sales", "nope"]}).json()

    stored = store.load_scores(module_seeded.engine, ["sales"]).iloc[-1]
    assert [score["kpi"] for score in everything["scores"]] == ["sales"]
    latest = some["scores"][0]
    assert latest["timestamp"] == iso(stored["ts"])
    assert latest["value"] == pytest.approx(stored["value"])
    assert latest["expected"] == pytest.approx(stored["expected"])
    assert latest["model_version"] == VERSION
    assert some["missing"] == ["nope"] and everything["missing"] == []


def test_latest_scores_from_the_snapshot_are_what_the_database_and_the_model_give(reader, module_seeded):
    queries = [{}, {"kpi": ["sales", "nope", "sales"]}, {"kpi": ["orders"]}]
    with make_client(module_seeded.engine, api_latest_max_age=0) as uncached:
        for params in queries:
            served = reader.get("/v1/scores/latest", params=params)
            direct = uncached.get("/v1/scores/latest", params=params)
            kpis = params.get("kpi")
            rows = serving.latest_scores(module_seeded.engine, kpis)
            missing = sorted(set(kpis or ()) - {row["kpi"] for row in rows})
            modelled = LatestScores.model_validate({"scores": rows, "missing": missing})
            assert served.content == direct.content
            assert served.json() == modelled.model_dump(mode="json")
            assert served.headers["content-type"] == "application/json"


def test_new_scores_are_served_once_the_snapshot_bound_has_passed(seeded):
    newer = seeded.ts[-1] + HOUR
    fresh, slow = 0.3, 600.0
    with (
        make_client(seeded.engine, api_latest_max_age=fresh) as client,
        make_client(seeded.engine, api_latest_max_age=slow) as cached,
    ):

        def latest(on: TestClient) -> str:
            return on.get("/v1/scores/latest", params={"kpi": "sales"}).json()["scores"][0]["timestamp"]

        before = latest(client)
        assert latest(cached) == before == iso(seeded.ts[-1])
        landed = time.monotonic()
        store.upsert_scores(
            seeded.engine,
            pd.DataFrame({"kpi": ["sales"], "ts": [newer], "value": [1.0], "score": [0.1], "is_anomaly": [False]}),
        )

        assert latest(cached) == before  # served from memory: the bound is not over yet
        time.sleep(max(0.0, landed + fresh - time.monotonic()))
        assert latest(client) == iso(newer)


def test_score_series_is_oldest_first_and_matches_the_store(reader, module_seeded):
    stored = store.load_scores(module_seeded.engine, ["sales"])

    body = reader.get("/v1/kpis/sales/scores").json()

    rows, truncated = serving.score_series(module_seeded.engine, "sales")
    modelled = ScoreSeries.model_validate({"kpi": "sales", "points": rows, "truncated": truncated})
    assert body == modelled.model_dump(mode="json")
    assert body["kpi"] == "sales" and body["truncated"] is False
    points = body["points"]
    assert [point["timestamp"] for point in points] == [iso(ts) for ts in stored["ts"]]
    for point, (_, row) in zip(points, stored.iterrows(), strict=True):
        for name in ("value", "expected", "lower", "upper", "score"):
            assert point[name] == pytest.approx(row[name])
        assert point["is_anomaly"] == row["is_anomaly"]
        assert point["severity"] == (None if pd.isna(row["severity"]) else row["severity"])


def test_score_series_window_and_limit(reader, module_seeded):
    start, end = module_seeded.ts[TRAIN_HOURS + 10], module_seeded.ts[TRAIN_HOURS + 19]

    window = reader.get("/v1/kpis/sales/scores", params={"start": iso(start), "end": iso(end)}).json()
    newest = reader.get("/v1/kpis/sales/scores", params={"start": iso(start), "end": iso(end), "limit": 3}).json()

    assert [p["timestamp"] for p in window["points"]] == [
        iso(ts) for ts in module_seeded.ts[TRAIN_HOURS + 10 : TRAIN_HOURS + 20]
    ]
    assert [p["timestamp"] for p in newest["points"]] == [
        iso(ts) for ts in module_seeded.ts[TRAIN_HOURS + 17 : TRAIN_HOURS + 20]
    ]
    assert window["truncated"] is False and newest["truncated"] is True


def test_score_series_of_an_unknown_kpi_is_404_and_of_an_unscored_one_is_empty(reader):
    unknown = reader.get("/v1/kpis/nope/scores")
    unscored = reader.get("/v1/kpis/orders/scores")

    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found" and "nope" in unknown.json()["message"]
    assert unscored.status_code == 200 and unscored.json()["points"] == []


def test_anomaly_pages_walk_every_anomaly_once_newest_first(reader, module_seeded):
    seen, cursor = [], None
    for _ in range(10):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = reader.get("/v1/anomalies", params=params).json()
        seen += page["anomalies"]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert [anomaly["timestamp"] for anomaly in seen] == [iso(ts) for ts in sorted(module_seeded.spikes, reverse=True)]
    first = seen[0]
    assert first["kpi"] == "sales" and first["severity"] in store.SEVERITIES
    assert first["event_id"] == f"sales@{module_seeded.spikes[-1].isoformat()}"
    assert first["feedback"] is None


def test_anomaly_filters(client, seeded):
    minor = seeded.ts[-1]
    store.upsert_scores(
        seeded.engine,
        pd.DataFrame(
            {
                "kpi": ["orders"],
                "ts": [minor],
                "value": [1.0],
                "score": [0.55],
                "is_anomaly": [True],
                "severity": ["low"],
            }
        ),
    )

    def timestamps(**params):
        response = client.get("/v1/anomalies", params=params)
        assert response.status_code == 200, response.text
        return [anomaly["timestamp"] for anomaly in response.json()["anomalies"]]

    spikes = [iso(ts) for ts in sorted(seeded.spikes, reverse=True)]
    assert timestamps() == [iso(minor), *spikes]
    assert timestamps(kpi="orders") == [iso(minor)]
    assert timestamps(kpi=["sales", "orders"]) == [iso(minor), *spikes]
    assert timestamps(min_severity="medium") == spikes
    assert timestamps(since=spikes[1]) == [iso(minor), *spikes[:2]]
    assert timestamps(until=spikes[1], kpi="sales") == spikes[1:]


def test_outages_are_apart_from_anomalies_and_an_ongoing_one_is_listed(client, seeded):
    """An outage's score (flagged ``gap``) is ``kind: outage`` and filtered apart; ``/v1/outages``
    lists stretches of missing data, a KPI that stopped reporting as ongoing (end null)."""
    gap_at = seeded.ts[-1]
    store.upsert_scores(
        seeded.engine,
        pd.DataFrame(
            {"kpi": ["orders"], "ts": [gap_at], "value": [None], "score": [0.7], "is_anomaly": [True]}
            | {"severity": ["high"], "flagged_by": ["gap"]}
        ),
    )
    every = client.get("/v1/anomalies").json()["anomalies"]
    assert {(a["kpi"], a["kind"]) for a in every} == {("orders", "outage"), ("sales", "anomaly")}
    outages = client.get("/v1/anomalies", params={"kind": "outage"}).json()["anomalies"]
    assert [(a["kpi"], a["timestamp"], a["value"]) for a in outages] == [("orders", iso(gap_at), None)]
    anomalies = client.get("/v1/anomalies", params={"kind": "anomaly"}).json()["anomalies"]
    assert {a["kpi"] for a in anomalies} == {"sales"} and len(anomalies) == len(seeded.spikes)
    assert client.get("/v1/anomalies", params={"kind": "gap"}).status_code == 422

    # A KPI that reported until 10 hours ago and stopped: an ongoing outage, counted up to now.
    now = pd.Timestamp.now("UTC").floor("h")
    last = now - 10 * HOUR
    ts = pd.date_range(last - 48 * HOUR, last, freq="h")
    store.upsert_observations(seeded.engine, pd.DataFrame({"kpi": "signups", "ts": ts, "value": 5.0}), "test")
    derived.clean_new_observations(seeded.engine)
    body = client.get("/v1/outages", params={"kpi": "signups"}).json()
    [outage] = body["outages"]
    assert (outage["kpi"], outage["start"], outage["end"], outage["ongoing"]) == (
        "signups",
        iso(last + HOUR),
        None,
        True,
    )
    assert outage["missing_points"] >= 10 and body["truncated"] is False
    assert client.get("/v1/outages", params={"kpi": "signups", "limit": 0}).status_code == 422


# -- writes ---------------------------------------------------------------------------------


def test_observations_land_and_bad_rows_are_rejected_with_reasons(client, seeded):
    after = seeded.ts[-1] + HOUR
    rows = [
        {"kpi": "sales", "timestamp": iso(after), "value": 101.5},
        {"kpi": "sales", "timestamp": "2025-03-17 01:00:00", "value": "102"},
        {"kpi": "sales", "timestamp": "yesterday", "value": 1.0},
        {"kpi": "sales", "timestamp": iso(after + 2 * HOUR), "value": "n/a"},
        {"kpi": "", "timestamp": iso(after), "value": 1.0},
        {"kpi": "orders", "timestamp": iso(seeded.ts[0]), "value": None},
    ]

    body = client.post("/v1/observations", json={"observations": rows, "source": "shop"}).json()

    assert (body["accepted"], body["inserted"], body["rejected"]) == (2, 2, 4)
    assert body["accepted_rows"] == [1, 2]
    assert [(r["row"], r["reason"]) for r in body["rejections"]] == [
        (3, "unparsable timestamp 'yesterday'"),
        (4, "non-numeric value 'n/a'"),
        (5, "empty KPI name"),
        (6, "empty value"),
    ]
    assert body["rejections"][1]["raw"] == {"kpi": "sales", "timestamp": iso(after + 2 * HOUR), "value": "n/a"}
    stored = store.load_observations(seeded.engine, ["sales"], since=after)
    assert stored["value"].tolist() == [101.5, 102.0]
    assert store.table_counts(seeded.engine)["rejected_observations"] == 4

    again = client.post("/v1/observations", json={"observations": rows[:2]}).json()
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 2)


def test_clients_racing_over_the_same_keys_report_each_insert_once(client, seeded):
    """20 clients post the same 100 new observations at once: each key is reported inserted by
    exactly one of them."""
    rows = [{"kpi": "visits", "timestamp": iso(seeded.ts[0] + hour * HOUR), "value": 1.0} for hour in range(100)]
    start = threading.Barrier(20)

    def post(_client_number: int) -> dict:
        start.wait()
        return client.post("/v1/observations", json={"observations": rows}).json()

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))

    assert sum(answer["inserted"] for answer in answers) == 100
    assert sum(answer["unchanged"] for answer in answers) == 19 * 100
    assert len(store.load_observations(seeded.engine, ["visits"])) == 100


def test_realtime_scores_equal_what_the_pipeline_stores_for_the_same_points(client, seeded):
    after = seeded.ts[-1] + HOUR
    points = [
        {"timestamp": iso(after + 2 * HOUR), "value": 100.0},  # any order is fine
        {"timestamp": iso(after), "value": float(seeded.values[-24])},
        {"timestamp": iso(after + HOUR), "value": 900.0},
    ]

    response = client.post("/v1/score", json={"kpi": "sales", "points": points})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kpi"] == "sales" and body["model_version"] == VERSION
    assert body["persisted"] is None
    assert [p["timestamp"] for p in body["points"]] == [iso(after + h * HOUR) for h in range(3)]
    normal, spike = body["points"][:2]
    assert not normal["is_anomaly"] and normal["lower"] < normal["value"] < normal["upper"]
    assert spike["is_anomaly"] and spike["severity"] in store.SEVERITIES
    assert spike["value"] > spike["upper"] and spike["score"] >= 0.5
    assert store.load_observations(seeded.engine, ["sales"], since=after).empty

    # The same points through ingestion and the pipeline's scoring step.
    observed = pd.DataFrame(points).rename(columns={"timestamp": "ts"}).assign(kpi="sales")
    store.upsert_observations(seeded.engine, observed, "test")
    pipeline.score_new_points(seeded.engine, pipeline.load_cleaned(seeded.engine)[0])
    stored = store.load_scores(seeded.engine, ["sales"], since=after)
    assert len(stored) == 3
    for point, (_, row) in zip(body["points"], stored.iterrows(), strict=True):
        for name in ("value", "expected", "lower", "upper", "score"):
            assert point[name] == pytest.approx(row[name], rel=1e-9), name
        assert (point["is_anomaly"], point["severity"], point["flagged_by"]) == (
            row["is_anomaly"],
            None if pd.isna(row["severity"]) else row["severity"],
            None if pd.isna(row["flagged_by"]) else row["flagged_by"],
        )


def test_score_with_persist_also_ingests_the_points(client, seeded):
    after = seeded.ts[-1] + HOUR
    request = {"kpi": "sales", "points": [{"timestamp": iso(after), "value": 99.0}], "persist": True}

    body = client.post("/v1/score", json=request).json()

    assert body["persisted"] == {"inserted": 1, "updated": 0, "unchanged": 0}
    stored = store.load_observations(seeded.engine, ["sales"], since=after)
    assert stored["value"].tolist() == [99.0]


def test_scoring_an_unknown_kpi_is_404_and_a_kpi_without_model_409(reader):
    point = [{"timestamp": "2025-03-20T00:00:00Z", "value": 1.0}]

    unknown = reader.post("/v1/score", json={"kpi": "nope", "points": point})
    unmodelled = reader.post("/v1/score", json={"kpi": "orders", "points": point})

    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    assert unmodelled.status_code == 409
    assert unmodelled.json()["error"] == "no_model"
    assert "no trained model" in unmodelled.json()["message"]


def test_feedback_labels_a_scored_point_like_the_cli(client, seeded):
    spike = seeded.spikes[0]

    response = client.post(
        f"/v1/anomalies/sales/{iso(spike)}/feedback",
        json={"label": "false_positive", "note": "promo day"},
    )

    assert response.status_code == 200
    assert response.json() == {"kpi": "sales", "timestamp": iso(spike), "label": "false_positive", "note": "promo day"}
    flagged = store.load_anomalies(seeded.engine).set_index("ts")
    assert flagged.loc[spike, "feedback"] == "false_positive"
    assert flagged.loc[spike, "feedback_note"] == "promo day"
    listed = client.get("/v1/anomalies", params={"until": iso(spike)}).json()["anomalies"]
    assert listed[0]["feedback"] == "false_positive"
    # An offset is the same instant: the label is replaced, not duplicated.
    local = (spike.tz_convert("Europe/Berlin")).isoformat().replace("+", "%2B")
    client.post(f"/v1/anomalies/sales/{local}/feedback", json={"label": "true_positive"})
    assert store.load_anomalies(seeded.engine).set_index("ts").loc[spike, "feedback"] == ("true_positive")
    assert store.table_counts(seeded.engine)["anomaly_feedback"] == 1


def test_feedback_on_a_point_that_was_not_scored_is_404(reader, module_seeded):
    unscored = reader.post(f"/v1/anomalies/sales/{iso(module_seeded.ts[0])}/feedback", json={"label": "true_positive"})
    unknown = reader.post(f"/v1/anomalies/nope/{iso(module_seeded.ts[-1])}/feedback", json={"label": "true_positive"})

    assert unscored.status_code == unknown.status_code == 404
    assert store.table_counts(module_seeded.engine)["anomaly_feedback"] == 0


def test_feedback_on_a_point_that_is_not_an_anomaly_is_refused(client, seeded):
    calm = store.load_scores(seeded.engine, ["sales"]).query("not is_anomaly")["ts"].iloc[0]

    response = client.post(f"/v1/anomalies/sales/{iso(calm)}/feedback", json={"label": "false_positive"})

    assert response.status_code == 409, response.text
    assert response.json()["error"] == "not_an_anomaly"
    assert "is not an anomaly" in response.json()["message"]
    assert store.table_counts(seeded.engine)["anomaly_feedback"] == 0


@pytest.mark.parametrize("slash", ["/", "%2F"])
def test_kpi_names_with_a_slash_round_trip_in_paths(client, seeded, slash):
    scores = store.load_scores(seeded.engine, ["sales"]).assign(kpi="web/sales")
    store.upsert_scores(seeded.engine, scores)
    spike = iso(seeded.spikes[0])

    series = client.get(f"/v1/kpis/web{slash}sales/scores", params={"limit": 24})
    labelled = client.post(f"/v1/anomalies/web{slash}sales/{spike}/feedback", json={"label": "true_positive"})

    assert series.status_code == 200, series.text
    expected = client.get("/v1/kpis/sales/scores", params={"limit": 24}).json()
    assert series.json() == expected | {"kpi": "web/sales"}
    assert labelled.status_code == 200, labelled.text
    assert labelled.json()["kpi"] == "web/sales"
    flagged = store.load_anomalies(seeded.engine).set_index(["kpi", "ts"])
    assert flagged.loc[("web/sales", seeded.spikes[0]), "feedback"] == "true_positive"
    assert pd.isna(flagged.loc[("sales", seeded.spikes[0]), "feedback"])


def test_history_outside_the_scored_range_is_unscored(module_seeded):
    # Guards the fixture the other tests rely on: the model scores only points after training.
    scored = store.load_scores(module_seeded.engine, ["sales"])
    assert scored["ts"].min() == module_seeded.ts[TRAIN_HOURS]
    assert len(scored) == HOURS - TRAIN_HOURS
