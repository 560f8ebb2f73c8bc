# The two entry points: `make demo` (build the demo set, index it, serve it) and `make test`.
# Both are idempotent and set everything up on a fresh machine.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA := data/demo

.PHONY: demo test setup debian lint typecheck clean

demo: setup
	@if [ ! -f $(DATA)/summary.json ]; then $(BIN)/visnet data demo --out $(DATA); \
	else echo "demo set already built in $(DATA) (delete it to rebuild):"; cat $(DATA)/summary.json; fi

test: setup
	$(BIN)/pytest -q

setup: debian $(VENV)/.installed

debian:
	@bash scripts/setup-debian.sh

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (Python 3.11)"; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

lint: setup
	$(BIN)/ruff check visnet tests benchmarks
	$(BIN)/ruff format --check visnet tests benchmarks

typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf $(VENV) data/demo data/demo.partial
