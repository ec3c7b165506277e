# One image for the Dagster webserver, daemon, code server and runs (see deploy/entrypoint.sh).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home

WORKDIR /opt/data-acq

# Dependencies first, from the lock file, so code changes reuse this layer.
COPY requirements.lock pyproject.toml README.md ./
COPY data_acq ./data_acq
RUN pip install -c requirements.lock .

COPY deploy ./deploy
RUN useradd --system --uid 10001 --home-dir /opt/dagster data-acq \
    && mkdir -p "$DAGSTER_HOME" \
    && cp deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    && chown -R data-acq "$DAGSTER_HOME"

USER data-acq
EXPOSE 3000 4000
ENTRYPOINT ["/opt/data-acq/deploy/entrypoint.sh"]
CMD ["webserver"]
