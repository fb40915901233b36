# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench chaos dev clean ui-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m compileall -q egis workflows activities worker.py starter.py
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/egis demo $(ARGS)

dev: $(STAMP)
	$(BIN)/egis dev up $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

chaos: $(STAMP)
	$(BIN)/python -m chaos $(ARGS)

# the web UI as an operator's console, in headless Chromium (Debian: apt-get install -y chromium);
# screenshots in docs/ui (ARGS="--out DIR" elsewhere)
ui-check: $(STAMP)
	$(BIN)/python -m uicheck $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
