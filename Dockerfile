# syntax=docker/dockerfile:1
# hookdrop image: one image for every role; the command picks it:
#   docker run IMAGE monitor | worker batcher | worker notifier | mock --host 0.0.0.0 | db migrate
# docker-compose.yml wires them together (docs/operations.md, "Docker Compose").

# --- build: install the project into a virtualenv ------------------------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/hookdrop/venv
WORKDIR /src
# Only what `pip install .` needs, so edits to tests or docs do not invalidate this layer.
COPY pyproject.toml README* ./
COPY hookdrop ./hookdrop
COPY daemon ./daemon
COPY workers ./workers
COPY notifier_mock ./notifier_mock
RUN /opt/hookdrop/venv/bin/pip install .

# --- runtime -------------------------------------------------------------------------------
FROM python:3.11-slim

# Same layout as a systemd install: venv under /opt/hookdrop, data under /var/lib/hookdrop.
COPY --from=build /opt/hookdrop/venv /opt/hookdrop/venv

# A fixed, non-root uid/gid so files in shared volumes have a predictable owner; uploaders
# writing into the inbox volume from other containers should use the same uid (10001).
RUN groupadd --system --gid 10001 hookdrop \
    && useradd --system --uid 10001 --gid hookdrop --home-dir /var/lib/hookdrop \
        --no-create-home --shell /usr/sbin/nologin hookdrop \
    && install -d -o hookdrop -g hookdrop -m 0750 /var/lib/hookdrop /var/lib/hookdrop/state \
    && install -d -o hookdrop -g hookdrop -m 2770 /var/lib/hookdrop/inbox

ENV PATH=/opt/hookdrop/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOOKDROP_INBOX=/var/lib/hookdrop/inbox \
    HOOKDROP_STATE_DIR=/var/lib/hookdrop/state \
    HOOKDROP_LOG_FORMAT=json

USER hookdrop:hookdrop
WORKDIR /var/lib/hookdrop
# Inbox (inbox/, inbox/processing, inbox/done, inbox/failed) and state. The directories above
# exist with the right owner so a fresh named volume mounted here starts writable.
VOLUME /var/lib/hookdrop

# 8425: monitor HTTP API (listens on 127.0.0.1 unless HOOKDROP_API_LISTEN says otherwise,
# which then needs HOOKDROP_API_TOKEN); 8426: mock webhook receiver.
EXPOSE 8425 8426

# First SIGTERM drains (finish or checkpoint the current chunk): give containers a long
# stop timeout (`docker stop -t 90`, compose `stop_grace_period: 90s`).
STOPSIGNAL SIGTERM

# No HEALTHCHECK here: the same image runs roles with different health signals, so each
# service declares its own (docker-compose.yml). The image needs no curl for that:
#   python -c "import socket; socket.create_connection(('127.0.0.1', 8425), 3)"
ENTRYPOINT ["hookdrop"]
CMD ["--help"]
