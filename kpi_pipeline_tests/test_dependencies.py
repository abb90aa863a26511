"""The package declares exactly the distributions it imports (issue 15: ``click``, ``starlette``,
``anyio`` and ``typing_extensions`` were imported undeclared, ``twilio`` declared and unused)."""

import ast
import re
import sys
from importlib import metadata

from kpi_pipeline.config import PROJECT_ROOT

USED_WITHOUT_IMPORT = {
    "dagster-webserver": "serves the UI of `dagster dev`",
    "dagster-postgres": "Dagster's Postgres storage, chosen in dagster.yaml",
    "psycopg": "the Postgres driver SQLAlchemy loads for postgresql:// URLs",
    "tabulate": "pandas' DataFrame.to_markdown",
}
"""Declared distributions the code needs but never names in an import statement, and why."""

OPTIONAL = {
    "dagster-celery": "the `celery` extra: imported only when KPI_EXECUTOR=celery",
}
"""Distributions imported only on an opt-in path, declared in an extra instead, and why."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_distributions() -> set[str]:
    modules = set()
    for path in (PROJECT_ROOT / "kpi_pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"__future__", "kpi_pipeline"}
    owners = metadata.packages_distributions()
    return {_canonical(owners[module][0]) for module in third_party}


def _declared_distributions(extras: bool = False) -> set[str]:
    requirements = metadata.requires("kpi-pipeline") or []
    return {
        _canonical(re.match(r"[A-Za-z0-9_.-]+", requirement).group())
        for requirement in requirements
        if ("extra ==" in requirement) == extras
    }


def test_every_imported_distribution_is_declared_and_every_declared_one_is_used():
    imported, declared = _imported_distributions(), _declared_distributions()

    assert imported - declared - set(OPTIONAL) == set(), "imported but not in [project] dependencies"
    assert set(OPTIONAL) <= _declared_distributions(extras=True), "optional but in no extra"
    assert declared - imported - set(USED_WITHOUT_IMPORT) == set(), "declared but never imported"
