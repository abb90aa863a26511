"""The compose stack, run as local processes from docker-compose.yml itself: new rows with a
spike land in Postgres, the daemon's sensor launches a run through the code server, the anomaly
is scored, the alert email reaches an SMTP sink, the API serves the score and the dashboard
answers.

No container runtime can pull images here, so every service built from this project's image
runs as a process with the command, environment, mounts and health check that
docker-compose.yml gives it (``LocalStack`` in compose.py says what is rewritten: host names,
ports, image paths). PostgreSQL is the local server (two fresh databases, KPI and Dagster),
mailpit is an aiosmtpd sink. A service added to the compose file is started here too, so the
compose file cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline import store
from kpi_pipeline_tests.alerts.servers import SmtpServer, free_port
from kpi_pipeline_tests.defs.harness import HOUR, orders
from kpi_pipeline_tests.deploy.compose import (
    ENV_EXAMPLE,
    LocalStack,
    depends_on,
    load_compose,
    project_services,
    read_env_file,
)

pytestmark = pytest.mark.postgres

HISTORY_HOURS = 21 * 24  # enough for a model whose band makes the spike clear-cut
NOW = pd.Timestamp.now("UTC").floor("h")
START = NOW - (HISTORY_HOURS + 24) * HOUR
SPIKE = START + (HISTORY_HOURS + 10) * HOUR

STARTUP_TIMEOUT_S = 240.0
"""Longest wait for one service to become healthy (or, for migrate, to finish)."""
RUN_TIMEOUT_S = 420.0
"""Longest wait for a sensor-launched run to succeed (training included, on a busy machine)."""
ALERT_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0

SENSOR_INTERVAL_S = "2"
"""The sensors' minimum interval for the test; the compose default (30 s) only adds waiting."""

SERVICES = {"migrate", "dagster-code", "dagster-webserver", "dagster-daemon", "api", "dashboard"}
"""The project's services a plain ``docker compose up`` starts; the test fails if the compose
file's list changes, so a new service is added here knowingly."""


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- {self.name} (exit {self.process.poll()}) ---\n" + "\n".join(text[-lines:])


