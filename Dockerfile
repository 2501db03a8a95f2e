# syntax=docker/dockerfile:1
# One image for the API, the sync worker and the schema migration:
#   default                     python -m counter_svc serve   (API on $PORT, 8080)
#   worker                      python -m sync_worker         (metrics/health on 9100)
#   migrate                     python -m counter_svc migrate (one-shot, idempotent)
#   operator                    python -m usercounter_operator (k8s/operator)
# Python 3.11 on Debian 12, the same minor version the test suite runs on.

# --- builder: every wheel the runtime needs, from the exact pins in requirements.lock ---
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip wheel --wheel-dir /wheels --requirement requirements.lock \
    && cp requirements.lock /wheels/

# Then the project itself (hatchling reads README.md for the package metadata).
COPY pyproject.toml README.md ./
COPY counter_svc/ counter_svc/
COPY sync_worker/ sync_worker/
COPY usercounter_operator/ usercounter_operator/
# The operator renders the API and worker objects from the kustomize base; the wheel
# carries these files (pyproject.toml, force-include).
COPY k8s/base/ k8s/base/
COPY k8s/components/mysql-least-privilege/ k8s/components/mysql-least-privilege/
COPY k8s/components/redis-sentinel/ k8s/components/redis-sentinel/
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: no compilers, no build tools, no source tree; a non-root user ---
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="usercounter" \
      org.opencontainers.image.description="Per-user counters: Redis in front, MySQL behind (API, sync worker, migrate)" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PORT=8080 \
    SYNC_METRICS_PORT=9100 \
    LOG_FORMAT=json

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app

# Install only from the builder's wheels (no index), pinned by requirements.lock. The bind
# mount keeps the wheels out of every layer of the final image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels \
        --requirement /wheels/requirements.lock /wheels/usercounter-*.whl

# The app writes nothing but to /tmp (an emptyDir/tmpfs when the root fs is read-only).
WORKDIR /app
USER 10001:10001

EXPOSE 8080 9100

# Liveness of the API, the default command. The worker overrides it with
# `python -m sync_worker --check` (compose) or its own probe (Kubernetes); migrate disables it.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]

CMD ["python", "-m", "counter_svc", "serve"]
