# syntax=docker/dockerfile:1
# One image for every role of kpi-pipeline; the command picks the role (docker-compose.yml):
#   kpi-pipeline init | api | dashboard, dagster code-server start, dagster-webserver,
#   dagster-daemon run, dagster-celery worker start.
# Build: docker build -t kpi-pipeline .
#   EXTRAS (default celery,k8s) picks the optional extras: the celery worker's libraries and
#   dagster-k8s, which run pods launched by Dagster's Helm chart need; EXTRAS="" drops both.

# -- builder: resolve and install the package and its dependencies into a virtual environment
FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Every dependency ships wheels for this platform (prophet's wheel carries its compiled Stan
# model and cmdstan), so no compiler is needed here either; a source build would fail loudly.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Metadata first: the dependency layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY kpi_pipeline ./kpi_pipeline
ARG EXTRAS=celery,k8s
# The project is installed from its own pyproject.toml (Dagster pinned there), not by name.
# hadolint ignore=DL3013
RUN pip install --prefer-binary ".${EXTRAS:+[$EXTRAS]}" \
 && python -m compileall -q /opt/venv/lib/python3.11/site-packages/kpi_pipeline

# -- runtime: the virtual environment on a clean base, no compilers, a non-root user
FROM python:3.11-slim-bookworm AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/home \
    KPI_BACKTEST_DIR=/opt/kpi/out

# storage/ exists in the image so a named volume mounted there starts owned by kpi, not root.
RUN groupadd --system --gid 10001 kpi \
 && useradd --system --uid 10001 --gid kpi --home-dir /opt/kpi --create-home --shell /usr/sbin/nologin kpi \
 && mkdir -p /opt/dagster/home/storage /opt/kpi/out \
 && chown -R kpi:kpi /opt/dagster /opt/kpi

COPY --from=builder /opt/venv /opt/venv
# Instance and workspace defaults for a deployment; docker-compose.yml mounts the same files.
COPY --chown=kpi:kpi deploy/dagster.yaml /opt/dagster/home/dagster.yaml
COPY --chown=kpi:kpi deploy/workspace.yaml deploy/celery.yaml /opt/dagster/

USER 10001:10001
WORKDIR /opt/kpi

# Fails the build if prophet's bundled Stan model cannot run without a compiler.
RUN python -c "import logging, pandas as pd, prophet; logging.disable(logging.INFO); \
prophet.Prophet().fit(pd.DataFrame({'ds': pd.date_range('2024-01-01', periods=30), 'y': range(30)}))"

# 3000 Dagster UI, 4000 code server (gRPC), 8000 API, 8501 dashboard
EXPOSE 3000 4000 8000 8501

# The default command is the API sidecar, so the image's own check probes its liveness route;
# docker-compose.yml gives every other role a check of its own.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4)"]

CMD ["kpi-pipeline", "api", "--host", "0.0.0.0", "--port", "8000"]
