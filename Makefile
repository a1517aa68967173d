# strangler: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all install test lint typecheck pytest chromium demo bench loadtest soak clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The dashboard's browser test drives Debian's headless Chromium (never a downloaded one).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		echo "installing chromium and chromium-driver with apt-get (browser test of /-/ui)"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi

test: chromium lint typecheck pytest

demo: $(STAMP)  # make demo DEMO_ARGS=--keep-running
	$(BIN)/strangler demo $(DEMO_ARGS)

bench: $(STAMP)
	@if ! command -v wrk >/dev/null 2>&1 || ! PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1; then \
		echo "installing wrk and nginx-light with apt-get"; \
		apt-get install -y wrk nginx-light || { apt-get update && apt-get install -y wrk nginx-light; }; \
	fi
	$(BIN)/python -m bench.run $(BENCH_ARGS)

soak: $(STAMP)
	$(BIN)/python -m bench.soak

loadtest: $(STAMP)  # LOADTEST_USERS=50 LOADTEST_DURATION=60s; LOADTEST_ARGS="--profile proxy-only"
	$(BIN)/python -m loadtests.run $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
