# syntax=docker/dockerfile:1
# stocksync image: `stocksync worker` by default; `stocksync api` for the availability API.
#
#   docker build -t stocksync .
#   docker run --rm stocksync --help
#
# Stage 1 builds the stocksync wheel and a wheelhouse of its runtime dependencies
# (no dev or local extras). Stage 2 installs them into a venv on python:3.11-slim,
# from the wheelhouse only (no index), and runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stocksync ./stocksync
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m pip wheel --wheel-dir /wheels /wheels/stocksync-*.whl

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/stocksync/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    STOCKSYNC_CONFIG=/etc/stocksync/stocksync.toml \
    STOCKSYNC_API_HOST=0.0.0.0 \
    STOCKSYNC_WORKER_HOST=0.0.0.0 \
    STOCKSYNC_FEED_HOST=0.0.0.0
# The wheelhouse is mounted for this step only, so no wheel stays in a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/stocksync \
 && /opt/stocksync/bin/pip install --no-index --find-links=/wheels stocksync \
 && /opt/stocksync/bin/pip uninstall --yes pip \
 && groupadd --system --gid 10001 stocksync \
 && useradd --system --uid 10001 --gid stocksync --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin stocksync
# An example configuration; mount your own over it (or set STOCKSYNC_CONFIG).
COPY --chown=root:root --chmod=0644 deploy/stocksync.toml /etc/stocksync/stocksync.toml
USER 10001:10001
WORKDIR /tmp
# The worker serves /healthz on 8081, the API on 8080 and `stocksync feed` (the
# availability feed: CMD ["feed"]) on 8082 (STOCKSYNC_WORKER_PORT, STOCKSYNC_API_PORT,
# STOCKSYNC_FEED_PORT); set STOCKSYNC_HEALTH_URL for the API, the feed or another port.
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request as u; u.urlopen(os.environ.get('STOCKSYNC_HEALTH_URL') or 'http://127.0.0.1:%s/healthz' % os.environ.get('STOCKSYNC_WORKER_PORT', '8081'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["stocksync"]
CMD ["worker"]
