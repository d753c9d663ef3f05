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

test-e2e: deps install cluster-binaries images ## end-to-end tests on the local cluster's real node
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

test: deps install cluster-binaries images ## every test: unit, quality, images and end-to-end (needs root)
	$(BIN)/pytest $(PYTEST_ARGS)

deps: ## install the Debian packages the cluster, images and tests need (root, apt-get)
	hack/install-deps.sh

bench: ## benchmarks; prints JSON
	$(BIN)/python -m benchmarks.all

demo: deps install cluster-binaries images ## local cluster + operator + a shopping guide trained on Online Retail
	$(BIN)/python hack/demo.py $(DEMO_ARGS)

demo-down: ## remove the demo's guide and operator and stop the local cluster
	$(BIN)/python hack/demo.py --down

chart-sync: ## refresh what is generated from crds/ and operator/rbac/: chart copies, docs/reference.md
	cp crds/*.yaml charts/shopping-guide/crds/
	cp operator/rbac/role.yaml charts/shopping-guide/files/role.yaml
	$(BIN)/python hack/crd_reference.py > docs/reference.md

openapi: ## regenerate docs/openapi.json from the server's types (serving/schema.py)
	$(BIN)/python -m shopping_guide.serving.openapi > docs/openapi.json

.PHONY: help install lint format test test-unit test-e2e deps bench chart-sync openapi demo demo-down

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
