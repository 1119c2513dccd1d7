#!/bin/sh
# Install tmc-bridge into a fresh virtual environment at $1, from the source tree in the
# current directory. The Dockerfile's build stage runs exactly this script, and CI
# replays it as a non-root user (scripts/check-image.sh), so what the image gets is
# what CI tested: the pinned runtime versions in constraints.txt, plus librocketmq.
set -eu
venv="${1:?usage: docker/install.sh VENV_DIR}"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --quiet --constraint constraints.txt .
# The native library of rocketmq-client-python (pinned wheel, SHA-256 checked).
"$venv/bin/python" -m bridge.rocketmq.provision --cache "${TMPDIR:-/tmp}/librocketmq-wheel"
"$venv/bin/python" -m bridge.rocketmq.provision --check
"$venv/bin/tmc-bridge" --version
