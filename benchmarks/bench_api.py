"""Load benchmark of the API sidecar: throughput and latency of its hot endpoints.

    .venv/bin/kpi-pipeline bench-api            (or: .venv/bin/python benchmarks/bench_api.py)

1. Creates a scratch Postgres database (dropped at the end) and seeds it through ``store``:
   ``--kpis`` KPIs x ``--days`` days of hourly observations and scores, and one trained model
   (Prophet + Isolation Forest, fitted once) registered for the first ``--model-kpis`` KPIs;
   then VACUUM ANALYZE and CHECKPOINT, so it is measured as a settled database. (``--database``
   reuses one kept by ``--keep-database`` instead.)
2. Starts ``kpi-pipeline api`` with ``--workers`` uvicorn workers on a free loopback port, and
   waits until every worker has warmed its series cache (its log says so).
3. From a second process, drives each endpoint for ``--duration`` seconds in all (after
   sending each distinct request 3 times) with ``--clients`` concurrent keep-alive
   connections, each sending its next request as soon as the previous answer arrives, and
   reports requests/s and p50/p99 latency per endpoint, and each endpoint's throughput as a
   ratio of the trivial ``GET /health/live`` measured in the same run. The endpoints take
   turns in ``--rounds`` rounds of ``duration / rounds`` seconds each (every turn after a
   ``--warmup``, during whose first half the connections open one by one), so that a slow
   spell of a shared machine falls on all of them alike rather than on one; the report gives
   the ratio over all rounds and its range over the rounds.

The load generator speaks HTTP/1.1 over raw asyncio streams, so that on a small machine the
client costs far less CPU than the server it measures; client and server still share the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

DEFAULT_ADMIN_URL = os.environ.get(
    "KPI_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
API_KEY = "bench-api-key"
START = pd.Timestamp("2025-01-01", tz="UTC")
TRIVIAL = "GET /health/live"
MODEL_VERSION = "bench"


# -- seeding --------------------------------------------------------------------------------


def kpi_names(count: int) -> list[str]:
    return [f"kpi_{index:04d}" for index in range(count)]


def synthetic_series(kpis: list[str], days: int, seed: int = 0) -> pd.DataFrame:
    """Hourly observations (kpi, ts, value): a level per KPI, a daily cycle, 3% noise."""
    ts = pd.date_range(START, periods=24 * days, freq="h")
    rng = np.random.default_rng(seed)
    levels = rng.uniform(50, 5000, len(kpis))[:, None]
    cycle = 1 + 0.3 * np.sin(2 * np.pi * ts.hour.to_numpy() / 24)[None, :]
    values = levels * cycle * (1 + 0.03 * rng.standard_normal((len(kpis), len(ts))))
    return pd.DataFrame(
        {
            "kpi": np.repeat(kpis, len(ts)),
            "ts": np.tile(ts.to_numpy(), len(kpis)),
            "value": values.ravel(),
        }
    )


def synthetic_scores(observations: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """Score rows shaped like the pipeline's, ~0.5% of them anomalies; values do not matter
    for throughput, only the row count and width."""
    rng = np.random.default_rng(seed)
    n = len(observations)
    expected = observations["value"].to_numpy() * (1 + 0.02 * rng.standard_normal(n))
    score = rng.beta(1.2, 12, n)
    anomalous = rng.random(n) < 0.005
    score[anomalous] = rng.uniform(0.5, 0.95, anomalous.sum())
    severity = pd.cut(score, [0.5, 0.6, 0.7, 0.8, 1.0], right=False,
                      labels=["low", "medium", "high", "critical"]).astype(object)
    return observations.assign(
        expected=expected,
        lower=expected * 0.9,
        upper=expected * 1.1,
        prophet_score=score,
        iforest_score=score / 2,
        score=score,
        is_anomaly=anomalous,
        severity=np.where(anomalous, severity, None),
        flagged_by=np.where(anomalous, "prophet", None),
        event_id=None,
        model_version=MODEL_VERSION,
    )


def seed(url: str, kpis: list[str], days: int, model_kpis: int, log) -> None:
    from kpi_pipeline import store
    from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector

    engine = store.make_engine(url)
    store.migrate(engine)
    observations = synthetic_series(kpis, days)
    started = time.perf_counter()
    chunk = 100 * 24 * days  # 100 KPIs per write keeps memory and transactions small
    for offset in range(0, len(observations), chunk):
        part = observations.iloc[offset : offset + chunk]
        store.upsert_observations(engine, part, "bench")
        store.upsert_scores(engine, synthetic_scores(part))
    log(f"seeded {len(observations):,} observations and scores of {len(kpis)} KPIs "
        f"in {time.perf_counter() - started:.0f} s")

    first = observations[observations["kpi"] == kpis[0]]
    cutoff = len(first) * 2 // 3
    training = first.iloc[:cutoff]
    detector = EnsembleDetector(DetectorConfig()).fit(training["ts"], training["value"])
    for kpi in kpis[:model_kpis]:
        for kind, artifact in detector.to_artifacts().items():
            store.save_model(
                engine, kpi=kpi, kind=kind, version=MODEL_VERSION, trained_at=utc_now(),
                train_start=detector.train_start_, train_end=first["ts"].iloc[cutoff - 1],
                n_points=detector.n_train_points_, params=detector.config.to_dict(),
                metrics=detector.metrics_, artifact=artifact,
            )
    log(f"registered one trained model for {model_kpis} KPIs")
    engine.dispose()
    settle(url)
    log("vacuumed, analysed and checkpointed")


def settle(url: str) -> None:
    """Leave the freshly loaded database as a long-running one is: statistics gathered, the
    visibility map set (index-only scans), and the bulk load's dirty pages written out, so that
    neither a first plan without statistics nor a checkpoint after 1.4 M inserts lands in the
    middle of a measurement."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
        connection.exec_driver_sql("CHECKPOINT")
    engine.dispose()


