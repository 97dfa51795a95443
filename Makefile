# DFMS developer commands. The README's two commands are `make up` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dfms-installed
ARGS ?=

.PHONY: install trace-ui up test lint unit integration bench proto docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the package definition changes (the Rabin extension is built here too).
$(STAMP): $(BIN)/python pyproject.toml $(wildcard setup.py) $(wildcard chunker/*.c)
	$(BIN)/python -m pip install --quiet -e '.[stack,dev]'
	touch $(STAMP)

# The Compose specification's JSON schema for tests/unit/test_deploy.py, read out of the
# docker-compose 1.29.2 wheel: downloaded, never installed (it pins PyYAML<6), and checked
# against its known SHA-256.
COMPOSE_SPEC := $(VENV)/share/compose_spec.json
COMPOSE_WHEEL := docker_compose-1.29.2-py2.py3-none-any.whl
COMPOSE_SPEC_SHA256 := 0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac

$(COMPOSE_SPEC): $(BIN)/python
	rm -rf $(VENV)/share/compose-dl
	mkdir -p $(VENV)/share
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: \
		--dest $(VENV)/share/compose-dl docker-compose==1.29.2
	$(BIN)/python -c "import hashlib, sys, zipfile; \
		data = zipfile.ZipFile(sys.argv[1]).read('compose/config/compose_spec.json'); \
		assert hashlib.sha256(data).hexdigest() == sys.argv[3], 'unexpected compose_spec.json'; \
		open(sys.argv[2], 'wb').write(data)" \
		$(VENV)/share/compose-dl/$(COMPOSE_WHEEL) $@ $(COMPOSE_SPEC_SHA256)
	rm -rf $(VENV)/share/compose-dl

install: $(STAMP) $(COMPOSE_SPEC)

# The trace UI of `dfms up --observability`: Arize Phoenix (about 850 MB), in a venv of its
# own because it pins a newer OpenTelemetry SDK than DFMS. Optional for `make up`;
# `make test` installs it (tests/integration/test_observability.py opens a trace in it).
TRACE_UI_VENV ?= .venv-trace-ui
PHOENIX_VERSION := 20.26.1
TRACE_UI_STAMP := $(TRACE_UI_VENV)/.dfms-installed
$(TRACE_UI_STAMP):
	$(PYTHON) -m venv $(TRACE_UI_VENV)
	$(TRACE_UI_VENV)/bin/python -m pip install --quiet 'arize-phoenix==$(PHOENIX_VERSION)'
	touch $@

## Install the local trace UI (Arize Phoenix) that `make up ARGS=--observability` starts.
trace-ui: $(TRACE_UI_STAMP)

# `dfms up --observability` finds Phoenix here (expanded when a recipe runs, so a venv made
# earlier in the same `make test` counts).
export DFMS_PHOENIX ?= $(if $(wildcard $(TRACE_UI_VENV)/bin/phoenix),$(CURDIR)/$(TRACE_UI_VENV)/bin/phoenix)

## Start the whole local cluster in this terminal (Ctrl-C stops it). ARGS="--nodes 5" etc.
up: install
	$(BIN)/dfms up $(ARGS)

## Lint and run the whole test suite against a real local cluster started for the run.
test: install trace-ui lint
	@$(BIN)/python -m pytest $(ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "pytest collected no tests: that is a failure"; exit 1; fi; \
	exit $$code

## ruff, then mypy on the package as imported (tools/typecheck.py: see the README's Layout).
lint: install
	$(BIN)/ruff check .
	$(BIN)/python tools/typecheck.py

unit: install
	$(BIN)/python -m pytest tests/unit $(ARGS)

integration: install
	$(BIN)/python -m pytest tests/integration $(ARGS)

bench: install
	$(BIN)/python benchmarks/bench_chunker.py

## Run a k6 scenario (benchmarks/k6/$(PROFILE).js) against the cluster `make up` runs;
## starts nothing. PROFILE=smoke|mixed|ingest|dedup|auth_storm|soak|overload|small_requests|small_uploads,
## K6ARGS="-e VUS=5 ..." (docs/load.md), DATA_DIR if not .dfms.
PROFILE ?= smoke
DATA_DIR ?= $(or $(DFMS_DATA_DIR),.dfms)
K6ARGS ?=
.PHONY: load
load:
	@test -f benchmarks/k6/$(PROFILE).js || { echo "make load: no scenario benchmarks/k6/$(PROFILE).js"; exit 2; }
	@test -x $(BIN)/k6 || { echo "make load: $(BIN)/k6 is missing: run make install (or make up) first"; exit 2; }
	@urls=$$($(BIN)/python benchmarks/k6/cluster_urls.py $(DATA_DIR)) || exit 1; \
	set -- $$urls; \
	echo "make load: $(PROFILE) against $$1"; \
	$(BIN)/k6 run --no-usage-report -e BASE_URL=$$1 -e METRICS_URL=$${2:-} $(K6ARGS) \
		benchmarks/k6/$(PROFILE).js

## Regenerate the generated docs: the sample config and the README's config table.
docs: install
	$(BIN)/dfms config sample > deploy/dfms.sample.yaml
	$(BIN)/python -c "import re, subprocess; t = subprocess.run(['$(BIN)/dfms', 'config', \
		'markdown'], capture_output=True, text=True, check=True).stdout; r = open('README.md').read(); \
		open('README.md', 'w').write(re.sub(r'(<!-- config-table:[^\n]*-->\n).*?(<!-- /config-table -->)', \
		lambda m: m.group(1) + t + m.group(2), r, flags=re.S))"

## Regenerate the gRPC code from dfms/proto/chunk.proto (the output is committed).
proto: install
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. \
		dfms/proto/chunk.proto

clean:
	rm -rf $(VENV) $(TRACE_UI_VENV) build *.egg-info .pytest_cache .ruff_cache
