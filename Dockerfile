# syntax=docker/dockerfile:1
# One image for every role: query worker, aggregator, Flower, producer and the demo seeder.
# The role is chosen by the command (see docker-compose.yml). Build: docker compose build

# ---- build: a virtualenv with the locked runtime dependencies, wheels only (no compiler) ----
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# --require-hashes: every wheel must match the hash in the lock; --only-binary: nothing is built.
RUN /opt/venv/bin/pip install --no-deps --require-hashes --only-binary=:all: \
        -r /tmp/requirements.lock

# ---- runtime: the virtualenv, the source, a non-root user ----
FROM python:3.11.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="pacs-discovery" \
      org.opencontainers.image.description="Find every study a PACS holds, over DICOM C-FIND, on Celery and Redis"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DISCOVERY_STATE_DIR=/data/state \
    DISCOVERY_OUTPUT=/output/dicom_query_results.csv
# Group 0 owns the writable directories (g=u), so the container also runs under an arbitrary
# uid with gid 0 (compose: user "${HOST_UID}:0", to own the CSV on the host).
RUN useradd --system --uid 10001 --gid 0 --home-dir /app --shell /usr/sbin/nologin discovery \
    && mkdir -p /data/state /output \
    && chown -R 10001:0 /data /output \
    && chmod -R g=u /data /output
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY discovery ./discovery
COPY worker ./worker
COPY producer ./producer
COPY demo ./demo
USER 10001:0
# Role-specific healthchecks live in docker-compose.yml (a worker pings itself over the broker,
# Flower answers /healthcheck); the producer and the seeder are one-shot.
CMD ["python", "-m", "producer", "--help"]
