# One image for the Dagster webserver, daemon, code server and runs (see deploy/entrypoint.sh).
# Python 3.11: the Python that uv.lock is tested on (`./dev test`).
FROM python:3.11-slim

# uv, the release ./dev uses (UV_VERSION there)
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    PATH=/opt/data-acq/.venv/bin:$PATH \
    DAGSTER_HOME=/opt/dagster/home

WORKDIR /opt/data-acq

# 1. The dependencies, exactly as uv.lock pins them, without data-acq itself and without the dev
#    group. This layer is built from pyproject.toml and uv.lock alone, so a change to the code
#    reuses it; only a change to either file reinstalls the dependencies.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

# 2. The entry point, the production instance and the unprivileged user: rarely changed.
COPY deploy ./deploy
RUN useradd --system --uid 10001 --home-dir /opt/dagster data-acq \
    && mkdir -p "$DAGSTER_HOME" \
    && cp deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    && chown -R data-acq "$DAGSTER_HOME"

# 3. The code, last: data-acq itself into the same environment (not editable; README.md is the
#    package's description). A code change rebuilds only this layer.
COPY README.md ./
COPY data_acq ./data_acq
RUN uv sync --frozen --no-dev --no-editable

USER data-acq
EXPOSE 3000 4000
ENTRYPOINT ["/opt/data-acq/deploy/entrypoint.sh"]
CMD ["webserver"]
