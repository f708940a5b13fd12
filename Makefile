# `make test`: what CI runs (.ci/run) and what the README asks before a commit.
# `make demo`: the whole pipeline end to end on the local broker.
# POSIX make only (no GNU extensions), so it runs wherever `make` does.
.POSIX:

PYTHON = python3
VENV = .venv
BIN = $(VENV)/bin

# The dashboard tests drive a real Chromium at /usr/bin/chromium and fail without one (they
# never skip): say at once which command installs it, not after minutes of tests.
# pytest -n 2: half the suite waits on brokers, worker restarts and outages, so two processes
# share the two cores well; they share one broker too (tests/conftest.py).
test: $(VENV)/.installed
	@test -x /usr/bin/chromium || { echo "make test: /usr/bin/chromium is missing (the dashboard tests need it); install it with: sudo apt-get install -y chromium" >&2; exit 1; }
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo
	$(BIN)/pytest -n 2 --dist loadfile

demo: $(VENV)/.installed
	$(BIN)/sieve demo

# Re-installed whenever pyproject.toml changes; the stamp saves ~5 s on every other run.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)

.PHONY: test demo
