#!/bin/sh
# Install tmc-bridge into a fresh virtual environment at $1, from the source tree in the
# current directory. The Dockerfile's build stage runs exactly this script, and CI
# replays it as a non-root user (scripts/check-image.sh), so what the image gets is
# what CI tested: the pinned runtime versions in constraints.txt.
#
# WITH_ROCKETMQ=true (the default) adds the RocketMQ sink and the ONS source: the
# rocketmq-client-python package (source-only, pure Python) and its native librocketmq
# (x86_64 only, pinned wheel, SHA-256 checked). WITH_ROCKETMQ=false is Kafka only, and
# installs nothing native beyond confluent-kafka's and numpy's wheels.
set -eu
venv="${1:?usage: docker/install.sh VENV_DIR}"
python="${PYTHON:-python3}"
with_rocketmq="${WITH_ROCKETMQ:-true}"

"$python" -m venv "$venv"
if [ "$with_rocketmq" = true ]; then
    "$venv/bin/pip" install --no-cache-dir --quiet --constraint constraints.txt '.[rocketmq]'
    "$venv/bin/python" -m bridge.rocketmq.provision --cache "${TMPDIR:-/tmp}/librocketmq-wheel"
    "$venv/bin/python" -m bridge.rocketmq.provision --check
else
    "$venv/bin/pip" install --no-cache-dir --quiet --constraint constraints.txt .
fi
"$venv/bin/tmc-bridge" --version
# Nothing installs at run time: pip and setuptools stay out of the runtime layer.
"$venv/bin/python" -m pip uninstall --yes --quiet pip setuptools
