"""Read docker-compose.yml as Compose does (YAML, then ``${VAR}`` interpolation), and turn the
services built from this project's image into commands that run as local processes.

No Docker engine runs on the test machines, so ``LocalStack`` stands in for one: each service's
command and environment come from the compose file, with the names and places that only exist
inside the compose network rewritten to this machine:

- a service's host name in a ``*_HOST`` variable (``postgres``, ``mailpit``) becomes the local
  host, and ``service:port`` anywhere that service's local address (the local PostgreSQL server, the test's SMTP
  sink, or a free port for a service the test starts);
- a service's own listening port in its command and health check becomes its free port;
- paths inside the image (``/opt/...``) move under a temporary root, where the compose file's
  bind mounts are copied (with the same rewriting) and its named volumes are directories;
- console scripts run from this virtual environment, as the image's PATH puts its venv first.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kpi_pipeline.config import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
IMAGE_PATHS = "/opt/"
"""Where the Dockerfile puts everything the services read (venv, DAGSTER_HOME, workspace)."""

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty."""


def interpolate(text: str, env: dict[str, str]) -> str:
    """``text`` with Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}`` and ``$$`` substituted from ``env``."""

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value, op, arg = env.get(name), match["op"], match["arg"]
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op and op.endswith("-"):
            return arg if unset else value
        if op and op.endswith("?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return value
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def raw_compose() -> dict:
    """docker-compose.yml as YAML (anchors merged), before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_compose(env: dict[str, str]) -> dict:
    """docker-compose.yml with every ``${...}`` interpolated from ``env``."""
    return _interpolate_tree(raw_compose(), env)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a .env file (comments and blank lines skipped, quotes removed)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def environment(service: dict) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``KEY=VALUE`` list) as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def container_ports(service: dict) -> list[int]:
    """Ports a service listens on inside its container (``expose`` and published ``ports``)."""
    ports = [int(port) for port in service.get("expose", [])]
    ports += [int(str(mapping).rsplit(":", 1)[-1]) for mapping in service.get("ports", [])]
    return ports


def depends_on(service: dict) -> dict[str, str]:
    """``{dependency: condition}`` of a service (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def project_services(compose: dict) -> list[str]:
    """Services built from this repository's Dockerfile that a plain ``docker compose up``
    starts (services under a profile start only when it is asked for)."""
    return [name for name, service in compose["services"].items() if "build" in service and not service.get("profiles")]


def healthcheck_command(service: dict) -> list[str] | None:
    """The health check's ``CMD`` arguments (None for none or a ``CMD-SHELL`` check)."""
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list) and test and test[0] == "CMD":
        return list(test[1:])
    return None


@dataclass
class LocalStack:
    """Rewrites compose services into local commands (see the module docstring).

    ``addresses`` maps ``(service, container port)`` to the local ``(host, port)`` that stands in
    for it; the test fills it for the services it provides (PostgreSQL, SMTP) and ``allocate``
    gives every project service a free port.
    """

    compose: dict
    root: Path
    addresses: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)

    def allocate(self, free_port) -> None:
        for name in project_services(self.compose):
            for port in container_ports(self.compose["services"][name]):
                self.addresses[(name, port)] = ("127.0.0.1", free_port())

    def local_port(self, service: str, port: int) -> int:
        return self.addresses[(service, port)][1]

    # -- rewriting ----------------------------------------------------------------------

    def rewrite(self, text: str, own: str | None = None, host: bool = False) -> str:
        """``text`` with compose addresses, ports and image paths made local. ``own`` names
        the service whose command this is: its listening ports are rewritten too. ``host``:
        ``text`` names a host (a ``*_HOST`` variable), so a bare service name is rewritten."""
        for (service, port), (address, local) in self.addresses.items():
            text = re.sub(rf"(?<![\w.-]){re.escape(service)}:{port}(?!\d)", f"{address}:{local}", text)
            if service == own:
                text = re.sub(rf"(?<=(127\.0\.0\.1|localhost):){port}(?!\d)", str(local), text)
                if text == str(port):
                    text = str(local)
        services = {service for service, _ in self.addresses}
        if host and text in services:
            text = next(address for (service, _), (address, _) in self.addresses.items() if service == text)
        elif text == "0.0.0.0":
            text = "127.0.0.1"  # a shared test machine: listen on loopback only
        elif text.startswith(IMAGE_PATHS):
            text = str(self.root / text.lstrip("/"))
        return text

    def port_value(self, text: str) -> str:
        """An environment value that is exactly a stood-in service's port (e.g. the SMTP port
        1025 of mailpit) becomes the local port."""
        for (service, port), (_, local) in self.addresses.items():
            if text == str(port) and service not in project_services(self.compose):
                return str(local)
        return text

    # -- services -------------------------------------------------------------------------

    def prepare_mounts(self, name: str) -> None:
        """Copies the service's bind-mounted files (rewritten) and makes its volumes' dirs."""
        for mount in self.compose["services"][name].get("volumes", []):
            source, target = str(mount).split(":")[:2]
            local = self.root / target.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            if source.startswith("."):
                self._copy_mount(PROJECT_ROOT / source, local)
            else:
                local.mkdir(parents=True, exist_ok=True)

    def _copy_mount(self, source: Path, local: Path) -> None:
        data = yaml.safe_load(source.read_text()) if source.suffix in {".yaml", ".yml"} else None
        if isinstance(data, dict) and "load_from" in data:
            # A workspace names its code server by host and port in separate keys.
            for location in data["load_from"]:
                server = location.get("grpc_server")
                if server is not None:
                    host, port = self.addresses[(server["host"], int(server["port"]))]
                    server.update(host=host, port=port)
            local.write_text(yaml.safe_dump(data))
        else:
            shutil.copyfile(source, local)

    def command(self, name: str) -> list[str]:
        service = self.compose["services"][name]
        return self._localize(list(service["command"]), name)

    def healthcheck(self, name: str) -> list[str] | None:
        command = healthcheck_command(self.compose["services"][name])
        return None if command is None else self._localize(command, name)

    def _localize(self, args: list[str], name: str) -> list[str]:
        args = [self.rewrite(str(arg), own=name) for arg in args]
        script = Path(sys.executable).parent / args[0]
        if script.exists():  # console scripts come from this venv, as from the image's
            args[0] = str(script)
        return args

    def env(self, name: str) -> dict[str, str]:
        """The process environment: this machine's, without settings of its own for the
        product, plus the service's compose environment made local."""
        base = {key: value for key, value in os.environ.items() if not key.startswith(("KPI_", "DAGSTER_"))}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        base["PYTHONUNBUFFERED"] = "1"
        for key, value in environment(self.compose["services"][name]).items():
            base[key] = self.port_value(self.rewrite(value, host=key.endswith("_HOST")))
        return base
