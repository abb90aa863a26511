"""Every command in the README is run by this test, or listed in ``NOT_RUN`` with the reason.

The README's fenced ``bash`` / ``sh`` / ``console`` blocks are read command by command (in a
``console`` block, the lines after a ``$ `` prompt). A ``kpi-pipeline`` command is run, in README
order, through typer's CliRunner in a scratch directory whose ``dataset/kpi_data.csv`` is ten
days of two synthetic KPIs (so ``make run``'s steps take seconds, not the sample's minutes), on
a scratch SQLite database given as ``KPI_DATABASE_URL``; ``kpi-pipeline --help`` is also run as
the installed console script. Anything else must match an entry of ``NOT_RUN``; a README command
that is neither fails the test, and so does an entry that no README command matches, so the
list cannot drift from the README. Commands of ``NOT_RUN`` that call ``kpi-pipeline`` still have
their command and options checked against its ``--help``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from kpi_pipeline.cli import app
from kpi_pipeline.config import PROJECT_ROOT, Settings, get_settings
from kpi_pipeline_tests.defs.synthetic import START, hourly_kpis, to_wide_csv

README = PROJECT_ROOT / "README.md"
MAX_LINES = 400
SPIKE = START + pd.Timedelta(hours=200)
"""2025-03-11 08:00 UTC: the point the README's ``feedback`` example labels."""

NOT_RUN: dict[str, str] = {
    r"make test": "runs the whole suite, this test included (minutes, needs PostgreSQL)",
    r"make run": "ingests the year-long sample and trains it walk-forward (minutes); its steps "
    "are the README's init / ingest / run / anomalies commands, run here, and "
    "test_make_run_steps_are_the_readme_commands holds them equal",
    r"make dev": "starts the Dagster UI and daemon: a server that does not return",
    r"kpi-pipeline dashboard": "starts the Streamlit server, which does not return "
    "(kpi_pipeline_tests/dashboard serves it for real)",
    r"KPI_API_KEYS=\S+ kpi-pipeline api": "starts the API server, which does not return "
    "(kpi_pipeline_tests/api covers it)",
    r"curl .*127\.0\.0\.1:8000/.*": "needs the API server running",
    r"kpi-pipeline evaluate --out out/folds .*": "backtests the four committed folds (minutes "
    "on two cores); kpi_pipeline_tests/evaluation "
    "covers evaluate with folds",
    r"make evaluate": "backtests NAB's dev split and the four committed folds (about half an "
    "hour on two cores); its evaluate command is the one above, with NAB",
    r"cp \.env\.example \.env": "deployment: would write .env into the checkout",
    r"docker compose (up -d|ps)": "deployment: needs Docker; kpi_pipeline_tests/deploy checks "
    "the compose file with `docker-compose config`",
}
"""README commands this test does not run (a full-match regex on the command, comments and
continuations removed, words joined by one space) and why."""


@dataclass(frozen=True)
class Command:
    text: str
    words: tuple[str, ...]
    line: int


def readme_commands(text: str) -> list[Command]:
    """The commands of the README's bash / sh / console blocks, in order."""
    commands = []
    lines = text.splitlines()
    language = None
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^```(\S*)\s*$", line)
        if fence:
            language = None if language is not None else (fence.group(1) or "")
            continue
        if language not in ("bash", "sh", "console"):
            continue
        if not pending:
            if language == "console":
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
            start = number
        pending += line
        if pending.rstrip().endswith("\\"):
            pending = pending.rstrip()[:-1] + " "
            continue
        words = tuple(shlex.split(pending, comments=True))
        if words:
            commands.append(Command(" ".join(words), words, start))
        pending = ""
    return commands


def _allowed(command: Command) -> str | None:
    return next((p for p in NOT_RUN if re.fullmatch(p, command.text)), None)


COMMANDS = readme_commands(README.read_text())


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= MAX_LINES


def test_readme_has_commands_and_relative_links_resolve():
    assert COMMANDS
    for target in re.findall(r"\]\(([^)#:]+)\)", README.read_text()):
        assert (PROJECT_ROOT / target).exists(), f"README links to missing {target}"


def test_every_readme_command_is_run_or_listed_and_every_listed_one_is_in_the_readme():
    unknown = [f"line {c.line}: {c.text}" for c in COMMANDS if c.words[0] != "kpi-pipeline" and not _allowed(c)]
    assert not unknown, f"README commands neither run nor in NOT_RUN: {unknown}"
    used = {_allowed(c) for c in COMMANDS}
    assert not set(NOT_RUN) - used, f"NOT_RUN entries no README command matches: {set(NOT_RUN) - used}"


def test_listed_kpi_pipeline_commands_exist_with_their_options():
    for command in COMMANDS:
        if not _allowed(command) or "kpi-pipeline" not in command.words:
            continue
        words = command.words[command.words.index("kpi-pipeline") + 1 :]
        result = CliRunner().invoke(app, [words[0], "--help"])
        assert result.exit_code == 0, f"line {command.line}: {command.text}: {result.output}"
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in result.output, f"line {command.line}: {option} not in its --help"


def test_kpi_pipeline_help_runs_as_the_installed_command():
    assert any(c.text == "kpi-pipeline --help" for c in COMMANDS)
    script = Path(sys.executable).parent / "kpi-pipeline"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in (
        "init",
        "ingest",
        "run",
        "anomalies",
        "feedback",
        "evaluate",
        "backfill",
        "silence",
        "api",
        "dashboard",
        "bench-api",
    ):
        assert re.search(rf"^\W*{name}\b", result.stdout, re.MULTILINE), name


def test_readme_kpi_pipeline_commands_run(tmp_path, monkeypatch):
    """Every README ``kpi-pipeline`` command not in NOT_RUN, in order, on a small dataset."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "kpi_data.csv").write_text(to_wide_csv(hourly_kpis(days=10, spike_at=SPIKE)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KPI_DATABASE_URL", f"sqlite:///{tmp_path / 'kpi.db'}")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()
    ran = []
    try:
        for command in COMMANDS:
            if _allowed(command) or command.words[0] != "kpi-pipeline":
                continue
            result = runner.invoke(app, list(command.words[1:]))
            assert result.exit_code == 0, f"line {command.line}: {command.text}\n{result.output}"
            ran.append(command.words[1])
            if command.words[1:] == ("run",):
                # The summary the README shows.
                assert "KPIs scored: 2, points scored: 384, anomalies found: " in result.output
                assert ", outages (data missing): 0" in result.output
                assert "insufficient history: none" in result.output
                assert "open the dashboard: kpi-pipeline dashboard" in result.output
    finally:
        get_settings.cache_clear()
    assert {"init", "ingest", "run", "anomalies", "feedback"} <= set(ran)


def test_make_run_steps_are_the_readme_commands():
    """``make run``'s kpi-pipeline steps, as the README lists (and this test runs) them."""
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", (PROJECT_ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    steps = [re.sub(r"^(DAGSTER_HOME=\S+ )?\$\(BIN\)/", "", line.strip()) for line in recipe.splitlines()]
    texts = [c.text for c in COMMANDS]
    assert all(step in texts for step in steps), (steps, texts)


def test_configuration_page_lists_every_setting():
    page = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    missing = [f"KPI_{name.upper()}" for name in Settings.model_fields if f"`KPI_{name.upper()}`" not in page]
    assert not missing
