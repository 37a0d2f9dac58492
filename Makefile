# Every target that runs code depends on the virtualenv, so `make train` and
# `make test` work on a fresh clone without `make setup` first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUNS   ?= runs
# The table targets reuse a finished run of each item under $(RUNS); FORCE=1 runs them again.
FORCE_OPT := $(if $(FORCE),--force)

.PHONY: setup train test table1 table2 table3 final lrrange bonus table4 best report bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m cifar2l.kernels  # compile the numba kernels once, into their cache
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/cifar2l train configs/default.yaml --out $(RUNS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

table1: $(STAMP)
	$(BIN)/cifar2l gradcheck configs/gradcheck.yaml --out $(RUNS)

table2: $(STAMP)
	$(BIN)/python -m cifar2l.tables table2 --out $(RUNS) $(FORCE_OPT)

table3: $(STAMP)
	$(BIN)/python -m cifar2l.tables table3 --out $(RUNS) $(FORCE_OPT)

final: $(STAMP)
	$(BIN)/python -m cifar2l.tables final --out $(RUNS) $(FORCE_OPT)

lrrange: $(STAMP)
	$(BIN)/python -m cifar2l.tables lrrange --out $(RUNS) $(FORCE_OPT)

bonus: $(STAMP)
	$(BIN)/python -m cifar2l.tables bonus --out $(RUNS) $(FORCE_OPT)

table4: $(STAMP)
	$(BIN)/python -m cifar2l.tables table4 --out $(RUNS) $(FORCE_OPT)

best: $(STAMP)
	$(BIN)/python -m cifar2l.tables best --out $(RUNS) $(FORCE_OPT)

# Runs every item that has no finished run under $(RUNS) yet (FORCE=1: every item), then
# writes report/.
report: $(STAMP)
	$(BIN)/python -m cifar2l.tables report --out $(RUNS) $(FORCE_OPT)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

lint: $(STAMP)
	$(BIN)/ruff check cifar2l tests benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