class Stack:
    """The started services; ``stop`` ends each one's process group (it started them all)."""

    def __init__(self, local: LocalStack) -> None:
        self.local = local
        self.services: dict[str, Service] = {}
        (local.root / "logs").mkdir(parents=True, exist_ok=True)
        self.workdir = local.root / "opt" / "kpi"  # the image's WORKDIR
        self.workdir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str) -> Service:
        self.local.prepare_mounts(name)
        log = self.local.root / "logs" / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.local.command(name),
                env=self.local.env(name),
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() ends its children too
            )
        self.services[name] = Service(name, process, log)
        return self.services[name]

    def logs(self) -> str:
        return "\n".join(service.tail() for service in self.services.values())

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n{self.logs()}", pytrace=False)

    def wait_until(self, what: str, condition: Callable[[], object], timeout: float):
        """Polls ``condition`` until it returns something truthy; fails, with every service's
        log, after ``timeout`` seconds or as soon as a long-running service exits."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            died = [s.name for s in self.services.values() if s.process.poll() is not None and s.name != "migrate"]
            if died:
                self.fail(f"while waiting for {what}: {', '.join(died)} exited")
            if time.monotonic() > deadline:
                self.fail(f"gave up after {timeout:.0f} s waiting for {what}")
            time.sleep(1.0)

    def healthy(self, name: str) -> bool:
        """The service's compose health check, run as a local command, passes."""
        command = self.local.healthcheck(name)
        try:
            return (
                subprocess.run(
                    command,
                    env=self.local.env(name),
                    cwd=self.workdir,
                    capture_output=True,
                    timeout=30,
                    check=False,
                ).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def up(self) -> None:
        """Starts the services in compose's order: a service starts once each dependency has
        met its ``depends_on`` condition (PostgreSQL and mailpit are already there)."""
        compose = self.local.compose["services"]
        names = project_services(self.local.compose)
        done: set[str] = set()
        while len(done) < len(names):
            wave = [
                name
                for name in names
                if name not in done and all(dep in done or dep not in names for dep in depends_on(compose[name]))
            ]
            if not wave:
                self.fail(f"depends_on has a cycle among {sorted(set(names) - done)}")
            for name in wave:
                self.start(name)
            for name in wave:
                self._wait_ready(name, compose)
            done.update(wave)

    def _wait_ready(self, name: str, compose: dict) -> None:
        conditions = {
            condition for other in compose.values() for dep, condition in depends_on(other).items() if dep == name
        }
        service = self.services[name]
        if "service_completed_successfully" in conditions:
            try:
                code = service.process.wait(timeout=STARTUP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.fail(f"{name} did not finish within {STARTUP_TIMEOUT_S:.0f} s")
            if code != 0:
                self.fail(f"{name} exited with status {code}")
        else:
            self.wait_until(f"{name} to pass its health check", lambda: self.healthy(name), STARTUP_TIMEOUT_S)

    def stop(self) -> None:
        running = [s for s in self.services.values() if s.process.poll() is None]
        for service in running:
            _signal_group(service.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for service in running:
            try:
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for service in self.services.values():
            # Children (the code server's run workers) may outlive their parent's exit.
            _signal_group(service.process, signal.SIGKILL)
            service.process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


RUNS_QUERY = """
{ runsOrError { __typename ... on Runs { results {
    runId jobName status tags { key value } } } } }
"""


def _runs(webserver: str) -> list[dict]:
    """Every run the Dagster UI knows, through its GraphQL API."""
    request = urllib.request.Request(
        f"{webserver}/graphql",
        data=json.dumps({"query": RUNS_QUERY}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        raise AssertionError(f"GraphQL answered {error.code}: {error.read()[:2000]!r}") from None
    return body["data"]["runsOrError"]["results"]


@pytest.fixture
def stack(new_pg_url, tmp_path) -> Iterator[tuple[Stack, SmtpServer, sa.Engine]]:
    kpi_url, dagster_url = sa.make_url(new_pg_url()), sa.make_url(new_pg_url())
    smtp = SmtpServer().start()
    # As `cp .env.example .env`, with the test's database server, databases and intervals.
    env = {
        **read_env_file(ENV_EXAMPLE),
        "POSTGRES_USER": kpi_url.username,
        "POSTGRES_PASSWORD": kpi_url.password or "unused-with-trust-auth",
        "POSTGRES_DB": kpi_url.database,
        "DAGSTER_PG_DB": dagster_url.database,
        "KPI_NEW_DATA_SENSOR_INTERVAL": SENSOR_INTERVAL_S,
        "KPI_ALERT_SENSOR_INTERVAL": SENSOR_INTERVAL_S,
        # Only the sensors act, so every run the test sees is one a sensor asked for.
        "KPI_AUTOMATION_OFF": "hourly_scoring_schedule,daily_training_schedule",
        # The rows land hours behind the clock, which would be an ongoing outage, alerted as
        # one (alerts/test_ongoing_outage.py, defs/test_end_to_end.py): the spike alone here.
        "KPI_OUTAGE_AFTER_INTERVALS": "1000",
    }
    local = LocalStack(load_compose(env), tmp_path / "stack")
    local.addresses[("postgres", 5432)] = (kpi_url.host, kpi_url.port or 5432)
    local.addresses[("mailpit", 1025)] = ("127.0.0.1", smtp.port)
    local.allocate(free_port)
    running = Stack(local)
    engine = store.make_engine(kpi_url.render_as_string(hide_password=False))
    try:
        yield running, smtp, engine
    finally:
        running.stop()
        engine.dispose()
        smtp.stop()


def test_compose_stack_scores_alerts_and_serves_a_new_anomaly(stack):
    running, smtp, engine = stack
    local = running.local
    assert set(project_services(local.compose)) == SERVICES
    running.up()

    webserver = f"http://127.0.0.1:{local.local_port('dagster-webserver', 3000)}"
    api = f"http://127.0.0.1:{local.local_port('api', 8000)}"
    dashboard = f"http://127.0.0.1:{local.local_port('dashboard', 8501)}"

    def succeeded(job: str) -> Callable[[], list[dict]]:
        def runs() -> list[dict]:
            try:
                found = [run for run in _runs(webserver) if run["jobName"] == job]
            except AssertionError as error:
                running.fail(str(error))  # with every service's log
            failed = [run for run in found if run["status"] in {"FAILURE", "CANCELED"}]
            if failed:
                running.fail(f"{job} run {failed[0]['runId']} ended {failed[0]['status']}")
            return [run for run in found if run["status"] == "SUCCESS"]

        return runs

    def tags_of(run: dict) -> dict[str, str]:
        return {tag["key"]: tag["value"] for tag in run["tags"]}

    # History lands: the sensor asks for a training run of the KPI's shard, which the daemon
    # dequeues and launches through the code server; once it succeeds, another sensor asks for
    # a scoring run. The first scoring of history alerts nobody.
    store.upsert_observations(engine, orders(START, HISTORY_HOURS), "test")
    [training] = running.wait_until(
        "the sensor's training_job run to succeed", succeeded("training_job"), RUN_TIMEOUT_S
    )
    assert tags_of(training)["dagster/sensor_name"] == "new_kpi_data_sensor"

    def scored_after_training() -> list[dict]:
        return [
            run
            for run in succeeded("scoring_job")()
            if tags_of(run).get("dagster/sensor_name") == "score_after_training_sensor"
        ]

    running.wait_until("the scoring run after training to succeed", scored_after_training, RUN_TIMEOUT_S)
    with engine.connect() as connection:
        scored = connection.execute(sa.text("SELECT count(*) FROM anomaly_scores WHERE kpi = 'orders'")).scalar_one()
    assert scored > 0, "the bootstrap run scored no history"

    # New rows with a spike: scored by a sensor-launched scoring run, flagged, alerted by email.
    store.upsert_observations(engine, orders(START, HISTORY_HOURS + 24, spikes=(SPIKE,)), "test")

    def spike_scored() -> list[pd.Timestamp]:
        succeeded("scoring_job")()  # fails the test at once if a scoring run failed
        found = store.load_anomalies(engine, kpi="orders", since=START + HISTORY_HOURS * HOUR, min_severity="high")
        return list(found["ts"])

    flagged = running.wait_until("a sensor's scoring_job run to score the spike", spike_scored, RUN_TIMEOUT_S)
    assert flagged == [SPIKE]

    running.wait_until("the alert email at the SMTP sink", lambda: smtp.received, ALERT_TIMEOUT_S)
    [mail] = smtp.received  # one: the history's first scoring alerted nobody
    # The compose defaults route email to mailpit (here the sink) from and to these addresses.
    assert mail.sender == "kpi-pipeline@localhost"
    assert mail.recipients == ["oncall@localhost"]
    assert "orders" in mail.message["Subject"]
    assert SPIKE.strftime("%Y-%m-%d %H:%M UTC") in mail.message.get_body(("plain",)).get_content()

    # The API serves the new score; the dashboard answers.
    status, body = _get(f"{api}/v1/anomalies?kpi=orders")
    assert status == 200, body
    served = [pd.Timestamp(item["timestamp"]) for item in json.loads(body)["anomalies"]]
    assert SPIKE in served
    spike = SPIKE.isoformat().replace("+00:00", "Z")
    status, body = _get(f"{api}/v1/kpis/orders/scores?start={spike}&end={spike}")
    assert status == 200, body
    [point] = json.loads(body)["points"]
    assert point["is_anomaly"] and point["severity"] in {"high", "critical"}

    status, body = _get(f"{dashboard}/")
    assert status == 200 and b"<html" in body.lower()
    assert _get(f"{dashboard}/_stcore/health") == (200, b"ok")

    # Dagster logs storage and launch errors with their stack and carries on: none may have
    # happened (a daemon error is logged as "Caught error: ... Stack Trace:").
    for name in ("dagster-code", "dagster-daemon", "dagster-webserver"):
        service = running.services[name]
        log = service.log.read_text(errors="replace")
        assert not re.search(r"Traceback|Stack Trace:", log), service.tail(60)