def utc_now() -> pd.Timestamp:
    return pd.Timestamp.now("UTC")


# -- load generation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    requests: list[bytes]
    """Raw HTTP/1.1 requests, sent in rotation."""


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    round_rps: list[float]
    """Requests/s in each round."""


def http_request(method: str, path: str, body: dict | None = None) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"X-API-Key: {API_KEY}"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def scenarios(kpis: list[str], days: int, model_kpis: int, series_limits: Sequence[int]):
    after = START + pd.Timedelta(days=days)
    score_requests = [
        http_request("POST", "/v1/score", {
            "kpi": kpi,
            "points": [{"timestamp": (after + pd.Timedelta(hours=hour)).isoformat(),
                        "value": 1000.0 + hour}],
        })
        for kpi in kpis[:model_kpis]
        for hour in range(3)
    ]
    return [
        Scenario(TRIVIAL, [http_request("GET", "/health/live")]),
        Scenario("GET /health", [http_request("GET", "/health")]),
        Scenario("GET /v1/scores/latest?kpi=…",
                 [http_request("GET", f"/v1/scores/latest?kpi={kpi}") for kpi in kpis]),
        *(
            Scenario(f"GET /v1/kpis/{{kpi}}/scores?limit={limit}",
                     [http_request("GET", f"/v1/kpis/{kpi}/scores?limit={limit}") for kpi in kpis])
            for limit in series_limits
        ),
        Scenario("POST /v1/score (1 point)", score_requests),
    ]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            await reader.readexactly(int(value))
            return status
    raise RuntimeError(f"response without Content-Length: {head[:200]!r}")


STALL_S = 60.0
"""No answer to any connection for this long: the API stalled, and the benchmark stops."""


async def _watch(answers: list, what: str) -> None:
    """Raise if ``answers`` stops growing for ``STALL_S`` (cancel it when done). A check every
    few seconds, rather than a timeout per request, which would cost the client CPU time."""
    seen, since = -1, time.monotonic()
    while True:
        await asyncio.sleep(min(5.0, STALL_S / 4))
        if len(answers) != seen:
            seen, since = len(answers), time.monotonic()
        elif time.monotonic() - since > STALL_S:
            raise RuntimeError(f"{what}: no answer for {STALL_S:.0f} s; the API stalled")


async def _watched(answers: list, what: str, *clients) -> None:
    watchdog = asyncio.ensure_future(_watch(answers, what))
    try:
        done = asyncio.gather(*clients)
        finished, _ = await asyncio.wait({done, watchdog}, return_when=asyncio.FIRST_COMPLETED)
        if watchdog in finished:
            done.cancel()
            watchdog.result()  # raises
        await done
    finally:
        watchdog.cancel()


