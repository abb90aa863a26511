"""``kpi-pipeline bench``: what an hourly scoring run, the nightly retrain and the registry cost
at a given number of KPIs and length of history, on a synthetic Postgres database.

The database is new (dropped afterwards unless kept): N seeded KPIs loaded with COPY, their
history already cleaned (``bench_store.mark_cleaned``) and scored. A few representative
models are trained (one per shape of series) and their registry rows copied to every KPI of
that shape, since training every KPI would take hours. Then, in one run:

- the scoring run at 30 days of history and at the full history: one run of ``scoring_job``
  in process (cleaning, scoring, the anomaly summaries and every check of the hourly run, each
  step timed), after one new point per KPI (60 at ``1min``), against the plain-SQL floor
  measured alongside (read the observations a scorer needs, write the score rows); then the
  function the ``anomaly_scores`` asset calls (``pipeline.score_latest``), run alone after more
  new points, with its time split into queries, model loading and the rest (compute);
- the nightly retrain (``pipeline.train_models``, the ``kpi_models`` asset's step) of a few
  KPIs, in one process and in two, as KPIs per minute;
- the registry's bytes per KPI after ``retrain_days`` (30) simulated days of scoring and
  retraining one KPI.

Each step runs in a fresh process (spawned), whose peak RSS (``VmHWM`` of ``/proc/self/status``,
the process's own high-water mark, imports included) is reported with it.
"""

from __future__ import annotations

import inspect
import io
import multiprocessing
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kpi_pipeline import pipeline, store
from kpi_pipeline.config import get_settings
from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector, ProphetConfig
from kpi_pipeline.detection.preprocess import clean_observations
from kpi_pipeline.store import bench as bench_store

FREQUENCIES = {"1h": pd.Timedelta(hours=1), "1min": pd.Timedelta(minutes=1)}
NEW_POINTS = {"1h": 1, "1min": 60}
"""New points per KPI in one hourly scoring run, per frequency."""

SHORT_DAYS = 30
"""The history of the first scoring measurement, the denominator of the history ratio."""

SHAPES = (
    # level, daily amplitude, weekly amplitude, noise
    (120.0, 0.35, 0.10, 0.03),
    (2500.0, 0.50, 0.20, 0.02),
    (40.0, 0.20, 0.05, 0.08),
    (900.0, 0.60, 0.30, 0.04),
)
"""Shapes of the synthetic KPIs; KPI ``i`` has shape ``i % templates``."""

ROWS_PER_COPY = 500_000
"""Rows per COPY chunk when loading."""

Say = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """What to build and measure (see ``kpi-pipeline bench --help``)."""

    server_url: str
    kpis: int = 50
    days: int = 90
    freq: str = "1h"
    keep: bool = False
    seed: int = 0
    templates: int = 3
    retrain_kpis: int = 4
    retrain_days: int = 30


@dataclass(frozen=True)
class Series:
    """The seeded synthetic series: slot ``j`` of KPI ``i`` is at ``start + j * step``; slots
    before ``history`` are the history, later ones are new points as the runs need them."""

    start: pd.Timestamp
    step: pd.Timedelta
    history: int
    seed: int
    templates: int

    @staticmethod
    def name(i: int) -> str:
        return f"kpi_{i:05d}"

    def values(self, i: int, first: int, count: int) -> np.ndarray:
        """Values of KPI ``i`` at slots ``first .. first + count - 1``; the same whatever the
        slice asked for."""
        level, daily, weekly, noise = SHAPES[(i % self.templates) % len(SHAPES)]
        slots = np.arange(first, first + count)
        hours = slots * (self.step / pd.Timedelta(hours=1))
        shape = (1 + daily * np.sin(2 * np.pi * hours / 24)) * (1 + weekly * np.sin(2 * np.pi * hours / 168))
        draws = np.random.default_rng([self.seed, i]).standard_normal(first + count)[first:]
        return level * shape * (1 + noise * draws)

    def stamps(self, first: int, count: int) -> pd.DatetimeIndex:
        return pd.date_range(self.start + first * self.step, periods=count, freq=self.step)


@dataclass
class Measure:
    """One timed step: wall seconds, the process's peak RSS, and what it reported."""

    seconds: float
    peak_mib: float
    detail: dict = field(default_factory=dict)


