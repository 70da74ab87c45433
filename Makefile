# gptvae: every command a researcher runs. `make help` lists them.
# The first target that needs Python creates .venv and installs the project into it.

SHELL        := /bin/bash
PYTHON       ?= python3
VENV         ?= .venv
PY           := $(VENV)/bin/python
# torch is installed before anything that depends on it, so pip never chooses a build for you.
# The pinned version is the offline CPU build on the project machines and the CUDA build elsewhere on Linux.
TORCH_SPEC   ?= torch==2.13.0
STAMP        := $(VENV)/.installed
CLUSTER_STAMP := $(VENV)/.installed-cluster

PRESET       ?= cpu
DATASET      ?=
SEEDS        ?= 0
JOBS         ?= 1
EXECUTOR     ?=
RUNS_ROOT    ?= runs
SET          ?=
PLAN         ?=
# pytest-xdist: one worker a core (tests/conftest.py pins each to its own), a test module at a time, so a
# module's fixture (a server, a cluster, a trained sweep) is built once. PYTEST_ARGS="-n 0" runs the suite in
# one process; PYTEST_ARGS="-n auto -m 'not cluster'" leaves out the Ray cluster.
PYTEST_ARGS  ?= -n auto --dist loadscope
MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export MLFLOW_TRACKING_URI

# one ablation per spec: experiments/kl_floor.toml is `make ablation-kl-floor`
EXPERIMENTS  ?= experiments
SPECS        := $(sort $(wildcard $(EXPERIMENTS)/*.toml))
ABLATIONS    := $(foreach spec,$(SPECS),ablation-$(subst _,-,$(basename $(notdir $(spec)))))

# exported results, figures and tables live per preset, so a smoke run never overwrites the paper's; a folder
# of specs other than experiments/ gets its own (EXPERIMENTS=experiments/probes: paper/results/cpu-probes)
STUDY        := $(PRESET)$(if $(filter-out experiments,$(patsubst %/,%,$(EXPERIMENTS))),-$(notdir $(patsubst %/,%,$(EXPERIMENTS))))
RESULTS      ?= paper/results/$(STUDY)
FIGURES      ?= paper/figures/$(STUDY)
TABLES       ?= paper/tables/$(STUDY)
NOTEBOOKS    ?= analysis/executed/$(STUDY)

SWEEP = $(PY) -m gptvae sweep --preset $(PRESET) $(if $(DATASET),--dataset $(DATASET)) --seeds "$(SEEDS)" --jobs $(JOBS) \
        --runs-root $(RUNS_ROOT) --results $(RESULTS) $(if $(EXECUTOR),--executor $(EXECUTOR)) $(foreach item,$(SET),--set $(item)) \
        $(if $(PLAN),--plan)

.DEFAULT_GOAL := help
.PHONY: help env test bench data ablations mlflow-ui mlflow-server evaluations results figures paper clean

help:  ## list the targets
	@grep -E '^[a-z][a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 26
	@echo "ablations here: $(ABLATIONS)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

# Ray, the optional extra: installed when a target needs it (EXECUTOR=ray, the tests of the Ray executor)
$(CLUSTER_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,cluster]"
	@touch $@

env: $(STAMP)  ## create .venv and install the project (runs automatically)

test: $(STAMP) $(CLUSTER_STAMP)  ## run the test suite on every core (real corpora tests need GPTVAE_DATA_DIR)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)  ## benchmarks: print speed ratios (not tests)
	$(PY) -m gptvae bench

data: $(STAMP)  ## describe a dataset: splits, vocabulary, token counts (DATASET=...)
	$(PY) -m gptvae data $(or $(DATASET),yelp)

ablation-%: $(STAMP) $(if $(filter ray,$(EXECUTOR)),$(CLUSTER_STAMP))  ## sweep experiments/<name>.toml (PRESET DATASET SEEDS JOBS EXECUTOR SET="k=v ..." PLAN=1)
	$(SWEEP) $(EXPERIMENTS)/$(subst -,_,$*).toml

ablations: $(ABLATIONS)  ## every spec in experiments/, one after another

mlflow-ui: $(STAMP)  ## serve the MLflow UI for the store (MLFLOW_TRACKING_URI, PORT=5000)
	$(VENV)/bin/mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --host 127.0.0.1 --port $${PORT:-5000}

# the tracking server every worker of a cluster logs to (MLFLOW_TRACKING_URI=http://HOST:PORT); artifacts are
# uploaded through it (--serve-artifacts), so workers need no shared file system for them
SERVER_STORE ?= sqlite:///mlflow-server.db
SERVER_ARTIFACTS ?= mlartifacts
mlflow-server: $(STAMP)  ## a tracking server for clusters (SERVER_STORE, SERVER_ARTIFACTS, HOST=127.0.0.1, PORT=5000)
	$(VENV)/bin/mlflow server --backend-store-uri "$(SERVER_STORE)" --serve-artifacts \
	    --artifacts-destination "$(SERVER_ARTIFACTS)" --host $${HOST:-127.0.0.1} --port $${PORT:-5000} --workers 2

evaluations: $(STAMP)  ## on the machine that trained the runs: what the specs' [evaluations] ask (all of valid, test, K sweeps, fp32)
	$(PY) -m gptvae evaluate --specs $(EXPERIMENTS) --preset $(PRESET) $(if $(DATASET),--dataset $(DATASET)) $(foreach item,$(SET),--set $(item))

results: $(STAMP)  ## export finished sweeps of PRESET from MLflow into paper/results/<preset>
	$(PY) -m gptvae results --out $(RESULTS) --preset $(PRESET) --specs $(EXPERIMENTS)

figures: $(STAMP)  ## run the notebooks headlessly on the exported results: tables, figures (PNG, PDF)
	@test -f $(RESULTS)/runs.csv || { echo "error: $(RESULTS)/runs.csv is missing: run \`make results PRESET=$(PRESET)\` first" >&2; exit 2; }
	@mkdir -p $(NOTEBOOKS)
	$(VENV)/bin/jupytext --quiet --to ipynb -o $(NOTEBOOKS)/ablation.source.ipynb analysis/ablation.py
	$(VENV)/bin/jupytext --quiet --to ipynb -o $(NOTEBOOKS)/overview.source.ipynb analysis/overview.py
	@export PRESET=$(PRESET) GPTVAE_RESULTS=$(abspath $(RESULTS)) GPTVAE_FIGURES=$(abspath $(FIGURES)) \
	    GPTVAE_TABLES=$(abspath $(TABLES)) GPTVAE_EXPERIMENTS=$(abspath $(EXPERIMENTS)); \
	for name in $(patsubst ablation-%,%,$(ABLATIONS)); do \
	  echo "executing analysis/ablation.py for $$name"; \
	  $(VENV)/bin/papermill --log-level WARNING $(NOTEBOOKS)/ablation.source.ipynb \
	    $(NOTEBOOKS)/ablation-$$name.ipynb -p ablation $$name || exit 1; \
	done; \
	echo "executing analysis/overview.py"; \
	$(VENV)/bin/papermill --log-level WARNING $(NOTEBOOKS)/overview.source.ipynb $(NOTEBOOKS)/overview.ipynb
	@echo "figures in $(FIGURES)/, tables in $(TABLES)/, executed notebooks in $(NOTEBOOKS)/"

paper: figures  ## build paper/build/<preset>/paper.{md,html,pdf} from paper/paper.md and the generated tables
	$(PY) -m gptvae paper --preset $(PRESET)

clean:  ## remove caches (keeps .venv, the MLflow store and runs/)
	rm -rf .pytest_cache **/__pycache__ *.egg-info
