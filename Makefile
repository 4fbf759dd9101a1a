# Developer entry points. `make test` creates .venv from requirements.txt on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test test-slow lint format bench bench-quality bench-table1 clean

$(BIN)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

venv: $(BIN)/.installed

demo: venv
	bash scripts/demo.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv lint
	$(BIN)/python -m pytest -q tests

test-slow: venv
	$(BIN)/python -m pytest -q -m slow tests

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	$(BIN)/python bench/sampler_overhead.py
	$(BIN)/python bench/ode_vs_host.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/conditional_overhead.py
	$(BIN)/python bench/ddls_langevin.py

# Quality vs NFE and the Table 1 layout on the demo model (run `make demo` first; ~1 h on CPU).
bench-quality: venv
	$(BIN)/python bench/quality_vs_nfe.py --workdir runs/demo --grid nfe
	$(BIN)/python bench/quality_vs_nfe.py --workdir runs/demo --grid table1 --num_samples 128

# Table 1 with the paper's procedure on Fashion-MNIST: trains a VE and a VP model (discrete
# objectives, N = 1000), then the sweep with 3 repeats (hours on 2 CPU cores; resumable).
bench-table1: venv
	bash scripts/table1_fashion_mnist.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