# -- steps run in their own process -------------------------------------------------------


def _peak_mib() -> float:
    """This process's peak RSS: ``VmHWM``, the high-water mark of its own memory since it
    started (``ru_maxrss`` would carry over the parent's at the fork before the exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scoring_job_run(url: str) -> Measure:
    """One run of ``scoring_job``, in process: every asset and check an hourly scoring run
    executes (``cleaned_kpis``, ``anomaly_scores``, ``anomalies``, ``group_events`` and their
    checks), with each step's duration."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dagster as dg

        from kpi_pipeline.defs.assets import ASSETS
        from kpi_pipeline.defs.checks import CHECKS
        from kpi_pipeline.defs.jobs import scoring_job
        from kpi_pipeline.defs.resources import KpiStore, alert_resources

    definitions = dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[scoring_job],
        resources={"store": KpiStore(database_url=url), **alert_resources(get_settings())},
    )
    job = definitions.resolve_job_def(scoring_job.name)
    started = time.perf_counter()
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            raise_on_error=False,
        )
    seconds = time.perf_counter() - started
    if not result.success:
        failure = result.get_step_failure_events()[0]
        raise RuntimeError(f"the scoring run failed in {failure.step_key}: {failure.message}")
    steps = {
        event.step_key: event.event_specific_data.duration_ms / 1000  # type: ignore[union-attr]
        for event in result.get_step_success_events()
    }
    [event] = result.asset_materializations_for_node("anomaly_scores")
    metadata = {key: value.value for key, value in event.metadata.items()}
    return Measure(
        seconds,
        _peak_mib(),
        {
            "points_scored": metadata["points_scored"],
            "failed": metadata["failed"],
            "steps": dict(sorted(steps.items(), key=lambda item: -item[1])),
        },
    )


class _Timer:
    """Time spent in the wrapped functions, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def wrap(self, name: str, function: Callable) -> Callable:
        if inspect.isgeneratorfunction(function):

            def timed_generator(*args, **kwargs):
                items = function(*args, **kwargs)
                while True:
                    started = time.perf_counter()
                    try:
                        item = next(items)
                    except StopIteration:
                        self.add(name, time.perf_counter() - started)
                        return
                    self.add(name, time.perf_counter() - started)
                    yield item

            return timed_generator

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed


def _profiled_scoring(url: str) -> Measure:
    """The function the ``anomaly_scores`` asset calls (``pipeline.score_latest``), with the time in the store's
    functions (queries: statements, transfer, rows to frames) and in rebuilding detectors from
    their artifacts (model load) told apart from the rest (compute: cleaning, scoring,
    events)."""
    engine = pipeline.open_store(url)
    queries, loads = _Timer(), _Timer()
    for name in store.__all__:
        function = getattr(store, name)
        if inspect.isfunction(function):
            setattr(store, name, queries.wrap(name, function))
    # Rebuilding detectors from their registry rows, whatever the artifacts' format.
    for name in ("detector_from_artifacts", "_scoring_window"):
        setattr(pipeline, name, loads.wrap(name, getattr(pipeline, name)))
    started = time.perf_counter()
    results = pipeline.score_latest(engine)
    seconds = time.perf_counter() - started
    engine.dispose()
    query_s, load_s = sum(queries.seconds.values()), sum(loads.seconds.values())
    return Measure(
        seconds,
        _peak_mib(),
        {
            "queries": query_s,
            "model_load": load_s,
            "compute": seconds - query_s - load_s,
            "by_query": dict(sorted(queries.seconds.items(), key=lambda item: -item[1])),
            "points_scored": sum(r.scored for r in results),
            "failed": {r.kpi: r.error for r in results if r.error},
        },
    )


def _detector_config() -> DetectorConfig:
    return DetectorConfig(prophet=ProphetConfig(holidays_country=get_settings().holiday_country))


def _rescore_horizon() -> pd.Timedelta:
    """The registry's retention, as the ``kpi_models`` asset configures it."""
    return pd.Timedelta(get_settings().model_rescore_horizon())