async def _drive(port: int, scenario: Scenario, clients: int, warmup: float, seconds: float):
    """Latencies (s) and statuses of every answer to a request sent in the ``seconds`` after
    ``warmup``, and the time measured. The connections open one by one over the first half of
    the warm-up and are kept for the measurement: a burst of connections opened together is
    split between the workers by whichever accepts first, often unevenly, while one opened
    under load tends to go to the less busy worker."""
    latencies: list[float] = []
    statuses: list[int] = []
    began = time.perf_counter()
    measured_from = began + warmup
    deadline = measured_from + seconds

    async def client(offset: int) -> None:
        await asyncio.sleep(offset * warmup / 2 / clients)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = offset
        try:
            while True:
                started = time.perf_counter()
                if started >= deadline:
                    return
                writer.write(scenario.requests[sent % len(scenario.requests)])
                sent += clients
                status = await _read_response(reader)
                answered.append(None)
                if started >= measured_from:
                    latencies.append(time.perf_counter() - started)
                    statuses.append(status)
        finally:
            writer.close()

    answered: list[None] = []
    await _watched(answered, scenario.name, *(client(offset) for offset in range(clients)))
    return latencies, statuses, time.perf_counter() - measured_from


PRIMING_ROUNDS = 3


async def _prime(port: int, scenario: Scenario, clients: int, rounds: int) -> None:
    """Send every distinct request ``rounds`` times, over ``clients`` connections: what the
    workers load on first use (a KPI's scorer: its model, its observations judged) is loaded
    by each worker with near certainty (a KPI's requests reach a given one of two workers none
    of 3 x 3 times with probability 0.2%), so the timed phases measure the steady state. The
    first load of a KPI is measured apart (see docs/api.md)."""
    pending = iter(list(scenario.requests) * rounds)
    answered: list[None] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in pending:
                writer.write(request)
                await _read_response(reader)
                answered.append(None)
        finally:
            writer.close()

    await _watched(answered, f"priming {scenario.name}", *(client() for _ in range(clients)))


def summarise(scenario: Scenario, turns: list[tuple[list[float], list[int], float]]
              ) -> Result:
    """One scenario's turns (latencies, statuses, seconds measured) as one Result."""
    latencies = [latency for turn in turns for latency in turn[0]]
    statuses = [status for turn in turns for status in turn[1]]
    elapsed = sum(turn[2] for turn in turns)
    milliseconds = np.asarray(latencies) * 1000
    counted = pd.Series(statuses, dtype=int).value_counts()
    return Result(
        name=scenario.name,
        requests=len(latencies),
        errors=int(sum(count for status, count in counted.items() if status >= 400)),
        seconds=elapsed,
        rps=len(latencies) / elapsed,
        p50_ms=float(np.percentile(milliseconds, 50)) if len(latencies) else float("nan"),
        p99_ms=float(np.percentile(milliseconds, 99)) if len(latencies) else float("nan"),
        statuses={str(status): int(count) for status, count in counted.items()},
        round_rps=[len(turn[0]) / turn[2] for turn in turns],
    )


def load_generator(port: int, plan: list[Scenario], clients: int, seconds: float,
                   warmup: float, rounds: int, results) -> None:
    """The second process: primes every scenario, then runs them in turn, ``rounds`` times,
    ``seconds / rounds`` each; puts each scenario's Result, then None."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    for scenario in plan:
        asyncio.run(_prime(port, scenario, clients, PRIMING_ROUNDS))
    turns: dict[str, list] = {scenario.name: [] for scenario in plan}
    for round_number in range(1, rounds + 1):
        for scenario in plan:
            turns[scenario.name].append(
                asyncio.run(_drive(port, scenario, clients, warmup, seconds / rounds))
            )
        print(f"round {round_number}/{rounds} done", file=sys.stderr, flush=True)
    for scenario in plan:
        results.put(summarise(scenario, turns[scenario.name]))
    results.put(None)


# -- orchestration --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the API exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the API did not answer within {timeout:.0f} s")


def wait_until_settled(log_path: Path, workers: int, log, timeout: float = 60) -> None:
    """Wait until every worker has warmed its series cache (or given up warming): warming
    loads every KPI's newest scores, seconds of CPU per worker, which would otherwise slow
    down whichever endpoint is measured first (the trivial one, the baseline of the ratios).
    With the series cache configured off nothing is logged: this waits ``timeout`` s."""
    from kpi_pipeline.api import series_cache

    settled_lines = (series_cache.WARMED, series_cache.NOT_WARMED, series_cache.WARMING_STOPPED)
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        done = sum(text.count(line) for line in settled_lines)
        if done >= workers or series_cache.CONFIGURED_OFF in text:
            log(f"workers settled (series caches warmed) after {time.monotonic() - started:.1f} s")
            return
        time.sleep(0.5)
    log(f"workers not settled after {timeout:.0f} s: measuring anyway")


def start_api(url: str, port: int, workers: int, log_path: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-c", "from kpi_pipeline.cli import app; app()",
        "--database-url", url, "api", "--port", str(port), "--workers", str(workers),
    ]
    env = {**os.environ, "KPI_API_KEYS": API_KEY}
    with log_path.open("w") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def _next_result(results, driver) -> Result | None:
    """The load generator's next Result (None: it is done); an error if it died instead."""
    while True:
        try:
            return results.get(timeout=2.0)
        except queue.Empty:
            if not driver.is_alive():
                try:  # it may have put its last results just before exiting
                    return results.get(timeout=0.5)
                except queue.Empty:
                    pass
                raise RuntimeError(
                    f"the load generator exited with status {driver.exitcode} (its error is "
                    "above)"
                ) from None


