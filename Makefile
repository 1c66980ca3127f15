# Two commands that work on a fresh machine:
#   make demo   — create a virtualenv, install Plexus, run the demo mesh
#   make test   — install the dev dependencies and run the whole suite (lint, layer contracts, tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck bench proto clean

$(VENV)/.installed: pyproject.toml setup.py src/plexus/core/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev pyproject.toml
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/plexus demo $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider $(ARGS)

bench: $(VENV)/.installed-bench
	$(PY) bench/http1.py $(ARGS)

# Regenerate the gRPC stubs after changing proto/ (the generated files are committed).
proto: $(VENV)/.installed-dev
	cd proto && ../$(PY) -m grpc_tools.protoc -I. --python_out=../src --grpc_python_out=../src \
		--pyi_out=../src plexus/proto/registry.proto plexus/proto/control.proto

clean:
	rm -rf $(VENV) build dist src/*.egg-info
	find src -name '*.so' -delete
