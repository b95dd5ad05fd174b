# syntax=docker/dockerfile:1

# ---- build stage: install the project and its dependencies into a venv ----
FROM python:3.12-slim AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install . ./clients/python

# ---- runtime stage: just the venv, run as an unprivileged user ----
FROM python:3.12-slim AS runtime

LABEL org.opencontainers.image.title="krolik" \
      org.opencontainers.image.description="Krolik task-queue service (API, workers, migrations)"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH="/opt/venv/bin:${PATH}"

RUN groupadd --system --gid 10001 krolik \
    && useradd --system --uid 10001 --gid krolik \
       --home-dir /app --no-create-home --shell /usr/sbin/nologin krolik

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

EXPOSE 8000

# No HEALTHCHECK here: the same image runs the API, the workers and the
# migrations; docker-compose.yml gives the API its own HTTP health check.
# Exec form, so `krolik` gets SIGTERM directly (workers drain on it).
CMD ["krolik", "api", "--host", "0.0.0.0", "--port", "8000"]
