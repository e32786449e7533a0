# vlprompt developer entry points. `make demo` and `make test` work on a fresh machine:
# they create .venv, install pinned torch and the package, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned here (not in pyproject.toml) so a fresh machine gets the build that lies on this disk.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[dev,hf,tensorboard,onnx,cluster]"
	touch $(STAMP)

demo: install
	$(BIN)/vlprompt demo --out demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info
