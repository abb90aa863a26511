"""docker-compose.yml: Compose itself accepts it with .env.example, and every service is wired
the way the stack needs (image, command, health check, dependency conditions, loopback-only
ports, every variable documented in .env.example)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from kpi_pipeline.config import Settings
from kpi_pipeline.defs.jobs import SCORING_RUN_TAGS
from kpi_pipeline_tests.deploy.compose import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    MissingVariable,
    container_ports,
    depends_on,
    environment,
    healthcheck_command,
    interpolate,
    load_compose,
    project_services,
    raw_compose,
    read_env_file,
)

PROJECT_ROOT = COMPOSE_FILE.parent
DOCKER_COMPOSE = os.environ.get("KPI_TEST_DOCKER_COMPOSE", "docker-compose")
CONDITIONS = {"service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(read_env_file(ENV_EXAMPLE))


def _docker_compose(*args: str, env_file) -> subprocess.CompletedProcess:
    if shutil.which(DOCKER_COMPOSE) is None:
        pytest.skip(
            f"{DOCKER_COMPOSE} is not installed (scripts/ensure-docker-compose.sh "
            "installs Debian's docker-compose; `make test` runs it)"
        )
    # Only PATH from this environment: Compose lets shell variables override the env file.
    return subprocess.run(
        [
            DOCKER_COMPOSE,
            "--project-directory",
            str(PROJECT_ROOT),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
            *args,
        ],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- Compose's own validation ------------------------------------------------------------


@pytest.mark.parametrize("profile", [[], ["--profile", "celery"]], ids=["default", "celery"])
def test_docker_compose_accepts_the_file_with_env_example(profile):
    result = _docker_compose(*profile, "config", env_file=ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    password = read_env_file(ENV_EXAMPLE)["POSTGRES_PASSWORD"]
    url = resolved["services"]["api"]["environment"]["KPI_DATABASE_URL"]
    assert url == f"postgresql+psycopg://kpi:{password}@postgres:5432/kpi"


def test_docker_compose_refuses_to_start_without_a_postgres_password(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "".join(f"{key}={value}\n" for key, value in read_env_file(ENV_EXAMPLE).items() if key != "POSTGRES_PASSWORD")
    )
    result = _docker_compose("config", env_file=env_file)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


def test_the_stack_tests_interpolation_matches_docker_compose(compose):
    """The smoke test reads commands and environment through compose.py's interpolation:
    it must resolve the file exactly as Compose does."""
    result = _docker_compose("config", env_file=ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    for name in project_services(compose):
        ours = compose["services"][name]
        assert environment(resolved[name]) == environment(ours), name
        assert [str(arg) for arg in resolved[name]["command"]] == ours["command"], name


def test_interpolation_follows_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET}-${UNSET}-$SET-$$SET", env) == "x--x-$SET"
    assert interpolate("${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", env) == "d  d"
    assert interpolate("${SET:?no}", env) == "x"
    with pytest.raises(MissingVariable, match="EMPTY: needed"):
        interpolate("${EMPTY:?needed}", env)


# -- the services' wiring ------------------------------------------------------------------


def test_every_service_runs_an_image(compose):
    image = "${APP_IMAGE:-kpi-pipeline:latest}"
    for name, service in raw_compose()["services"].items():
        assert service.get("image"), f"{name} names no image"
        if "build" in service:
            # Built and tagged once, run by every role under the same name.
            assert service["image"] == image and service["build"]["context"] == ".", name
            assert service.get("command"), f"{name} must say which role the image plays"
        else:
            assert re.search(r":[\w.-]+$", service["image"]) and not service["image"].endswith(":latest"), (
                f"{name}: pin the image's tag"
            )


def test_long_running_services_have_health_checks_and_one_shots_are_awaited(compose):
    services = compose["services"]
    for name, service in services.items():
        awaited = {cond for other in services.values() for dep, cond in depends_on(other).items() if dep == name}
        if service.get("restart") == "no":
            assert awaited == {"service_completed_successfully"}, name
        else:
            test = (service.get("healthcheck") or {}).get("test")
            assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no health check"
            assert "service_completed_successfully" not in awaited, name


def test_dependencies_wait_for_health_or_completion(compose):
    services = compose["services"]
    for name, service in services.items():
        for dep, condition in depends_on(service).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert condition in CONDITIONS, f"{name} -> {dep}: {condition}"
            if services[dep].get("profiles"):
                assert service.get("profiles") == services[dep]["profiles"], (name, dep)
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    for name in set(project_services(compose)) - {"migrate"}:
        upstream, seen = set(), [name]
        while seen:  # every role waits, directly or not, for the migration
            for dep in depends_on(services[seen.pop()]):
                if dep not in upstream:
                    upstream.add(dep)
                    seen.append(dep)
        assert "migrate" in upstream, f"{name} may start before the schema exists"


def test_no_port_is_published_beyond_loopback():
    for name, service in raw_compose()["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_data_lives_in_named_volumes(compose):
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = str(mount).split(":")[0]
            if not source.startswith("."):
                assert source in declared, f"{name} mounts undeclared volume {source}"
            else:
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts missing {source}"
    assert "postgres-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]


def test_passwords_come_from_the_env_file():
    text = COMPOSE_FILE.read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
    assert "RABBITMQ_DEFAULT_PASS: ${RABBITMQ_PASSWORD:?" in text
    for name, service in raw_compose()["services"].items():
        for key, value in environment(service).items():
            if "PASSWORD" in key or "PASS" in key.split("_"):
                assert value.startswith("${"), f"{name}: {key} is written in the file"


def test_alert_email_goes_to_mailpit_by_default(compose):
    env = environment(compose["services"]["dagster-code"])
    assert env["KPI_SMTP_HOST"] == "mailpit"
    assert int(env["KPI_SMTP_PORT"]) in container_ports(compose["services"]["mailpit"])
    assert env["KPI_SMTP_STARTTLS"] == "false"
    assert env["KPI_ALERT_EMAIL_FROM"] and env["KPI_ALERT_EMAIL_TO"]
    # Settings parse what compose passes (an empty number would fail at import).
    Settings(**{key[4:].lower(): value for key, value in env.items() if key.startswith("KPI_") and value})


def test_dagster_services_share_the_production_instance_and_workspace(compose):
    workspace = yaml.safe_load((PROJECT_ROOT / "deploy" / "workspace.yaml").read_text())
    [server] = [location["grpc_server"] for location in workspace["load_from"]]
    code = compose["services"]["dagster-code"]
    assert server["host"] == "dagster-code"
    assert code["command"][code["command"].index("--port") + 1] == str(server["port"])
    assert healthcheck_command(code)[-1] == str(server["port"])
    for name in ("dagster-code", "dagster-webserver", "dagster-daemon"):
        service = compose["services"][name]
        home = environment(service)["DAGSTER_HOME"]
        assert f"./deploy/dagster.yaml:{home}/dagster.yaml:ro" in service["volumes"], name
    for name in ("dagster-webserver", "dagster-daemon"):
        assert "/opt/dagster/workspace.yaml" in compose["services"][name]["command"], name


def test_production_instance_uses_postgres_and_limits_scoring_runs():
    instance = yaml.safe_load((PROJECT_ROOT / "deploy" / "dagster.yaml").read_text())
    database = instance["storage"]["postgres"]["postgres_db"]
    assert {key: value["env"] for key, value in database.items() if isinstance(value, dict)} == {
        "hostname": "DAGSTER_PG_HOST",
        "port": "DAGSTER_PG_PORT",
        "db_name": "DAGSTER_PG_DB",
        "username": "DAGSTER_PG_USER",
        "password": "DAGSTER_PG_PASSWORD",
    }
    coordinator = instance["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    [(key, value)] = SCORING_RUN_TAGS.items()
    assert {"key": key, "value": value, "limit": 1} in coordinator["config"]["tag_concurrency_limits"]


def test_env_example_lists_every_variable():
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    assert used - listed == set(), "docker-compose.yml reads variables .env.example omits"
    settings = {f"KPI_{name.upper()}" for name in Settings.model_fields}
    assert settings - listed == set(), "settings missing from .env.example"
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            key = line.split("=", 1)[0]
            assert key in used | settings, f".env.example lists {key}, which nothing reads"
