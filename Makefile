# The two commands: `make run` (dashboard on ./gradscope.db) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint bench docs clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

# `make run PORT=8611`; any other dashboard option through ARGS: `make run ARGS="--db x.db"`.
PORT ?= 8501
ARGS ?=
run: $(STAMP)
	$(BIN)/gradscope dashboard --port $(PORT) $(ARGS)

# Last, the guides: a strict build into the ignored site/, silent unless it fails (not with
# --quiet: `mkdocs build --strict --quiet` lets warnings such as broken links pass).
test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/pytest -q
	@out=$$(NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site 2>&1) || { echo "$$out"; exit 1; }

# The quick subset: no multi-process/multi-second tests, no browser, no PostgreSQL server.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -m "not slow and not browser and not postgres"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/overhead.py

# The guides (MkDocs Material): regenerate the command reference from --help, then serve them.
docs: $(STAMP)
	$(BIN)/python docs/gen_cli.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
