"""Kubernetes: deploy/helm/values.yaml against the Dagster chart's documented keys, and the plain
manifests of the API, the dashboard and the migration Job.

`helm template` needs the chart, which cannot be fetched here, so ``CHART_KEYS`` below is a
hand-copied subset of the dagster/dagster chart's values.schema.json (chart 1.13, matching the
pinned Dagster): the keys values.yaml sets, each with its documented type. A key missing from it
is either a typo or a key to look up in the chart's schema and add here.
"""

from __future__ import annotations

import re

import pytest
import yaml

from kpi_pipeline.api.routes import health
from kpi_pipeline.config import PROJECT_ROOT

VALUES = PROJECT_ROOT / "deploy" / "helm" / "values.yaml"
MANIFESTS = sorted((PROJECT_ROOT / "deploy" / "k8s").glob("*.yaml"))

PULL_POLICIES = {"Always", "IfNotPresent", "Never"}
# Path -> type (or set of allowed values). "[]" stands for any item of a list.
CHART_KEYS: dict[str, type | tuple[type, ...] | set[str]] = {
    "global.postgresqlSecretName": str,
    "generatePostgresqlPasswordSecret": bool,
    "postgresql.enabled": bool,
    "postgresql.postgresqlHost": str,
    "postgresql.postgresqlUsername": str,
    "postgresql.postgresqlDatabase": str,
    "postgresql.postgresqlScheme": str,
    "postgresql.postgresqlParams": dict,  # free-form object: its keys are libpq's
    "postgresql.service.port": int,
    "dagster-user-deployments.enabled": bool,
    "dagster-user-deployments.enableSubchart": bool,
    "dagster-user-deployments.deployments.[].name": str,
    "dagster-user-deployments.deployments.[].image.repository": str,
    "dagster-user-deployments.deployments.[].image.tag": (str, int),
    "dagster-user-deployments.deployments.[].image.pullPolicy": PULL_POLICIES,
    "dagster-user-deployments.deployments.[].dagsterApiGrpcArgs.[]": str,
    "dagster-user-deployments.deployments.[].port": int,
    "dagster-user-deployments.deployments.[].envSecrets.[].name": str,
    "dagster-user-deployments.deployments.[].includeConfigInLaunchedRuns.enabled": bool,
    "dagster-user-deployments.deployments.[].resources": dict,  # a k8s ResourceRequirements
    "runLauncher.type": {"K8sRunLauncher", "CeleryK8sRunLauncher", "CustomRunLauncher"},
    "runLauncher.config.k8sRunLauncher.envSecrets.[].name": str,
    "runLauncher.config.k8sRunLauncher.runK8sConfig.containerConfig": dict,  # a k8s Container
    "dagsterDaemon.enabled": bool,
    "dagsterDaemon.runCoordinator.enabled": bool,
    "dagsterDaemon.runCoordinator.type": {"QueuedRunCoordinator", "CustomRunCoordinator"},
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.maxConcurrentRuns": int,
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits.[].key": str,
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits.[].value": str,
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits.[].limit": int,
    "dagsterWebserver.replicaCount": int,
    "dagsterWebserver.service.type": str,
    "dagsterWebserver.service.port": int,
    "telemetry.enabled": bool,
}
FREE_FORM = {path for path, kind in CHART_KEYS.items() if kind is dict}


def _leaves(node, path: str = ""):
    """(dotted path, value) of every leaf, lists as "[]", free-form objects as one leaf."""
    if path in FREE_FORM or not isinstance(node, dict | list):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else key)
    else:
        for item in node:
            yield from _leaves(item, f"{path}.[]")


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_helm_values_use_only_documented_keys_with_their_types(values):
    for path, value in _leaves(values):
        assert path in CHART_KEYS, f"{path} is not a documented key of the dagster chart"
        kind = CHART_KEYS[path]
        if isinstance(kind, set):
            assert value in kind, f"{path}: {value!r} not one of {sorted(kind)}"
        else:
            assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), (
                f"{path}: {value!r} is not {kind}"
            )


def test_helm_values_run_this_projects_code_with_the_composes_settings(values):
    [deployment] = values["dagster-user-deployments"]["deployments"]
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    code = compose["services"]["dagster-code"]["command"]
    module = code[code.index("--module-name") + 1]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", module]
    instance = yaml.safe_load((PROJECT_ROOT / "deploy" / "dagster.yaml").read_text())
    assert values["postgresql"]["postgresqlScheme"] == (instance["storage"]["postgres"]["postgres_db"]["scheme"])
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    limits = instance["run_coordinator"]["config"]
    assert queued["tagConcurrencyLimits"] == limits["tag_concurrency_limits"]
    assert queued["maxConcurrentRuns"] == limits["max_concurrent_runs"]
    # Runs get the same settings as the code server they were launched from.
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    assert deployment["envSecrets"] == values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False


def _containers(manifests: list[dict]):
    for doc in manifests:
        if doc["kind"] in {"Deployment", "Job"}:
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield doc, pod, container


def test_manifests_run_the_image_as_its_non_root_user(values, manifests):
    [deployment] = values["dagster-user-deployments"]["deployments"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    uid = re.search(r"^USER (\d+)", (PROJECT_ROOT / "Dockerfile").read_text(), re.M)[1]
    kinds = {doc["kind"] for doc in manifests}
    assert {"Deployment", "Service", "Job"} <= kinds
    for doc, pod, container in _containers(manifests):
        name = doc["metadata"]["name"]
        assert container["image"] == image, name
        assert container["command"][0] == "kpi-pipeline", name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert str(pod["securityContext"]["runAsUser"]) == uid, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert {"secretRef": {"name": "kpi-pipeline-env"}} in container["envFrom"], name
        assert container["resources"]["limits"]["memory"], name


def test_manifests_probe_the_routes_the_servers_have(manifests):
    api_routes = {route.path for route in health.routes}
    served = {"api": api_routes, "dashboard": {"/_stcore/health"}}
    services = {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == "Service"}
    for doc, _, container in _containers(manifests):
        if doc["kind"] != "Deployment":
            continue
        role = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        [port] = container["ports"]
        command = container["command"]
        listen = command[command.index("--port") + 1]
        assert str(port["containerPort"]) == listen, role
        for probe in ("livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] in served[role] and get["port"] == port["name"], (role, probe)
        service = services[doc["metadata"]["name"]]
        assert service["spec"]["selector"] == doc["spec"]["selector"]["matchLabels"], role
        assert service["spec"]["ports"][0]["targetPort"] == port["name"], role
