# syntax=docker/dockerfile:1.7
#
# One image per ctrain service, all from this file (docs/deploy.md):
#
#   docker build --target ingest      -t ctrain-ingest .
#   docker build --target validator   -t ctrain-validator .
#   docker build --target trigger     -t ctrain-trigger .
#   docker build --target promoter    -t ctrain-promoter .
#   docker build --target monitor     -t ctrain-monitor .
#   docker build --target modelserver -t ctrain-modelserver .   # dev-only TF Serving stand-in
#
# Each target installs only its service's extra from pyproject.toml, pinned by
# uv.lock, with uv; the dependency layer is cached apart from the source.
# Runtime images: python:3.11-slim, a non-root user (10001), no compiler, no uv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- base
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------- builder
FROM base AS builder
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN uv venv /opt/venv --python /usr/local/bin/python3.11

# One dependency stage per extra: `uv sync --no-install-project --extra X` installs
# the extra's locked dependencies without the project, so source edits keep this layer.
FROM builder AS deps-ingest
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-install-project --no-dev --extra ingest

FROM builder AS deps-validator
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-install-project --no-dev --extra validator

FROM builder AS deps-trigger
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-install-project --no-dev --extra trigger

FROM builder AS deps-promoter
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-install-project --no-dev --extra promoter

FROM builder AS deps-monitor
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-install-project --no-dev --extra monitor

# ---------------------------------------------------------------- runtime base
FROM base AS runtime
ARG UID=10001
RUN groupadd --system --gid ${UID} ctrain \
 && useradd --system --uid ${UID} --gid ctrain --home-dir /app --shell /usr/sbin/nologin ctrain \
 && mkdir -p /app /artifacts /models \
 && chown ctrain:ctrain /artifacts /models
WORKDIR /app
# The bundled example: its models file (CTRAIN_CONFIG), schema and model module.
# The replay CSV stays out (.dockerignore).
COPY --chown=root:root examples/taxi/ctrain.yaml /app/examples/taxi/ctrain.yaml
COPY --chown=root:root examples/taxi/data/schema.pbtxt /app/examples/taxi/data/schema.pbtxt
COPY --chown=root:root examples/taxi/model.py /app/examples/taxi/model.py
COPY --chown=root:root deploy/docker/healthz.py /usr/local/bin/ctrain-healthz
ENV CTRAIN_ARTIFACT_ROOT=/artifacts \
    CTRAIN_SERVING_BASE=/models \
    CTRAIN_CONFIG=/app/examples/taxi/ctrain.yaml \
    CTRAIN_LOG_JSON=true
STOPSIGNAL SIGTERM

# The project itself (no dependencies: they are in the deps-* layer).
FROM builder AS project
COPY shared ./shared
COPY services ./services
COPY ctrain ./ctrain

# ---------------------------------------------------------------- services
FROM deps-ingest AS build-ingest
COPY --from=project /src /src
RUN uv pip install -p /opt/venv/bin/python --no-deps .

FROM runtime AS ingest
COPY --from=build-ingest /opt/venv /opt/venv
USER 10001:10001
ENV CTRAIN_INGEST_HTTP_HOST=0.0.0.0 CTRAIN_INGEST_HTTP_PORT=8081
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/ctrain-healthz", "ingest"]
ENTRYPOINT ["python", "-m", "services.ingest"]

FROM deps-validator AS build-validator
COPY --from=project /src /src
RUN uv pip install -p /opt/venv/bin/python --no-deps .

FROM runtime AS validator
COPY --from=build-validator /opt/venv /opt/venv
USER 10001:10001
ENV CTRAIN_VALIDATOR_HTTP_HOST=0.0.0.0 CTRAIN_VALIDATOR_HTTP_PORT=8082
EXPOSE 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/ctrain-healthz", "validator"]
ENTRYPOINT ["python", "-m", "services.validator"]

FROM deps-trigger AS build-trigger
COPY --from=project /src /src
RUN uv pip install -p /opt/venv/bin/python --no-deps .

FROM runtime AS trigger
COPY --from=build-trigger /opt/venv /opt/venv
USER 10001:10001
ENV CTRAIN_TRIGGER_HTTP_HOST=0.0.0.0 CTRAIN_TRIGGER_HTTP_PORT=8083
EXPOSE 8083
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/ctrain-healthz", "trigger"]
ENTRYPOINT ["python", "-m", "services.trigger"]

FROM deps-promoter AS build-promoter
COPY --from=project /src /src
RUN uv pip install -p /opt/venv/bin/python --no-deps .

FROM runtime AS promoter
COPY --from=build-promoter /opt/venv /opt/venv
USER 10001:10001
ENV CTRAIN_PROMOTER_HTTP_HOST=0.0.0.0 CTRAIN_PROMOTER_HTTP_PORT=8084
EXPOSE 8084
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/ctrain-healthz", "promoter"]
ENTRYPOINT ["python", "-m", "services.promoter"]

FROM deps-monitor AS build-monitor
COPY --from=project /src /src
RUN uv pip install -p /opt/venv/bin/python --no-deps .

FROM runtime AS monitor
COPY --from=build-monitor /opt/venv /opt/venv
USER 10001:10001
ENV CTRAIN_MONITOR_HTTP_HOST=0.0.0.0 CTRAIN_MONITOR_HTTP_PORT=8085
EXPOSE 8085
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/ctrain-healthz", "monitor"]
ENTRYPOINT ["python", "-m", "services.monitor"]

# ---------------------------------------------------------------- dev-only model server
# TF Serving's gRPC + REST APIs over the same model directory (ctrain/modelserver);
# for machines without tensorflow/serving. Compose and k8s use the real image.
FROM runtime AS modelserver
COPY --from=build-promoter /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8500 8501
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/ctrain-healthz", "--tcp", "8501"]
ENTRYPOINT ["python", "-m", "ctrain.modelserver"]
CMD ["--model_config_file=/models/models.config", "--port=8500", "--rest_api_port=8501"]
