#!/usr/bin/env bash
# Make sure the PostgreSQL server the tests use is accepting connections (idempotent).
# KPI_TEST_PG_HOST / KPI_TEST_PG_PORT point elsewhere if your server is not the local default.
set -euo pipefail
host="${KPI_TEST_PG_HOST:-127.0.0.1}"
port="${KPI_TEST_PG_PORT:-5432}"

ready() { pg_isready -q -h "$host" -p "$port" 2>/dev/null; }

if ready; then
  echo "postgres: up on $host:$port"
  exit 0
fi

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "postgres: not installed, installing from Debian packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "postgres: not running on $host:$port and cannot be installed here; start it and rerun" >&2
    exit 1
  fi
fi

for version in $(ls /etc/postgresql); do
  echo "postgres: starting cluster $version/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
done

for _ in $(seq 1 30); do
  if ready; then
    echo "postgres: up on $host:$port"
    exit 0
  fi
  sleep 1
done
echo "postgres: did not come up on $host:$port" >&2
exit 1
