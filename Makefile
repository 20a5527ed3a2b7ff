# The few commands a newcomer needs. Each target sets up the virtual environment on first use:
# the pinned CPU build of PyTorch first (so pip does not pull CUDA wheels), then lossvista itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lossvista-installed

.PHONY: setup test-tools demo test test-fast lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Debian's chromium + chromium-driver (the report's browser test) and ffmpeg (the MP4 animation
# test); best effort, see the script.
test-tools:
	./scripts/install-test-tools.sh

demo: setup
	$(BIN)/lossvista demo --out lossvista-demo

test: setup test-tools
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks  # Markdown examples keep their layout
	$(BIN)/mypy  # settings in pyproject.toml ([tool.mypy])

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/bench_surface.py

clean:
	rm -rf $(VENV) lossvista-demo .pytest_cache .ruff_cache
