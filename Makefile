# fiberscope: `make demo` runs the offline demo, `make test` runs lint + the test suite.
# Both create the virtual environment they need (.venv) on first use.
#
# torch is installed first and pinned, so pip never resolves a multi-GB build of its own choosing:
# torch 2.14.1 + torchvision 0.29.1 is the pair that timm and open_clip need, and it runs on CPU or GPU.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,timm,clip,transformers,ray
STAMP := $(VENV)/.fiberscope-$(EXTRAS)
DEMO_OUT ?= demo-out

.PHONY: venv demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]" $(TORCH_PINS)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/fiberscope demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -o addopts=""

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
