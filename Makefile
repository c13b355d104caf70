# voxseg: `make demo` runs the whole job on synthetic data, `make test` runs lint + tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: install demo test test-fast lint bench bench-quality clean

install: $(STAMP)

# Idempotent: reinstalls only when the pins or the package metadata change.
# torch is pinned (requirements.lock) so pip takes the CPU build instead of a multi-GB CUDA one.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: install
	$(BIN)/voxseg demo --out $(DEMO_DIR) --overwrite

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The whole suite, with its slowest tests named so a slow one is noticed as the suite grows.
test: lint
	$(BIN)/python -m pytest -q --durations=15

# The edit loop: everything but the end-to-end tests marked `slow` (subprocesses, torchrun).
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow" --durations=5

bench: install
	$(BIN)/python benchmarks/bench_step.py
	$(BIN)/python benchmarks/bench_levers.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_predict.py

# Default recipe, 10 minutes, 3 seeds x 3 imaging domains, quiet and busy (~3.5 h on 2 cores).
bench-quality: install
	$(BIN)/python benchmarks/bench_quality.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