def report(results: list[Result], trivial: Result) -> str:
    lines = [
        "| endpoint | requests | errors | req/s | p50 ms | p99 ms | throughput vs trivial "
        "| range over rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        per_round = [mine / theirs for mine, theirs in zip(result.round_rps, trivial.round_rps)
                     if theirs] or [float("nan")]
        lines.append(
            f"| `{result.name}` | {result.requests:,} | {result.errors} | {result.rps:,.0f} | "
            f"{result.p50_ms:.1f} | {result.p99_ms:.1f} | {result.rps / trivial.rps:.2f} "
            f"| {min(per_round):.2f}–{max(per_round):.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL,
                        help="Postgres URL allowed to CREATE/DROP DATABASE (default: %(default)s)")
    parser.add_argument("--kpis", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--model-kpis", type=int, default=20,
                        help="KPIs that get a trained model, for POST /v1/score")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per endpoint, over all rounds")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds before each endpoint's turn in each round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds in which the endpoints take turns (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--series-limit", type=int, action="append",
                        help="limit= of the series request; repeatable (default: 168 and 720)")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="only endpoints whose name contains TEXT; repeatable (the trivial "
                        "endpoint always runs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep-database", action="store_true",
                        help="do not drop the scratch database (its name is logged)")
    parser.add_argument("--database", metavar="NAME",
                        help="reuse this database, seeded by an earlier run with --keep-database "
                        "and the same --kpis/--days/--model-kpis, instead of seeding a new one; "
                        "it is kept")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = args.database or f"kpi_bench_api_{uuid.uuid4().hex[:8]}"
    keep = args.keep_database or args.database is not None
    if args.database is None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    kpis = kpi_names(args.kpis)
    server = None
    try:
        if args.database is None:
            seed(url, kpis, args.days, min(args.model_kpis, args.kpis), log)
        else:
            log(f"reusing database {name}")
        port = free_port()
        log_path = Path(tempfile.gettempdir()) / f"{name}.log"
        server = start_api(url, port, args.workers, log_path)
        wait_until_up(port, server)
        wait_until_settled(log_path, args.workers, log)
        log(f"API up on 127.0.0.1:{port} with {args.workers} workers (log: {log_path}); "
            f"{args.clients} clients, {args.duration:.0f} s per endpoint in {args.rounds} "
            "rounds")

        plan = [
            scenario
            for scenario in scenarios(kpis, args.days, min(args.model_kpis, args.kpis),
                                      args.series_limit or [168, 720])
            if scenario.name == TRIVIAL
            or not args.only
            or any(text in scenario.name for text in args.only)
        ]
        spawn = multiprocessing.get_context("spawn")
        results_queue = spawn.Queue()
        driver = spawn.Process(
            target=load_generator,
            args=(port, plan, args.clients, args.duration, args.warmup, args.rounds,
                  results_queue),
        )
        driver.start()
        results = []
        while (result := _next_result(results_queue, driver)) is not None:
            log(f"{result.name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.1f} ms, "
                f"p99 {result.p99_ms:.1f} ms, statuses {result.statuses}")
            results.append(result)
        driver.join()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if keep:
            log(f"database kept: {name}")
        else:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    trivial = next(result for result in results if result.name == TRIVIAL)
    print(f"\n{args.kpis} KPIs x {args.days} days hourly, {args.clients} clients, "
          f"{args.duration:.0f} s per endpoint in {args.rounds} rounds, "
          f"{args.workers} API workers, {os.cpu_count()} CPUs\n")
    print(report(results, trivial))
    if args.json:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=2))
    failed = [result.name for result in results if result.errors]
    if failed:
        print(f"\nendpoints with error responses: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
