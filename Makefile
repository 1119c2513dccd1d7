# One target per job; CI (.ci/run) calls the same targets a person does.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install kafka rocketmq demo demo-rocketmq test lint unit integration bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m bridge.tools.librocketmq
	touch $(STAMP)

# Kafka jars from Maven Central into .cache/ (git-ignored; downloaded once).
kafka: install
	$(PY) -m bridge.testing.kafka_broker --download-only

# RocketMQ jars (NameServer, broker, mqadmin) from Maven Central into .cache/, the same way.
rocketmq: install
	$(PY) -m bridge.testing.rocketmq_broker --download-only

demo: install kafka
	$(VENV)/bin/tmc-bridge demo --messages 10000

# The same demo into a local RocketMQ (ACL on), ordered by order id.
demo-rocketmq: install rocketmq
	$(VENV)/bin/tmc-bridge demo --sink rocketmq --messages 10000

lint: install
	$(VENV)/bin/ruff check bridge tests
	$(VENV)/bin/ruff format --check bridge tests
	$(VENV)/bin/mypy --strict bridge

unit: install
	$(PY) -m pytest tests/unit

integration: install kafka rocketmq
	$(PY) -m pytest tests/integration

test: install kafka rocketmq lint
	$(PY) -m pytest

bench: install kafka rocketmq
	$(PY) -m bridge.tools.bench

clean:
	rm -rf .work build *.egg-info
