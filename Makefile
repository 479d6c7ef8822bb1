# The Makefile is the interface: CI and people call these targets, nothing else.
# On a fresh machine only Python 3.11+, make and git are needed; uv is bootstrapped here.

SHELL := bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),.bootstrap/bin/uv)
export UV_PYTHON_DOWNLOADS := never
RUN := $(UV) run --frozen

.PHONY: help install run run-nats audit test test-unit test-integration lint format docs bench bench-token bench-bundles bench-parser bench-actions k8s-validate images test-images clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_%-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.bootstrap/bin/uv:
	python3 -m venv .bootstrap
	.bootstrap/bin/pip install --quiet uv==$(UV_VERSION)

install: .venv/.installed ## Install every workspace member and the dev tools into .venv
.venv/.installed: $(if $(shell command -v uv 2>/dev/null),,.bootstrap/bin/uv) pyproject.toml uv.lock $(wildcard shared/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --frozen --all-packages
	@touch $@

run: install ## Run the whole local stack (NATS + every service); Ctrl-C stops it
	$(RUN) python scripts/devstack.py

run-%: install ## Run one piece of the stack with what it needs, e.g. make run-nats
	$(RUN) python scripts/devstack.py --only $*

audit: install ## List the audit trail of `make run` as JSON lines (ARGS="--since 1h ...")
	NATS_NKEY_SEED_FILE=$${NATS_NKEY_SEED_FILE:-.data/nats-keys/admin.nk} $(RUN) python -m avatar_shared.audit $(ARGS)

test: install ## Run all tests (unit incl. k8s-validate, integration on real NATS, e2e)
	$(RUN) pytest -m "not images"

test-unit: install ## Run the unit tests only
	$(RUN) pytest -m unit

test-integration: install ## Run the integration and e2e tests only
	$(RUN) pytest -m "integration or e2e"

lint: install ## ruff (lint + format check) everywhere, mypy --strict on the packages
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy shared/src services/token/src services/bundles/src services/agent/src services/actions/src scripts

format: install ## Apply ruff's fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

bench: bench-token bench-bundles bench-parser bench-actions ## Run every benchmark; results go to docs/benchmarks.md

bench-token: install ## Token service vs a minimal token endpoint (throughput, p99)
	$(RUN) python -m scripts.bench.bench_token

bench-bundles: install ## Bundle service cache hits at 500 req/s, peak, upstream calls
	$(RUN) python -m scripts.bench.bench_bundles

bench-parser: install ## Agent tag parser throughput on typical and hostile text
	$(RUN) python -m scripts.bench.bench_parser

bench-actions: install ## Actions event-to-SendData latency at 1/100/1000 rooms, throughput
	$(RUN) python -m scripts.bench.bench_actions

k8s-validate: install ## Render every deploy/k8s overlay, validate it offline, check our policies
	$(RUN) python -m scripts.k8s_validate

SERVICES := token bundles actions agent
DOCKER_BUILD_FLAGS ?=
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' services/token/pyproject.toml)
images: ## Build one image per service (needs a Docker engine and the base images)
	@command -v docker >/dev/null || { echo "error: docker is not installed"; exit 1; }
	@for s in $(SERVICES); do \
		echo "building avatar-backend/$$s:$(IMAGE_TAG)"; \
		docker build $(DOCKER_BUILD_FLAGS) -f services/$$s/Dockerfile -t avatar-backend/$$s:$(IMAGE_TAG) . || exit 1; \
	done

test-images: install ## Build the images (classic builder; stand-in bases if need be) and run each as deploy/k8s does
	$(RUN) python -m scripts.images base
	DOCKER_BUILDKIT=0 $(MAKE) images DOCKER_BUILD_FLAGS="--network host"
	$(RUN) python -m scripts.images sizes --tag $(IMAGE_TAG)
	$(RUN) pytest -m images

docs: install ## Regenerate docs/events.schema.json, the README configuration table, the dev NATS permissions
	$(RUN) python -m avatar_shared.schema docs/events.schema.json
	$(RUN) python scripts/config_table.py README.md
	$(RUN) python -m scripts.nats_keys deployed deploy/k8s/overlays/dev/nats.conf

clean: ## Remove the virtualenvs, caches and local NATS data
	rm -rf .venv .bootstrap .data .pytest_cache .mypy_cache .ruff_cache .hypothesis
