# The two entry points: `make demo` (build the demo set, index it, serve it) and `make test`.
# Both are idempotent and set everything up on a fresh machine.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA := data/demo
INDEX := data/demo-index
QUEUE := data/review.sqlite
MODEL := models/visnet-default.pt
DETECTOR := models/detector-default.pt
PORT ?= 8000
API_KEY ?= demo-key

.PHONY: demo test setup debian lint typecheck clean

demo: setup
	@if [ ! -f $(DATA)/summary.json ]; then $(BIN)/visnet data demo --out $(DATA); \
	else echo "demo set already built in $(DATA) (delete it to rebuild):"; cat $(DATA)/summary.json; fi
	@if [ -f $(INDEX)/manifest.json ]; then $(BIN)/visnet index rebuild --index $(INDEX) --model $(MODEL) --if-stale; \
	else $(BIN)/visnet index build --catalog $(DATA) --model $(MODEL) --out $(INDEX); fi
	@[ -f $(INDEX)/samples/samples.json ] || $(BIN)/visnet samples --data $(DATA) --out $(INDEX)/samples
	@[ -f $(QUEUE) ] || { $(BIN)/visnet triplets catalog --data $(DATA) --out data/catalog-triplets.jsonl \
	    --scorers colour=1,texture=1,deep:$(MODEL)=1 --per-product 1 >/dev/null && \
	  $(BIN)/visnet review --queue $(QUEUE) --add data/catalog-triplets.jsonl --data $(DATA) --stats; }
	@echo "serving the demo at http://127.0.0.1:$(PORT)  (API key for writes: $(API_KEY); Ctrl-C stops)"
	$(BIN)/visnet serve --index $(INDEX) --model $(MODEL) --port $(PORT) --api-key $(API_KEY) --review-queue $(QUEUE) --detector $(DETECTOR)

test: setup
	$(BIN)/pytest -q

setup: debian $(VENV)/.installed

debian:
	@bash scripts/setup-debian.sh

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (Python 3.11)"; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev,scale]'
	@touch $@

lint: setup
	$(BIN)/ruff check visnet tests benchmarks scripts
	$(BIN)/ruff format --check visnet tests benchmarks scripts
	@# one home for each idea: no block of six or more lines copied across modules
	$(BIN)/pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --jobs=1 --score=n visnet

typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf $(VENV) data/
