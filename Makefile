# mlq: the two commands of the README's quick start are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The stamp lives in the work tree, so a fresh clone always runs the install step,
# even when VENV points at a cached environment (CI keeps one to spare the torch wheel).
STAMP := .installed.stamp

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install run demo test lint browser sentinel faketime unit integration e2e bench clean

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@echo "installing mlq into $(VENV): about 6.4 GB (torch and its CUDA libraries are most of it; they run on a CPU too)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e clients/python  # the client, a distribution of its own
	$(BIN)/python -m pip install --progress-bar on -e ".[test]"
	echo "$(abspath $(VENV))" > $@

run: install  ## the whole stack on this machine, a demo job of every kind, then serve until Ctrl-C
	$(BIN)/mlq standalone --demo

demo: install  ## the same, stopping after the demo
	$(BIN)/mlq standalone --demo --exit-after-demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The ops page is tested in a real browser: Debian's chromium and chromium-driver, installed
# from the distribution's packages when missing (never a test tool's own browser download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  $(SUDO) apt-get install -y -q chromium chromium-driver || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver)

# The Redis failover test runs real sentinels: Debian's redis-sentinel, installed the same way
# when missing (the test falls back to `redis-server --sentinel` where it cannot be installed).
sentinel:
	@command -v redis-sentinel >/dev/null || \
	  $(SUDO) apt-get install -y -q redis-sentinel || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-sentinel)

# The multi-host fault tests (tests/faults/test_hosts.py) run a worker host whose clock is
# 10 minutes off with libfaketime: Debian's faketime, installed the same way when missing.
faketime:
	@command -v faketime >/dev/null || \
	  $(SUDO) apt-get install -y -q faketime || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q faketime)

test: install lint browser sentinel faketime  ## lint, then every test (real Redis, Sentinel, PostgreSQL, workers, Chromium)
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit
integration: install
	$(BIN)/python -m pytest tests/integration
e2e: install
	$(BIN)/python -m pytest tests/e2e

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(STAMP) .mlq test-artifacts .pytest_cache .mypy_cache .ruff_cache
