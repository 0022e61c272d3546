# syntax=docker/dockerfile:1
# tagserver container image.
#
#   docker build -t tagserver .
#   docker run -d --name tagserver -p 127.0.0.1:8080:8080 -v tagserver-data:/data \
#       -e TAGSERVER_SECRET_KEY=... -e META_PIXEL_ID=... -e META_ACCESS_TOKEN=... tagserver
#
# Every setting is an environment variable (`docker run --rm tagserver settings` lists them).
# Put your own container.json at /etc/tagserver/container.json (mount the directory, not the
# file, so that edits and Kubernetes ConfigMap updates are hot-reloaded). The outbox, the
# signing key and the SQLite preview fallback live in the /data volume: keep it across
# upgrades. See docs/deploy.md.

ARG PYTHON_VERSION=3.12

# -- build: install tagserver and its dependencies into a virtualenv ----------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tagserver ./tagserver
COPY clients ./clients
COPY tags ./tags
COPY static ./static
RUN python -m venv /opt/tagserver \
 && /opt/tagserver/bin/pip install . \
 && /opt/tagserver/bin/tagserver --version

# -- run: the virtualenv on a clean slim image, as an unprivileged user --------------------
FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="tagserver" \
      org.opencontainers.image.description="Self-hosted, first-party server-side tagging server" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it and volume ownership
# stays the same across rebuilds.
RUN groupadd --system --gid 10001 tagserver \
 && useradd --system --uid 10001 --gid tagserver --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tagserver \
 && install -d -o tagserver -g tagserver -m 0700 /data \
 && install -d -m 0755 /etc/tagserver

COPY --from=build /opt/tagserver /opt/tagserver
COPY container.json container.schema.json /etc/tagserver/

# PATH: the virtualenv's `tagserver` and `python` come first.
# TAGSERVER_HOST/PORT: listen on every interface of the container, port 8080; publish it
#   behind a TLS-terminating proxy (Caddy, nginx, an ingress), never straight to the internet.
# TAGSERVER_SHUTDOWN_GRACE_SECONDS: on SIGTERM, in-flight vendor sends get this long.
#   `docker stop` sends SIGKILL after 10 s unless told otherwise (--stop-timeout,
#   compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds): raise both together.
ENV PATH=/opt/tagserver/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TAGSERVER_HOST=0.0.0.0 \
    TAGSERVER_PORT=8080 \
    TAGSERVER_DATA_DIR=/data \
    TAGSERVER_CONTAINER=/etc/tagserver/container.json \
    TAGSERVER_SHUTDOWN_GRACE_SECONDS=8

VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001
WORKDIR /data

# /healthz answers 503 with the reason when hits cannot be stored (outbox unavailable, disk
# full); the check is plain Python (no curl in a slim image) and reads TAGSERVER_PORT.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "tagserver.healthcheck"]

# Exec form: tagserver is PID 1 and receives SIGTERM itself, then drains in-flight sends.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tagserver"]
CMD ["serve"]
