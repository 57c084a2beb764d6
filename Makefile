# hs: `make run` starts a monolith on SQLite with a generated config; `make test` runs every test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVER_NAME ?= localhost
# `make run PORT=8018`: the client port (metrics 992 above it); a port of its own keeps its own data.
PORT ?= 8008
DATA ?= data$(if $(filter-out 8008,$(PORT)),-$(PORT))

.PHONY: run test lint bench venv system-packages clean

$(BIN)/hs: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/hs

venv: $(BIN)/hs

$(DATA)/homeserver.yaml: | $(BIN)/hs
	$(BIN)/hs generate-config --server-name $(SERVER_NAME) --config-path $(DATA)/homeserver.yaml --open-registration \
		--port $(PORT)

run: $(BIN)/hs $(DATA)/homeserver.yaml
	$(BIN)/hs run --config $(DATA)/homeserver.yaml

system-packages:
	deploy/system-packages.sh

test: system-packages $(BIN)/hs
	$(BIN)/pytest -q -x -p no:cacheprovider tests examples

lint: $(BIN)/hs
	$(BIN)/ruff check hs tests bench examples
	$(BIN)/mypy hs

bench: $(BIN)/hs
	$(BIN)/python bench/bench_send_sync.py

clean:
	rm -rf $(VENV) $(DATA)
