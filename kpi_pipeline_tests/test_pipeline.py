"""Training and scoring steps on a real database with small synthetic series."""

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.api import realtime
from kpi_pipeline import pipeline, store
from kpi_pipeline.store import schema
from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector
from kpi_pipeline_tests.defs.synthetic import START, hourly_kpis
from kpi_pipeline_tests.detection.test_artifacts import as_version_2

CONFIG = DetectorConfig()
HOUR = pd.Timedelta(hours=1)


@pytest.fixture
def engine(pg_url):
    engine = pipeline.open_store(pg_url)
    yield engine
    engine.dispose()


def _train_and_score(engine):
    cleaned, _ = pipeline.load_cleaned(engine)
    trained = pipeline.train_models(engine, cleaned, CONFIG)
    return trained, _score(engine)


def _score(engine) -> list[pipeline.KpiScoring]:
    """A scoring run as the ``anomaly_scores`` asset does it."""
    return pipeline.score_new_points(engine, pipeline.load_scoring_window(engine))


def _version(ts: pd.Timestamp) -> str:
    return ts.strftime(pipeline.VERSION_FORMAT)


def test_new_kpi_gets_walk_forward_versions(engine):
    # 1000 hourly points: the first model learns 150 (15%), then one more every 288 points.
    store.upsert_observations(engine, hourly_kpis(days=1000 // 24 + 1).head(1000), "test")
    cleaned, _ = pipeline.load_cleaned(engine)

    trained = pipeline.train_models(engine, cleaned, CONFIG)

    expected = tuple(_version(START + (end - 1) * HOUR) for end in (150, 438, 726))
    assert [(r.kpi, r.status, r.versions) for r in trained] == [("orders", "trained", expected)]
    for kind in ("prophet", "iforest", "ensemble"):
        versions = store.load_model_versions(engine, "orders", kind)
        assert [m.version for m in versions] == list(expected)
        assert all(m.artifact for m in versions)
    assert [m.n_points for m in versions] == [150, 438, 726]


def test_retraining_waits_for_new_scored_points_and_is_idempotent(engine):
    store.upsert_observations(engine, hourly_kpis(days=10), "test")
    cleaned, _ = pipeline.load_cleaned(engine)
    walk_forward = pipeline.train_models(engine, cleaned, CONFIG)
    assert {r.versions for r in walk_forward} == {(_version(START + 47 * HOUR),)}
    counts = store.table_counts(engine)

    # Nothing scored yet beyond the first model: nothing to retrain on.
    assert {r.status for r in pipeline.train_models(engine, cleaned, CONFIG)} == {"up to date"}
    assert store.table_counts(engine) == counts

    pipeline.score_new_points(engine, cleaned)
    nightly = pipeline.train_models(engine, cleaned, CONFIG)
    assert {r.versions for r in nightly} == {(_version(START + 239 * HOUR),)}
    counts = store.table_counts(engine)
    assert {r.status for r in pipeline.train_models(engine, cleaned, CONFIG)} == {"up to date"}
    assert store.table_counts(engine) == counts


def test_short_kpi_is_reported_as_insufficient_history_and_others_still_train(engine):
    short = pd.DataFrame({"kpi": "signups", "ts": pd.date_range(START, periods=10, freq="h"), "value": 1.0})
    store.upsert_observations(engine, pd.concat([hourly_kpis(days=3), short]), "test")

    trained, scored = _train_and_score(engine)

    status = {r.kpi: r.status for r in trained}
    assert status == {"orders": "trained", "sessions": "trained", "signups": "insufficient history"}
    signups = next(r for r in scored if r.kpi == "signups")
    assert (signups.scored, signups.unscored) == (0, 10)


def test_points_are_scored_only_by_models_trained_before_them(engine):
    spike = START + 200 * HOUR
    store.upsert_observations(engine, hourly_kpis(days=10, spike_at=spike), "test")

    _, scored = _train_and_score(engine)

    assert [(r.kpi, r.scored, r.unscored) for r in scored] == [
        ("orders", 192, 48),
        ("sessions", 192, 48),
    ]
    scores = store.load_scores(engine, ["orders"])
    models = store.load_model_versions(engine, "orders", "ensemble")
    train_end = {m.version: m.train_end for m in models}
    assert (scores["model_version"].map(train_end) < scores["ts"]).all()
    assert scores["ts"].min() == START + 48 * HOUR
    flagged = scores.loc[scores["score"].idxmax()]
    assert flagged["ts"] == spike and flagged["is_anomaly"]
    assert flagged["event_id"] == f"orders@{spike.isoformat()}"


def test_rescoring_without_new_points_writes_nothing(engine):
    store.upsert_observations(engine, hourly_kpis(days=4), "test")
    _train_and_score(engine)
    before = store.load_scores(engine)

    again = _score(engine)

    assert [(r.scored, r.unscored) for r in again] == [(0, 0), (0, 0)]
    pd.testing.assert_frame_equal(store.load_scores(engine), before)


def test_an_event_open_at_the_end_of_a_batch_continues_into_the_next(engine):
    last_of_batch = START + 239 * HOUR
    first_batch = hourly_kpis(days=10, spike_at=last_of_batch)
    store.upsert_observations(engine, first_batch, "test")
    _train_and_score(engine)
    opened = store.load_scores(engine, ["orders"], since=last_of_batch)
    assert opened["is_anomaly"].tolist() == [True]

    next_hour = last_of_batch + HOUR
    extended = hourly_kpis(days=11, spike_at=next_hour)
    store.upsert_observations(engine, extended[extended["ts"] > last_of_batch], "test")
    trained, scored = _train_and_score(engine)

    # The retrain learnt from the first batch without its flagged spike, so it still sees the
    # second one as an anomaly.
    assert {r.versions for r in trained} == {(_version(last_of_batch),)}
    assert [r.scored for r in scored] == [24, 24]
    continued = store.load_scores(engine, ["orders"], since=next_hour, until=next_hour)
    assert continued["is_anomaly"].tolist() == [True]
    assert continued["event_id"].tolist() == opened["event_id"].tolist()
    assert continued["model_version"].tolist() == [_version(last_of_batch)]


def test_training_skips_confident_anomalies_and_confirmed_incidents(migrated_engine):
    ts = pd.date_range(START, periods=5, freq="h")
    store.upsert_scores(
        migrated_engine,
        pd.DataFrame(
            {
                "kpi": "orders",
                "ts": ts,
                "is_anomaly": True,
                "score": [0.5, 0.6, 0.7, 0.9, 0.7],
                "severity": ["low", "medium", "high", "critical", "high"],
            }
        ),
    )
    store.set_feedback(migrated_engine, "orders", ts[0], "true_positive")
    store.set_feedback(migrated_engine, "orders", ts[4], "false_positive")

    excluded = pipeline.training_exclusions(migrated_engine, DetectorConfig(exclude_score=0.7))

    assert list(excluded) == ["orders"]
    assert sorted(excluded["orders"]) == [ts[0], ts[2], ts[3]]


# -- scoring reads only new points and their context ----------------------------------------

# A short residual-scale window keeps the context (and so the histories below) small.
SHORT_CONTEXT = DetectorConfig(scale_window=96)
CONTEXT = EnsembleDetector(SHORT_CONTEXT).context_points
SCORED_TABLES = ("kpi_observations", "anomaly_scores")


def _orders(days: int, **kwargs) -> pd.DataFrame:
    observations = hourly_kpis(days=days, **kwargs)
    return observations[observations["kpi"] == "orders"].reset_index(drop=True)


def _rows_read(engine: sa.Engine) -> dict[str, int]:
    """Rows each later SELECT on an observation or score table returns, summed per table."""
    read = dict.fromkeys(SCORED_TABLES, 0)

    @sa.event.listens_for(engine, "after_cursor_execute")
    def count(_connection, cursor, statement, _parameters, _context, _executemany):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            for table in SCORED_TABLES:
                if table in statement:
                    read[table] += cursor.rowcount  # psycopg: the rows of the result

    return read


def _rows_read_scoring_a_day(url: str, history_days: int, monkeypatch) -> tuple[dict[str, int], list]:
    engine = pipeline.open_store(url)
    try:
        store.upsert_observations(engine, _orders(history_days), "test")
        pipeline.train_models(engine, pipeline.load_cleaned(engine)[0], SHORT_CONTEXT)
        _score(engine)
        store.upsert_observations(engine, _orders(history_days + 1), "test")
        read = _rows_read(engine)
        read["observations in windows"] = 0
        reader = store.load_observation_windows

        def windows(*args, **kwargs):
            frame = reader(*args, **kwargs)
            read["observations in windows"] += len(frame)
            return frame

        with monkeypatch.context() as patch:
            patch.setattr(store, "load_observation_windows", windows)
            scored = _score(engine)
        return read, [(r.kpi, r.scored, r.unscored) for r in scored]
    finally:
        engine.dispose()


def test_a_scoring_run_reads_the_new_points_and_their_context_whatever_the_history(new_pg_url, monkeypatch):
    short, short_scored = _rows_read_scoring_a_day(new_pg_url(), 10, monkeypatch)
    long, long_scored = _rows_read_scoring_a_day(new_pg_url(), 20, monkeypatch)

    assert short_scored == long_scored == [("orders", 24, 0)]
    assert long == short
    # New points, their context, the slack and the last scored point.
    window = 24 + CONTEXT + pipeline.SCORING_SLACK_POINTS + 1
    assert window < 10 * 24  # so reading the whole history would show
    assert short["observations in windows"] == window
    # On PostgreSQL a KPI's window is one row (its timestamps and values as arrays); one row
    # of spans.
    assert short["kpi_observations"] == 1 + 1
    # The last scored point (looked up twice: by the window and by scoring), then the stored
    # scores an open event may continue from.
    assert short["anomaly_scores"] == 2 + SHORT_CONTEXT.event_merge_gap + 1


def _messy_orders(days: int, spike_at: pd.Timestamp) -> pd.DataFrame:
    """Orders with a short and a long gap, an off-grid duplicate, and a spike."""
    observations = _orders(days, spike_at=spike_at)
    hour = (observations["ts"] - START) // HOUR
    missing = hour.between(150, 151) | hour.between(300, 311)
    duplicate = observations[hour == 200].assign(
        ts=lambda d: d["ts"] + pd.Timedelta(minutes=10), value=lambda d: d["value"] * 1.05
    )
    return pd.concat([observations[~missing], duplicate], ignore_index=True)


def _copy_models(source: sa.Engine, target: sa.Engine, kpi: str) -> None:
    for kind in (*EnsembleDetector.COMPONENT_KINDS, "ensemble"):
        for model in store.load_model_versions(source, kpi, kind):
            fields = {name: getattr(model, name) for name in model.__dataclass_fields__}
            store.save_model(target, **fields)


def test_scoring_in_several_runs_writes_the_scores_of_one_run_over_everything(new_pg_url):
    spike = START + 252 * HOUR
    observations = _messy_orders(days=20, spike_at=spike)
    once = pipeline.open_store(new_pg_url())
    in_runs = pipeline.open_store(new_pg_url())
    try:
        store.upsert_observations(once, observations, "test")
        pipeline.train_models(once, pipeline.load_cleaned(once)[0], SHORT_CONTEXT)
        _score(once)
        _copy_models(once, in_runs, "orders")
        # Runs ending inside the short gap, inside the long gap, on the spike, and a day later.
        for end in (100, 151, 252, 305, 420, 480):
            store.upsert_observations(in_runs, observations[observations["ts"] < START + end * HOUR], "test")
            _score(in_runs)

        expected = store.load_scores(once).drop(columns="scored_at")
        scored = store.load_scores(in_runs).drop(columns="scored_at")
        assert expected["model_version"].nunique() > 1
        assert expected["is_anomaly"].any() and expected["event_id"].notna().any()
        assert np.isnan(expected["value"]).any()  # the long gap was scored as a gap
        pd.testing.assert_frame_equal(scored, expected, check_exact=True)
    finally:
        once.dispose()
        in_runs.dispose()


def _many_kpis(engine: sa.Engine, names: list[str], days: int) -> pd.DataFrame:
    """``names`` as copies of ``orders`` (values scaled apart), trained once and copied, with
    ``days`` of history scored; returns the next day of each, not yet stored."""
    orders = _orders(days + 1, spike_at=START + (days * 24 + 5) * HOUR)
    copies = pd.concat(
        [orders.assign(kpi=name, value=orders["value"] * (1 + i / 10)) for i, name in enumerate(names)],
        ignore_index=True,
    )
    history = copies[copies["ts"] < START + days * 24 * HOUR]
    store.upsert_observations(engine, history[history["kpi"] == names[0]], "test")
    pipeline.train_models(engine, pipeline.load_cleaned(engine)[0], SHORT_CONTEXT)
    for kind in (*EnsembleDetector.COMPONENT_KINDS, "ensemble"):
        for model in store.load_model_versions(engine, names[0], kind):
            fields = {name: getattr(model, name) for name in model.__dataclass_fields__}
            for name in names[1:]:
                store.save_model(engine, **(fields | {"kpi": name}))
    store.upsert_observations(engine, history, "test")
    _score(engine)
    return copies[copies["ts"] >= START + days * 24 * HOUR]


def _statements(engine: sa.Engine) -> list[str]:
    """The statements executed on ``engine`` from now on."""
    executed: list[str] = []
    sa.event.listen(engine, "after_cursor_execute", lambda _c, _cursor, statement, *_args: executed.append(statement))
    return executed


@pytest.mark.parametrize("database", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def test_a_scoring_run_costs_a_fixed_number_of_statements_per_chunk_of_kpis(request, tmp_path, database):
    counts, scores = {}, {}
    for kpis, chunk, run in (
        (2, 10, "window"),
        (5, 10, "window"),
        (5, 2, "window"),
        (5, 1, "window"),
        (5, 2, "latest"),
    ):
        if database == "postgres":
            url = request.getfixturevalue("new_pg_url")()
        else:
            url = f"sqlite:///{tmp_path / f'{kpis}_{chunk}_{run}.db'}"
        engine = pipeline.open_store(url)
        names = [f"kpi{i}" for i in range(kpis)]
        store.upsert_observations(engine, _many_kpis(engine, names, days=10), "test")
        executed = _statements(engine)
        if run == "window":
            results = pipeline.score_new_points(
                engine, pipeline.load_scoring_window(engine, chunk_kpis=chunk), chunk_kpis=chunk
            )
        else:  # the asset's step: read, clean, score and write a chunk at a time
            results = pipeline.score_latest(engine, chunk_kpis=chunk)
        counts[kpis, chunk, run] = len(executed)
        assert [(r.kpi, r.scored, r.error) for r in results] == [(n, 24, "") for n in names]
        scores[kpis, chunk, run] = store.load_scores(engine).drop(columns="scored_at")
        engine.dispose()

    one_chunk = counts[5, 10, "window"]
    assert counts[2, 10, "window"] == one_chunk  # one chunk, whatever its size
    # 1, 3 and 5 chunks of 5 KPIs: the same number of statements more for each chunk more.
    per_chunk = (counts[5, 1, "window"] - counts[5, 2, "window"]) / 2
    assert per_chunk > 0 and counts[5, 2, "window"] - one_chunk == 2 * per_chunk
    # The asset's step reads the last scored points once, not once per step.
    assert counts[5, 2, "latest"] < counts[5, 2, "window"]
    expected = scores[5, 10, "window"]
    assert expected["is_anomaly"].any()
    for chunked in (scores[5, 2, "window"], scores[5, 1, "window"], scores[5, 2, "latest"]):
        pd.testing.assert_frame_equal(chunked, expected, check_exact=True)


def test_a_scoring_run_logs_a_line_per_chunk_and_only_the_kpis_with_something_to_report(pg_url):
    engine = pipeline.open_store(pg_url)
    names = [f"kpi{i}" for i in range(5)]
    new = _many_kpis(engine, names, days=10)
    # kpi0 and kpi1 get no new points: nothing to report for them.
    store.upsert_observations(engine, new[~new["kpi"].isin(["kpi0", "kpi1"])], "test")
    lines: list[str] = []
    results = pipeline.score_latest(engine, chunk_kpis=2, progress=lines.append)
    engine.dispose()

    reported = {r.kpi for r in results if r.anomalies or r.outages or r.error or r.unscored}
    assert reported == {"kpi2", "kpi3", "kpi4"}  # the new day holds the spike
    per_kpi = [line for line in lines if line.split(":")[0] in names]
    assert sorted(line.split(":")[0] for line in per_kpi) == sorted(reported)
    chunk_lines = [line for line in lines if "KPIs done" in line]
    assert chunk_lines == [
        "2 of 5 KPIs done: 0 points scored in this chunk of 2 KPIs (2 with nothing anomalous, "
        "failed or left unscored, not listed)",
        "4 of 5 KPIs done: 48 points scored in this chunk of 2 KPIs",
        "5 of 5 KPIs done: 24 points scored in this chunk of 1 KPIs",
    ]


@pytest.mark.parametrize("kind", ["iforest", "ensemble"])  # the ensemble's also sets the window
def test_a_kpi_whose_models_cannot_be_read_fails_alone_and_the_chunk_is_scored(pg_url, kind):
    engine = pipeline.open_store(pg_url)
    names = ["kpi0", "kpi1", "kpi2"]
    store.upsert_observations(engine, _many_kpis(engine, names, days=10), "test")
    with engine.begin() as connection:
        connection.execute(
            sa.update(schema.kpi_models)
            .where(schema.kpi_models.c.kpi == "kpi1", schema.kpi_models.c.kind == kind)
            .values(artifact=b"not a model")
        )

    results = {r.kpi: r for r in _score(engine)}

    assert results["kpi1"].error and (results["kpi1"].scored, results["kpi1"].unscored) == (0, 24)
    assert [(results[k].scored, results[k].error) for k in ("kpi0", "kpi2")] == [(24, "")] * 2
    assert set(store.load_scores(engine, since=START + 240 * HOUR)["kpi"]) == {"kpi0", "kpi2"}
    engine.dispose()


def test_models_stored_before_format_version_3_score_as_the_newer_ones(new_pg_url, monkeypatch):
    """The scoring window's grid step and context come from the head of the newest ensemble
    artifact; for a zip (format versions 1 and 2) the whole artifact is read instead."""
    names = ["kpi0", "kpi1", "kpi2"]
    kpi1 = schema.kpi_models.c.kpi == "kpi1"
    scores, statements = {}, {}
    for stored_as in (3, 2):
        engine = pipeline.open_store(new_pg_url())
        store.upsert_observations(engine, _many_kpis(engine, names, days=10), "test")
        with engine.begin() as connection:
            for model in connection.execute(sa.select(schema.kpi_models).where(kpi1)).all():
                older = as_version_2(model.artifact, model.kind)
                if model.kind == "ensemble":
                    # A head that holds a version 3 document but not the whole (small) zip.
                    document_end = 12 + int.from_bytes(model.artifact[8:12], "little")
                    monkeypatch.setattr(pipeline, "DOCUMENT_HEAD", (document_end + len(older)) // 2)
                    assert document_end < pipeline.DOCUMENT_HEAD < len(older)
                if stored_as == 2:
                    connection.execute(
                        sa.update(schema.kpi_models)
                        .where(
                            kpi1, schema.kpi_models.c.kind == model.kind, schema.kpi_models.c.version == model.version
                        )
                        .values(artifact=older)
                    )
        executed = _statements(engine)
        assert [(r.kpi, r.scored, r.error) for r in _score(engine)] == [(name, 24, "") for name in names]
        statements[stored_as] = len(executed)
        scores[stored_as] = store.load_scores(engine).drop(columns="scored_at")
        engine.dispose()
    pd.testing.assert_frame_equal(scores[2], scores[3], check_exact=True)
    assert statements[2] == statements[3] + 1  # one more read: kpi1's whole newest ensemble


def test_a_kpi_whose_scores_cannot_be_written_fails_alone(pg_url, monkeypatch):
    engine = pipeline.open_store(pg_url)
    names = ["kpi0", "kpi1", "kpi2"]
    store.upsert_observations(engine, _many_kpis(engine, names, days=10), "test")
    real = store.upsert_scores

    def refusing_kpi1(engine, frame):
        if "kpi1" in set(frame["kpi"]):
            raise RuntimeError("kpi1 cannot be written")
        return real(engine, frame)

    monkeypatch.setattr(store, "upsert_scores", refusing_kpi1)
    results = {r.kpi: r for r in _score(engine)}

    assert results["kpi1"].error == "RuntimeError: kpi1 cannot be written"
    assert results["kpi1"].unscored == 24
    assert [(results[k].scored, results[k].error) for k in ("kpi0", "kpi2")] == [(24, "")] * 2
    assert set(store.load_scores(engine, since=START + 240 * HOUR)["kpi"]) == {"kpi0", "kpi2"}
    engine.dispose()


def test_the_scoring_window_keeps_the_series_grid_when_its_own_steps_disagree(pg_url):
    engine = pipeline.open_store(pg_url)
    observations = _orders(days=22)
    store.upsert_observations(engine, observations.head(10 * 24), "test")
    pipeline.train_models(engine, pipeline.load_cleaned(engine)[0], SHORT_CONTEXT)
    _score(engine)
    # Then 12 days of every other hour, 10 minutes late: the most common step of the scoring
    # window alone (context and slack: 130 points) would be two hours.
    later = observations.iloc[10 * 24 :: 2].assign(ts=lambda d: d["ts"] + pd.Timedelta(minutes=10))
    store.upsert_observations(engine, later, "test")

    window = pipeline.load_scoring_window(engine)

    whole, frequencies = pipeline.load_cleaned(engine)
    assert frequencies == {"orders": HOUR}
    assert window["ts"].diff().dropna().eq(HOUR).all()
    settled = window.iloc[pipeline.SCORING_SLACK_POINTS :].reset_index(drop=True)
    expected = whole[whole["ts"] >= settled["ts"].iloc[0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(settled, expected, check_exact=True)
    engine.dispose()


# -- real-time scoring is the scoring step ---------------------------------------------------


IRREGULAR_SPIKE_HOUR = 335


def _irregular_orders(days: int) -> pd.DataFrame:
    """``_messy_orders`` whose first point is 10 minutes late, so the whole series lies on a
    grid 10 minutes past the hour (the grid starts at the first point)."""
    observations = _messy_orders(days, spike_at=START + IRREGULAR_SPIKE_HOUR * HOUR)
    first = observations["ts"] == START
    observations.loc[first, "ts"] = START + pd.Timedelta(minutes=10)
    return observations


@pytest.mark.parametrize(
    ("stored_hours", "silence_hours"),
    [
        # The new points' window (context + slack = 182 points) starts in the short gap at
        # hours 150-151, then on the off-grid duplicate at hour 200; or the points come after
        # a silence longer than the context.
        (151 + CONTEXT + pipeline.SCORING_SLACK_POINTS, 0),
        (200 + CONTEXT + pipeline.SCORING_SLACK_POINTS, 0),
        (151 + CONTEXT + pipeline.SCORING_SLACK_POINTS, CONTEXT + 40),
    ],
)
def test_realtime_scores_equal_what_the_scoring_step_stores(pg_url, stored_hours, silence_hours):
    engine = pipeline.open_store(pg_url)
    observations = _irregular_orders(days=24)
    hour = (observations["ts"] - START).dt.round("h") // HOUR
    store.upsert_observations(engine, observations[hour < stored_hours], "test")
    pipeline.train_models(engine, pipeline.load_cleaned(engine)[0], SHORT_CONTEXT)
    _score(engine)
    cache = realtime.ScoringCache(size=2)
    first_new = stored_hours + silence_hours
    new = observations[hour.between(first_new, first_new + 5)][["ts", "value"]]
    old = observations[hour.between(stored_hours - 10, stored_hours - 5)][["ts", "value"]]

    scored = realtime.score_points(engine, "orders", new.iloc[::-1], 100, cache)
    again = realtime.score_points(engine, "orders", new, 100, cache)  # from the cached context
    replayed = realtime.score_points(engine, "orders", old, 100)  # points among stored ones
    store.upsert_observations(engine, new.assign(kpi="orders"), "test")
    _score(engine)

    stored = store.load_scores(engine, ["orders"])
    assert stored["ts"].dt.minute.eq(10).all()  # scored on the series' own grid
    columns = [name for name in scored.scores.columns if name != "ts"]
    for result, points in ((scored, new), (again, new), (replayed, old)):
        assert result.scores["ts"].tolist() == points["ts"].tolist()
        slots = stored["ts"].isin(points["ts"].dt.round("h") + pd.Timedelta(minutes=10))
        expected = stored.loc[slots, columns].reset_index(drop=True)
        pd.testing.assert_frame_equal(result.scores[columns], expected, check_exact=True, check_dtype=False)
    if first_new <= IRREGULAR_SPIKE_HOUR <= first_new + 5:
        assert scored.scores["is_anomaly"].any()
    engine.dispose()


def test_daily_retrains_keep_the_registry_bounded_and_every_point_scoreable(engine):
    """30 daily retrains with a 3-day re-scoring horizon leave at most 3 + 2 versions, and the
    points within the horizon score again as they did."""
    horizon = pd.Timedelta(days=3)
    observations = _orders(40)
    day = observations["ts"].dt.floor("D")
    first_day = day.min()
    store.upsert_observations(engine, observations[day < first_day + pd.Timedelta(days=10)], "t")
    counts = []
    for elapsed in range(10, 41):
        cleaned, _ = pipeline.load_cleaned(engine)
        trained = pipeline.train_models(engine, cleaned, CONFIG, rescore_horizon=horizon)
        assert [r.status for r in trained] != ["failed"], trained
        counts.append(len(store.load_model_versions(engine, "orders", "ensemble", artifacts=False)))
        _score(engine)
        store.upsert_observations(engine, observations[day == first_day + pd.Timedelta(days=elapsed)], "t")
    assert max(counts[5:]) <= horizon.days + 2, counts
    assert counts[-1] == counts[-2]  # steady: one version in, one out

    # Every point within the horizon is scored again, identically, with the models kept.
    last_scored = store.last_scored_ts(engine)["orders"]
    since = last_scored - horizon
    before = store.load_scores(engine, ["orders"], since=since)
    with engine.begin() as connection:
        deleted = connection.execute(
            sa.text("DELETE FROM anomaly_scores WHERE ts >= :since"), {"since": since.to_pydatetime()}
        ).rowcount
    assert deleted == len(before) == 3 * 24 + 1
    pipeline.score_new_points(engine, pipeline.load_cleaned(engine)[0])
    after = store.load_scores(engine, ["orders"], since=since)
    pd.testing.assert_frame_equal(after.drop(columns=["scored_at"]), before.drop(columns=["scored_at"]))
