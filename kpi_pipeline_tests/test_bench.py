"""``kpi-pipeline bench`` at a tiny size: it builds its database, scores, retrains, and ends with
its one-line summary."""

import re

import pandas as pd
import sqlalchemy as sa
from typer.testing import CliRunner

from kpi_pipeline import store
from kpi_pipeline.cli import app
from kpi_pipeline.store import bench as bench_store

SUMMARY = re.compile(r"scoring: \d+\.\dx floor, history ratio \d+\.\d\d, peak RSS \d+ MiB, registry \d+ KB/KPI")


def test_bench_scores_every_kpi_and_ends_with_its_summary_line(pg_admin_engine):
    server = pg_admin_engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--url",
            server,
            "--kpis",
            "3",
            "--days",
            "3",
            "--retrain-kpis",
            "1",
            "--retrain-days",
            "2",
            "--keep",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert SUMMARY.fullmatch(lines[-1]), lines[-1]
    # The run measured is the whole hourly scoring_job, each of its steps timed.
    [scoring_line] = [line for line in lines if line.startswith("scoring at ")]
    steps = re.search(r"steps: (.*?) s\)", scoring_line).group(1)
    timed = {name for name, _seconds in (step.rsplit(" ", 1) for step in steps.split(", "))}
    assert {"cleaned_kpis", "anomaly_scores", "anomalies", "group_events"} <= timed, scoring_line
    kept = re.search(r"database kept: (\S+)", result.output).group(1)
    engine = store.make_engine(kept)
    try:
        scores = store.load_scores(engine)
        per_kpi = scores.groupby("kpi")
        assert list(per_kpi.groups) == ["kpi_00000", "kpi_00001", "kpi_00002"]
        # Loaded with COPY: 3 days of scored history, without bounds. Then the new point of
        # each of the two scoring runs, scored by the product (bounds and all), on every KPI.
        scored_by_runs = scores[scores["lower"].notna()]
        assert (per_kpi.size() >= 3 * 24 + 2).all()
        assert scored_by_runs.groupby("kpi").size().loc[["kpi_00000", "kpi_00001"]].eq(2).all()
        history_end = scores.loc[scores["lower"].isna(), "ts"].max()
        runs = scored_by_runs[scored_by_runs["ts"] <= history_end + pd.Timedelta(hours=2)]
        assert len(runs) == 3 * 2 and runs["score"].notna().all()
        # The registry KPI then had two simulated days, scored and retrained on each day.
        assert per_kpi["ts"].max().loc["kpi_00002"] == history_end + pd.Timedelta(hours=2 + 48)
        assert len(store.load_model_versions(engine, "kpi_00002", "ensemble")) == 3
    finally:
        engine.dispose()
        bench_store.drop_database(kept)
    with pg_admin_engine.connect() as connection:
        name = sa.make_url(kept).database
        assert not connection.exec_driver_sql(
            "SELECT 1 FROM pg_database WHERE datname = %(name)s", {"name": name}
        ).all()


def test_the_bench_s_cleaned_history_is_what_cleaning_the_observations_makes(pg_admin_engine):
    """The bench loads each KPI's cleaned rows and ``kpi_series`` state with its history (so the
    measured run cleans its new points only, as in a deployment that has been cleaning all
    along); they equal what ``cleaned_kpis`` makes of the same observations."""
    from dataclasses import replace

    from kpi_pipeline import derived
    from kpi_pipeline.bench import BenchOptions, _Bench
    from kpi_pipeline.store.schema import kpi_cleaned, kpi_series

    server = pg_admin_engine.url.render_as_string(hide_password=False)
    for freq, days in (("1h", 3), ("1min", 2)):
        url = bench_store.create_database(server)
        engine = store.make_engine(url)
        try:
            store.migrate(engine)
            bench = _Bench(BenchOptions(server, kpis=3, days=days, freq=freq), say=lambda _: None)
            per_kpi = bench.series.history
            bench.load(engine, per_kpi // 2, per_kpi - per_kpi // 2, scored=True, version="v")
            bench_store.mark_cleaned(engine, bench.step_us)
            bench.load(engine, 0, per_kpi // 2, scored=True, version="v")  # the earlier days after
            bench_store.mark_cleaned(engine, bench.step_us)
            loaded_rows = store.load_cleaned_rows(engine)
            loaded_states = store.load_series(engine)
            with engine.begin() as connection:
                connection.execute(kpi_cleaned.delete())
                connection.execute(kpi_series.delete())

            derived.clean_new_observations(engine)

            pd.testing.assert_frame_equal(loaded_rows, store.load_cleaned_rows(engine), check_exact=True)
            cleaned_states = store.load_series(engine)
            assert len(loaded_states) == 3
            for kpi, state in loaded_states.items():
                assert replace(state, cleaned_at=None) == replace(cleaned_states[kpi], cleaned_at=None), kpi
            # And the next run, after a new point of every KPI, only grows them.
            bench.add_new_points(engine)
            run = derived.clean_new_observations(engine)
            assert run.rebuilt == {} and sorted(run.kpis) == bench.names
            newest = store.load_cleaned_rows(engine).groupby("kpi")["ts"].max()
            assert (newest == bench.series.stamps(per_kpi + bench.new - 1, 1)[0]).all()
        finally:
            engine.dispose()
            bench_store.drop_database(url)
