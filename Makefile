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

.PHONY: venv demo test test-slow lint bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]" $(TORCH_PINS)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/fiberscope demo --out $(DEMO_OUT)

# lint-imports: the layers of src/fiberscope ([tool.importlinter] in pyproject.toml, docs/architecture.md)
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# The HTML report is tested in a real headless browser (tests/test_report_browser.py): Debian's Chromium is
# installed when /usr/bin/chromium is missing (as root, e.g. in CI); otherwise that test is skipped with its reason.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser test of the HTML report"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "note: no /usr/bin/chromium and not root: the browser test of the HTML report will be skipped"; fi

test: lint browser
	$(BIN)/python -m pytest

test-slow: $(STAMP) browser
	$(BIN)/python -m pytest -m slow -o addopts=""

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
