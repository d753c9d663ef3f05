# Shopping Guide: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-20s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python ## install the project and its tools into .venv
	$(BIN)/pip install --quiet -e '.[dev]'

lint: ## ruff, ruff format --check, mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-unit: ## unit and model-quality tests (no cluster)
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

test-e2e: cluster-binaries ## end-to-end tests on a local control plane
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

test: cluster-binaries ## every test: unit, quality and end-to-end
	$(BIN)/pytest $(PYTEST_ARGS)

bench: ## benchmarks; prints JSON
	$(BIN)/python -m benchmarks.all

demo: install ## local control plane + operator + a shopping guide trained on Online Retail
	$(BIN)/python hack/demo.py

demo-down: ## stop the demo's operator, node, pods and the local control plane
	$(BIN)/python hack/demo.py --down

chart-sync: ## refresh what is generated from crds/ and operator/rbac/: chart copies, docs/reference.md
	cp crds/*.yaml charts/shopping-guide/crds/
	cp operator/rbac/role.yaml charts/shopping-guide/files/role.yaml
	$(BIN)/python hack/crd_reference.py > docs/reference.md

.PHONY: help install lint format test test-unit test-e2e bench chart-sync demo demo-down

images: ## build both container images with podman (hack/images.sh --help)
	hack/images.sh build

base-image: ## build (or reuse) the local Debian base image the images build FROM
	hack/images.sh base

.PHONY: images base-image

ifneq ($(wildcard hack/cluster.mk),)
include hack/cluster.mk
else
cluster-binaries:
	@echo "no hack/cluster.mk: end-to-end tests will be skipped"
endif
