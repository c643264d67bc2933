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
# Podman and buildah read their settings from here (runc; ulimits a sandbox allows).
export CONTAINERS_CONF ?= $(CURDIR)/images/containers.conf
# The local Debian base `make base-image` makes, for machines that reach no container registry.
BASE_IMAGE := localhost/foundry-base:bookworm
CONTAINER_TOOLS := podman buildah runc mmdebstrap

.DEFAULT_GOAL := help
.PHONY: help install web demo test test-images e2e lint bench clean images image-cpu base-image container-tools

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

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

images: image-cpu ## Build the CPU and GPU images: docker where an engine answers, else buildah (docs/images.md)
	images/build.sh gpu $(IMAGE_REPO)/foundry-gpu:$(IMAGE_TAG)

image-cpu: ## Build the CPU image only (PYTHON_IMAGE=localhost/foundry-base:bookworm after `make base-image`)
	images/build.sh cpu $(IMAGE_REPO)/foundry-cpu:$(IMAGE_TAG)

container-tools: ## Install podman, buildah, runc and mmdebstrap from Debian where they are missing
	@missing=$$(for tool in $(CONTAINER_TOOLS); do command -v $$tool >/dev/null || echo $$tool; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing from Debian"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing uidmap; \
	fi

base-image: container-tools ## Make localhost/foundry-base:bookworm (Debian bookworm, python3) with mmdebstrap: no registry needed
	@if podman image exists $(BASE_IMAGE); then echo "$(BASE_IMAGE) is there (podman rmi it to make it again)"; else \
		set -e; mkdir -p build; \
		mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm build/base.tar; \
		podman import --change 'CMD ["/bin/bash"]' build/base.tar $(BASE_IMAGE); \
		rm build/base.tar; \
	fi

test-images: $(STAMP) $(NODE_STAMP) container-tools base-image ## Build (or reuse) the CPU image and run the tiny demo's Jobs in it with podman (tests/images)
	PYTHON_IMAGE=$(BASE_IMAGE) $(BIN)/python -m pytest tests/images

clean: ## Remove the store, runs, published demo output and caches (keeps .venv)
	rm -rf .foundry .pytest_cache bench/results
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
