# Foundry's entry points. `make demo` and `make test` install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The web client the tests load published models with: transformers.js (and playwright-core)
# pinned in package.json/package-lock.json, and Debian's Chromium.
NODE_STAMP := node_modules/.installed
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
TORCH := torch==2.13.0
# `make images` tags: the chart's default repositories, at the project's version.
IMAGE_REPO ?= ghcr.io/foundry-ml
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.DEFAULT_GOAL := help
.PHONY: help install web demo test e2e lint bench clean images

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: this exact version resolves to the CPU build; any other spec pulls CUDA.
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[jobs,test,dev]"
	# optimum-onnx (GPT-2 and other families the builder does not take) needs transformers < 4.58:
	# its own small environment inside .venv, sharing torch (jobs/onnx/optimum_env.py).
	$(BIN)/python -m jobs.onnx.optimum_env
	# Byte-compile now: start-up time matters for `foundry lint`, even where
	# PYTHONDONTWRITEBYTECODE keeps Python from caching it at run time.
	$(BIN)/python -m compileall -q foundry jobs
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the submitter, the stage workloads and the test tools

# --ignore-scripts: no install step may download anything (onnxruntime-node ships its binaries).
$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "make: the web client tests need Node.js 20 or newer with npm" >&2; exit 1; }
	npm ci --ignore-scripts --no-audit --no-fund
	touch $(NODE_STAMP)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

web: $(NODE_STAMP) $(CHROMIUM) ## Install the web client the tests use: node_modules (npm ci) and Debian's chromium

demo: $(STAMP) ## Run recipes/tiny-demo.yml end to end, offline, and verify what it published
	HF_HUB_OFFLINE=1 $(BIN)/foundry run recipes/tiny-demo.yml
	$(BIN)/foundry verify .foundry/published/models/tiny-demo-q4
	@echo "catalogue: .foundry/published/models/models.json"

test: $(STAMP) $(NODE_STAMP) $(CHROMIUM) ## Run the test suite
	$(BIN)/python -m pytest

e2e: $(STAMP) ## Run the tiny demo on the cluster $KUBECONFIG points at (see tests/e2e/run.py); skips, saying why, without one
	$(BIN)/python tests/e2e/run.py

lint: $(STAMP) ## Lint the code and every recipe
	$(BIN)/ruff check foundry jobs tests bench
	$(BIN)/foundry lint recipes/

bench: $(STAMP) $(NODE_STAMP) $(CHROMIUM) ## Run the benchmarks; results in bench/results/
	$(BIN)/python -m bench

images: ## Build the CPU and GPU container images (needs a Docker engine)
	@docker info >/dev/null 2>&1 || { echo "make images: no Docker engine here (docker info failed); build on a machine with Docker, or let CI build images/Dockerfile.cpu and images/Dockerfile.gpu" >&2; exit 1; }
	docker build -f images/Dockerfile.cpu -t $(IMAGE_REPO)/foundry-cpu:$(IMAGE_TAG) .
	docker build -f images/Dockerfile.gpu -t $(IMAGE_REPO)/foundry-gpu:$(IMAGE_TAG) .

clean: ## Remove the store, runs, published demo output and caches (keeps .venv)
	rm -rf .foundry .pytest_cache bench/results
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
