# tmc-bridge image: a virtual environment built in one stage, copied into a clean one.
# `make image` builds it for real without a Docker engine (buildah, vfs storage, chroot
# isolation) on a Debian base made with debootstrap, passed as PYTHON_IMAGE, and runs the
# result against the simulator and a local Kafka. Every dependency but
# rocketmq-client-python (pure Python, source only) ships a wheel: no compiler needed.
#
# Build arguments:
#   PYTHON_IMAGE   a Debian-based image with python3 (3.11+) and its venv module
#   WITH_ROCKETMQ  true: RocketMQ sink and ONS source (librocketmq, x86_64 only);
#                  false: Kafka only, no native code of ours, any architecture
#   VERSION, REVISION  written into the OCI labels
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG WITH_ROCKETMQ=true
# Only where the build machine reaches PyPI through a TLS proxy: the CA bundle pip must
# trust (make image mounts the machine's bundle for the build; nothing of it is kept).
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    WITH_ROCKETMQ=${WITH_ROCKETMQ}
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY docker/install.sh docker/install.sh
COPY bridge bridge
RUN sh docker/install.sh /opt/tmc-bridge

FROM ${PYTHON_IMAGE}
ARG VERSION=dev
ARG REVISION=unknown
ARG WITH_ROCKETMQ=true
LABEL org.opencontainers.image.title="tmc-bridge" \
      org.opencontainers.image.description="Taobao TMC / Jushita ONS to Kafka or RocketMQ" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.tmc-bridge.rocketmq="${WITH_ROCKETMQ}"
# librocketmq writes its own log under $HOME/logs/rocketmq-cpp: HOME must be writable
# (Kubernetes mounts an emptyDir there, since the root filesystem is read-only).
ENV PATH=/opt/tmc-bridge/bin:$PATH \
    HOME=/home/bridge \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/tmc-bridge /opt/tmc-bridge
RUN mkdir -p /home/bridge /var/lib/tmc-bridge /etc/tmc-bridge \
    && chown 10001:10001 /home/bridge /var/lib/tmc-bridge
WORKDIR /var/lib/tmc-bridge
USER 10001:10001
EXPOSE 9108
# Exec form: the bridge is PID 1's direct process, so SIGTERM starts its drain. No config
# is baked in: mount one at /etc/tmc-bridge/bridge.yaml (the chart does); without it the
# bridge exits 2 with "cannot read config /etc/tmc-bridge/bridge.yaml".
ENTRYPOINT ["tmc-bridge"]
CMD ["run", "--config", "/etc/tmc-bridge/bridge.yaml"]
