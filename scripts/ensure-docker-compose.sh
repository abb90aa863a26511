#!/usr/bin/env bash
# Make sure Debian's docker-compose (v1, a Python program) is installed, so the deployment test
# can run `docker-compose config` on docker-compose.yml (idempotent). Validating the file needs
# no Docker engine, which these machines lack. Never fails: where it cannot be installed it says
# why and exits 0, and the validation test skips with that reason.
set -uo pipefail
binary="${KPI_TEST_DOCKER_COMPOSE:-docker-compose}"

if command -v "$binary" >/dev/null 2>&1; then
  echo "docker-compose: present at $(command -v "$binary")"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "docker-compose: not installed and apt-get is unavailable; the compose validation test will be skipped"
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "docker-compose: not installed and installing needs root (apt-get install docker-compose); the compose validation test will be skipped"
  exit 0
fi

echo "docker-compose: installing Debian package docker-compose"
if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; then
  if command -v "$binary" >/dev/null 2>&1; then
    echo "docker-compose: installed at $(command -v "$binary")"
  else
    echo "docker-compose: package installed but $binary is missing; the compose validation test will be skipped"
  fi
else
  echo "docker-compose: apt-get install failed; the compose validation test will be skipped"
fi
exit 0
