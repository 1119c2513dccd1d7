#!/bin/sh
# Replays the image build without Docker: the Docker build context is copied into a fresh
# folder, docker/install.sh runs there as a numeric non-root user (10001, like the image's
# USER) with its own HOME, and the installed bridge must answer --version and pass
# check-config for both example sinks (the RocketMQ one needs the native library).
set -eu
cd "$(dirname "$0")/.."
work="$(mktemp -d "${TMPDIR:-/tmp}/tmc-bridge-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/home"
# What the Dockerfile COPYs, nothing else.
cp -R pyproject.toml README.md LICENSE constraints.txt bridge.yaml docker bridge examples "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +

# System Python (the image's is python:3.11-slim); not a per-user pyenv shim.
python="${IMAGE_PYTHON:-/usr/bin/python3}"
if [ "$(id -u)" = 0 ]; then
    chown -R 10001:10001 "$work"
    as_user="setpriv --reuid=10001 --regid=10001 --clear-groups"
else
    as_user=""
fi
run() {
    # shellcheck disable=SC2086 # as_user is a command prefix, split on purpose
    (cd "$work/src" && env HOME="$work/home" TMPDIR="$work" PATH=/usr/bin:/bin \
        PYTHON="$python" $as_user "$@")
}
run sh docker/install.sh "$work/venv"
bin="$work/venv/bin/tmc-bridge"
run "$bin" --version
run env TMC_APP_SECRET=check "$bin" check-config --config bridge.yaml
run env ROCKETMQ_ACCESS_KEY=ak ROCKETMQ_SECRET_KEY=sk TMC_APP_SECRET=check \
    "$bin" check-config --config examples/bridge-rocketmq.yaml
owner="$(stat -c %u "$work/venv/bin/python")"
echo "image install replayed as uid $owner: ok"
