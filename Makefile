# Two commands do all set-up on a fresh machine:
#   make demo   - the main job: a 4-peer swarm fine-tuning the bundled MiniLM
#   make test   - the test suite
# Both create .venv on first use. TORCH picks the torch build (the CPU 2.13.0 by default).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test bench experiments clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,experiments]"
	touch $@

demo: setup
	$(BIN)/seedswarm demo $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python scripts/bench_engine.py
	$(BIN)/python scripts/bench_codec.py

experiments: setup
	$(BIN)/python scripts/experiments/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
