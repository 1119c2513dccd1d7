# tmc-bridge image: a virtual environment built in one stage, copied into a clean one.
# No compiler is needed anywhere: every dependency ships a manylinux wheel. The image
# cannot be built on the development machines (no Docker engine); CI lints this file
# with hadolint and replays docker/install.sh as a non-root user instead.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY docker/install.sh docker/install.sh
COPY bridge bridge
RUN sh docker/install.sh /opt/tmc-bridge

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tmc-bridge" \
      org.opencontainers.image.description="Taobao TMC / Jushita ONS to Kafka or RocketMQ"
# librocketmq writes its own log under $HOME/logs/rocketmq-cpp: HOME must be writable
# (Kubernetes mounts an emptyDir there, since the root filesystem is read-only).
ENV PATH=/opt/tmc-bridge/bin:$PATH \
    HOME=/home/bridge \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/tmc-bridge /opt/tmc-bridge
COPY bridge.yaml /etc/tmc-bridge/bridge.yaml
RUN mkdir -p /home/bridge /var/lib/tmc-bridge \
    && chown 10001:10001 /home/bridge /var/lib/tmc-bridge
WORKDIR /var/lib/tmc-bridge
USER 10001:10001
EXPOSE 9108
# Exec form: the bridge is PID 1's direct process, so SIGTERM starts its drain.
ENTRYPOINT ["tmc-bridge"]
CMD ["run", "--config", "/etc/tmc-bridge/bridge.yaml"]
