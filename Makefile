# The README's two commands. Each builds .venv from nothing the first time it runs.
PYTHON ?= python3
VENV := .venv
# The data set beside the checkout (as in CI), else ./data (the app then says how to get it).
export CIFAR10_DIR ?= $(if $(wildcard ../shared/data/cifar10),$(abspath ../shared/data/cifar10),data)

.PHONY: app test lint

$(VENV)/.runtime: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

app: $(VENV)/.runtime
	$(VENV)/bin/python app.py

test: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