def _retrain(url: str, kpis: list[str]) -> Measure:
    """The nightly retrain of ``kpis`` (``pipeline.train_models``, timed without reading and
    cleaning their observations)."""
    engine = pipeline.open_store(url)
    cleaned = clean_observations(store.load_observations(engine, kpis))[0]
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    results = pipeline.train_models(engine, cleaned, _detector_config(), rescore_horizon=_rescore_horizon())
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    engine.dispose()
    return Measure(seconds, _peak_mib(), {"statuses": [r.status for r in results], "cpu": cpu})


def _cpu_seconds() -> float:
    """CPU seconds of this process and the children it waited for (Stan's fits run in a
    child process): on a shared machine, what the work cost whatever else ran."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _warm() -> float:
    """Nothing but the imports (a pool's workers are started before they are timed)."""
    time.sleep(0.5)
    return _peak_mib()


def _simulate_retrains(url: str, series: Series, i: int, first: int, days: int) -> Measure:
    """``days`` days of one KPI as the schedules would run them: each day its new points are
    stored, scored and then retrained on (one new version a day)."""
    engine = pipeline.open_store(url)
    kpi = series.name(i)
    per_day = int(pd.Timedelta(days=1) / series.step)
    config = _detector_config()
    started = time.perf_counter()
    statuses = []
    for day in range(days):
        slot = first + day * per_day
        new = pd.DataFrame({"kpi": kpi, "ts": series.stamps(slot, per_day), "value": series.values(i, slot, per_day)})
        store.upsert_observations(engine, new, "bench")
        cleaned = clean_observations(store.load_observations(engine, [kpi]))[0]
        pipeline.score_new_points(engine, cleaned)
        trained = pipeline.train_models(
            engine,
            cleaned,
            config,
            trained_at=pd.Timestamp.now("UTC"),
            rescore_horizon=_rescore_horizon(),
        )
        statuses.extend(r.status for r in trained)
    seconds = time.perf_counter() - started
    sizes = bench_store.model_bytes(engine, [kpi])
    versions = len(store.load_model_versions(engine, kpi, "ensemble", artifacts=False))
    engine.dispose()
    return Measure(
        seconds,
        _peak_mib(),
        {
            "bytes": sizes.get(kpi, 0),
            "versions": versions,
            "trained": statuses.count("trained"),
        },
    )


def _in_process(function: Callable, *args) -> Measure:
    """``function(*args)`` in a fresh spawned process, so its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# -- the benchmark --------------------------------------------------------------------------


@dataclass
class BenchReport:
    lines: list[str]
    ratio: float
    history_ratio: float
    peak_mib: float
    registry_kb: float | None
    url: str

    @property
    def summary(self) -> str:
        registry = "n/a" if self.registry_kb is None else f"{self.registry_kb:.0f}"
        return (
            f"scoring: {self.ratio:.1f}x floor, history ratio {self.history_ratio:.2f}, "
            f"peak RSS {self.peak_mib:.0f} MiB, registry {registry} KB/KPI"
        )


def _as_csv(frame: pd.DataFrame) -> str:
    """``frame`` as COPY reads it: no header, values with 6 significant digits (the same text
    in every table a value is loaded into)."""
    buffer = io.StringIO()
    frame.to_csv(buffer, header=False, index=False, float_format="%.6g")
    return buffer.getvalue()


class _Bench:
    def __init__(self, options: BenchOptions, say: Say) -> None:
        if options.freq not in FREQUENCIES:
            raise ValueError(f"--freq must be one of {', '.join(FREQUENCIES)}")
        if options.kpis < 3 or options.days < 2:
            raise ValueError("the benchmark needs at least 3 KPIs and 2 days of history")
        self.options, self._say, self._started = options, say, time.perf_counter()
        step = FREQUENCIES[options.freq]
        per_day = int(pd.Timedelta(days=1) / step)
        history = options.days * per_day
        # The history ends at midnight UTC a week ago, so that no point is in the future.
        end = pd.Timestamp.now("UTC").floor("D") - pd.Timedelta(days=7)
        self.series = Series(end - history * step, step, history, options.seed, min(options.templates, options.kpis))
        self.per_day, self.new = per_day, NEW_POINTS[options.freq]
        self.next_slot = history  # the next new point's slot
        self.names = [Series.name(i) for i in range(options.kpis)]
        self.lines: list[str] = []

    def say(self, message: str) -> None:
        self._say(f"[{time.perf_counter() - self._started:7.1f} s] {message}")

    def report(self, line: str) -> None:
        self.lines.append(line)
        self._say(line)

    # -- loading

    def load(self, engine, first: int, count: int, scored: bool, version: str) -> None:
        """Store slots ``first .. first + count - 1`` of every KPI, and their scores if
        ``scored``, with COPY."""
        stamps = self.series.stamps(first, count).strftime("%Y-%m-%d %H:%M:%S+00")
        now = pd.Timestamp.now("UTC").strftime("%Y-%m-%d %H:%M:%S.%f+00")  # each load its own ingested_at
        block = max(1, ROWS_PER_COPY // count)
        for start in range(0, self.options.kpis, block):
            indices = range(start, min(start + block, self.options.kpis))
            values = {i: self.series.values(i, first, count) for i in indices}
            bench_store.copy_csv(
                engine,
                "kpi_observations",
                bench_store.OBSERVATION_COPY_COLUMNS,
                (self._csv(i, stamps, values[i], now, None) for i in indices),
            )
            if scored:
                bench_store.copy_csv(
                    engine,
                    "anomaly_scores",
                    bench_store.SCORE_COPY_COLUMNS,
                    (self._csv(i, stamps, values[i], now, version) for i in indices),
                )
                # On the grid, without gaps: cleaned as observed (bench_store.mark_cleaned).
                bench_store.copy_csv(
                    engine,
                    "kpi_cleaned",
                    bench_store.CLEANED_COPY_COLUMNS,
                    (self._cleaned_csv(i, stamps, values[i]) for i in indices),
                )
            self.say(
                f"loaded {indices[-1] + 1:,} of {self.options.kpis:,} KPIs "
                f"({count:,} points each{', scored' if scored else ''})"
            )

    def _cleaned_csv(self, i: int, stamps, values: np.ndarray) -> str:
        """kpi, ts, value, filled, gap: on the grid, nothing filled, no gap."""
        frame = pd.DataFrame({"kpi": self.series.name(i), "ts": stamps, "value": values, "filled": "f", "gap": "f"})
        return _as_csv(frame)

    def _csv(self, i: int, stamps, values: np.ndarray, now: str, version: str | None) -> str:
        name = self.series.name(i)
        if version is None:  # kpi, ts, value, ingested_at, source
            frame = pd.DataFrame({"kpi": name, "ts": stamps, "value": values, "ingested_at": now, "source": "bench"})
        else:  # kpi, ts, value, expected, score, is_anomaly, model_version, scored_at
            frame = pd.DataFrame(
                {
                    "kpi": name,
                    "ts": stamps,
                    "value": values,
                    "expected": values,
                    "score": 0.1,
                    "is_anomaly": "f",
                    "model_version": version,
                    "scored_at": now,
                }
            )
        return _as_csv(frame)

    @property
    def step_us(self) -> int:
        """The KPIs' grid step in microseconds."""
        return int(pd.Timedelta(self.options.freq) / pd.Timedelta(microseconds=1))

    def add_new_points(self, engine) -> None:
        """The next hourly run's new points of every KPI (1 per KPI, 60 at 1min)."""
        self.load(engine, self.next_slot, self.new, scored=False, version="")
        self.next_slot += self.new

    # -- models

    def train_templates(self, engine) -> tuple[str, float]:
        """Fit one model per shape on that KPI's whole history, register it (train end: the
        last history point) and copy its rows to every KPI of the shape; returns the version
        and the bytes per KPI."""
        series, config = self.series, _detector_config()
        train_end = series.stamps(series.history - 1, 1)[0]
        for t in range(series.templates):
            started = time.perf_counter()
            detector = EnsembleDetector(config).fit(
                series.stamps(0, series.history), series.values(t, 0, series.history)
            )
            pipeline._register(engine, series.name(t), [(detector, train_end)], pd.Timestamp.now("UTC"))
            self.say(
                f"trained the model of shape {t + 1} of {series.templates} ({time.perf_counter() - started:.1f} s)"
            )
        copies = {
            t: [series.name(i) for i in range(series.templates, self.options.kpis) if i % series.templates == t]
            for t in range(series.templates)
        }
        batch = 1000
        for t, kpis in copies.items():
            for start in range(0, len(kpis), batch):
                bench_store.copy_models(engine, series.name(t), kpis[start : start + batch])
            if kpis:
                self.say(f"copied the model of shape {t + 1} to {len(kpis):,} KPIs")
        sizes = bench_store.model_bytes(engine, [series.name(t) for t in range(series.templates)])
        return (train_end.strftime(pipeline.VERSION_FORMAT), sum(sizes.values()) / len(sizes))

    # -- measurements

    def scoring(self, engine, days: int, window: int) -> tuple[Measure, float]:
        """A materialised scoring run and the functions profiled, each after new points;
        returns the materialisation and the floor (the faster of one before and one after)."""
        self.add_new_points(engine)
        before = bench_store.scoring_floor(engine, self.names, window, self.new)
        self.say(
            f"{days} d: floor {before.seconds:.2f} s ({before.rows_read:,} rows read, "
            f"{before.rows_written:,} written); running scoring_job ..."
        )
        run = _in_process(_scoring_job_run, self.url)
        expected = self.new * self.options.kpis
        if run.detail["points_scored"] != expected or run.detail["failed"]:
            raise RuntimeError(
                f"the scoring run scored {run.detail['points_scored']} points, "
                f"not {expected}; failed: {run.detail['failed']}"
            )
        after = bench_store.scoring_floor(engine, self.names, window, self.new)
        floor = min(before.seconds, after.seconds)
        self.say(
            f"{days} d: run {run.seconds:.2f} s, floor again {after.seconds:.2f} s; profiling the asset's functions ..."
        )
        self.add_new_points(engine)
        profile = _in_process(_profiled_scoring, self.url)
        models = bench_store.newest_model_bytes(engine, self.names)
        top = ", ".join(f"{name} {seconds:.2f}" for name, seconds in list(profile.detail["by_query"].items())[:4])
        steps = ", ".join(f"{name} {seconds:.2f}" for name, seconds in run.detail["steps"].items())
        self.report(
            f"scoring at {days} d: run {run.seconds:.2f} s (scoring_job in process, peak RSS "
            f"{run.peak_mib:.0f} MiB; steps: {steps} s); floor {floor:.2f} s "
            f"(+{models:.2f} s to read the newest models' bytes) -> {run.seconds / floor:.1f}x "
            f"floor; anomaly_scores' function alone {profile.seconds:.2f} s: "
            f"queries {profile.detail['queries']:.2f} s, "
            f"model load {profile.detail['model_load']:.2f} s, compute "
            f"{profile.detail['compute']:.2f} s, peak RSS {profile.peak_mib:.0f} MiB; "
            f"slowest store calls: {top}"
        )
        return run, floor

    def retraining(self, engine) -> None:
        """KPIs retrained per minute in one and in two processes, on separate small subsets
        (each KPI has scored points newer than its model)."""
        kpis, wanted = self.options.kpis, self.options.retrain_kpis
        size = max(1, min(wanted, (kpis - 1) // 2))
        first = kpis - 1 - 2 * size
        one, two = self.names[first + size : first + 2 * size], self.names[max(0, first) : first + size]
        self.say(f"retraining {len(one)} KPIs in one process ...")
        single = _in_process(_retrain, self.url, one)
        rate_one = len(one) / single.seconds * 60
        self.say(f"retraining {len(two)} other KPIs in two processes ...")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=context) as pool:
            for warm in [pool.submit(_warm) for _ in range(2)]:
                warm.result()
            started = time.perf_counter()
            halves = [two[0::2], two[1::2]]
            done = [pool.submit(_retrain, self.url, half) for half in halves if half]
            measures = [future.result() for future in done]
            seconds = time.perf_counter() - started
        rate_two = len(two) / seconds * 60
        statuses = single.detail["statuses"] + [s for m in measures for s in m.detail["statuses"]]
        if set(statuses) != {"trained"}:
            raise RuntimeError(f"retraining did not train every KPI: {statuses}")
        hours = {label: self.options.kpis / rate / 60 for label, rate in (("1", rate_one), ("2", rate_two))}
        cpu_one = single.detail["cpu"] / len(one)
        cpu_two = sum(m.detail["cpu"] for m in measures) / len(two)
        self.report(
            f"retraining ({self.options.days} d of history): {rate_one:.1f} KPIs/min in 1 process "
            f"({len(one)} KPIs, {single.seconds:.1f} s, peak RSS {single.peak_mib:.0f} MiB), "
            f"{rate_two:.1f} KPIs/min in 2 ({len(two)} KPIs, {seconds:.1f} s, peak RSS "
            f"{max(m.peak_mib for m in measures):.0f} MiB each at most; x{rate_two / rate_one:.2f}); "
            f"all {self.options.kpis:,} KPIs at these rates: {hours['1']:.2f} h / {hours['2']:.2f} h "
            "(extrapolated linearly: every KPI here has the same history, and KPIs retrain "
            f"independently); CPU per KPI {cpu_one:.2f} s in 1 process, {cpu_two:.2f} s in 2 (on "
            "two idle cores the speed-up of 2 processes is about 2 x the first over the second)"
        )

    def registry(self, engine) -> float:
        """Registry KB per KPI after ``retrain_days`` simulated days of one KPI."""
        days, i = self.options.retrain_days, self.options.kpis - 1
        self.say(f"simulating {days} days of scoring and retraining {self.series.name(i)} ...")
        first = self.next_slot
        measure = _in_process(_simulate_retrains, self.url, self.series, i, first, days)
        self.next_slot = first + days * self.per_day
        kb = measure.detail["bytes"] / 1024
        self.report(
            f"registry after {days} simulated daily retrains of one KPI: "
            f"{measure.detail['versions']} versions, {kb:,.0f} KB "
            f"({kb / max(measure.detail['versions'], 1):,.0f} KB per version; "
            f"{measure.detail['trained']} retrains, {measure.seconds:.1f} s, peak RSS "
            f"{measure.peak_mib:.0f} MiB; retention as configured: versions within "
            f"{_rescore_horizon()} of the newest scored point, and the newest)"
        )
        return kb

    def run(self) -> BenchReport:
        options, series = self.options, self.series
        self.url = bench_store.create_database(options.server_url)
        self.say(f"database {self.url.rsplit('/', 1)[-1]} created")
        try:
            engine = pipeline.open_store(self.url)
            version, model_bytes = self.train_templates(engine)
            short = min(SHORT_DAYS, options.days) * self.per_day
            self.load(engine, series.history - short, short, scored=True, version=version)
            bench_store.mark_cleaned(engine, self.step_us)
            self.report(
                f"bench: {options.kpis:,} KPIs x {options.days} d at {options.freq} "
                f"({series.history:,} points each), {self.new} new point(s) per KPI per run; "
                f"models: {series.templates} trained (one per shape of series) and their "
                f"registry rows copied to every KPI ({model_bytes / 1024:,.0f} KB per KPI)"
            )
            window = EnsembleDetector(_detector_config()).context_points + pipeline.SCORING_SLACK_POINTS + self.new + 1
            bench_store.vacuum(engine)
            short_run, short_floor = self.scoring(engine, min(SHORT_DAYS, options.days), window)
            long_run, long_floor = short_run, short_floor
            if options.days > SHORT_DAYS:
                self.load(engine, 0, series.history - short, scored=True, version=version)
                bench_store.mark_cleaned(engine, self.step_us)
                bench_store.vacuum(engine)
                long_run, long_floor = self.scoring(engine, options.days, window)
            self.retraining(engine)
            registry_kb = self.registry(engine) if options.retrain_days > 0 else None
            engine.dispose()
        finally:
            if not options.keep:
                bench_store.drop_database(self.url)
                self.say("database dropped")
            else:
                self.say(f"database kept: {self.url}")
        return BenchReport(
            self.lines,
            ratio=long_run.seconds / long_floor,
            history_ratio=long_run.seconds / short_run.seconds,
            peak_mib=max(short_run.peak_mib, long_run.peak_mib),
            registry_kb=registry_kb,
            url=self.url,
        )


def run_bench(options: BenchOptions, say: Say = print) -> BenchReport:
    """Build the database, measure, drop it (unless ``keep``); returns the report, whose
    ``summary`` is the one-line result."""
    return _Bench(options, say).run()
