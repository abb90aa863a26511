#!/usr/bin/env bash
# Make sure the RabbitMQ broker the celery test uses accepts connections (idempotent).
# KPI_TEST_AMQP_HOST / KPI_TEST_AMQP_PORT point elsewhere if your broker is not the local default.
# Never fails: without a broker the celery test skips and says why.
set -uo pipefail
host="${KPI_TEST_AMQP_HOST:-127.0.0.1}"
port="${KPI_TEST_AMQP_PORT:-5672}"

ready() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if ready; then
  echo "rabbitmq: up on $host:$port"
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "rabbitmq: not running on $host:$port and not installed; the celery test will skip"
  exit 0
fi
echo "rabbitmq: starting"
rabbitmq-server -detached || true
for _ in $(seq 1 60); do
  if ready; then
    echo "rabbitmq: up on $host:$port"
    exit 0
  fi
  sleep 1
done
echo "rabbitmq: did not come up on $host:$port; the celery test will skip"
exit 0
