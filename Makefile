# Foundry's entry points. `make demo` and `make test` install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.DEFAULT_GOAL := help
.PHONY: help install demo test lint bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: this exact version resolves to the CPU build; any other spec pulls CUDA.
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[jobs,test,dev]"
	# Byte-compile now: start-up time matters for `foundry lint`, even where
	# PYTHONDONTWRITEBYTECODE keeps Python from caching it at run time.
	$(BIN)/python -m compileall -q foundry jobs
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the submitter, the stage workloads and the test tools

demo: $(STAMP) ## Run recipes/tiny-demo.yml end to end, offline, and verify what it published
	HF_HUB_OFFLINE=1 $(BIN)/foundry run recipes/tiny-demo.yml
	$(BIN)/foundry verify .foundry/published/models/tiny-demo-q4
	@echo "catalogue: .foundry/published/models/models.json"

test: $(STAMP) ## Run the test suite
	$(BIN)/python -m pytest

lint: $(STAMP) ## Lint the code and every recipe
	$(BIN)/ruff check foundry jobs tests bench
	$(BIN)/foundry lint recipes/

bench: $(STAMP) ## Run the benchmarks; results in bench/results/
	$(BIN)/python -m bench

clean: ## Remove the store, runs, published demo output and caches (keeps .venv)
	rm -rf .foundry .pytest_cache bench/results
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
