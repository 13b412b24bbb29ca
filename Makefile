# lightseg: every target installs into .venv first (once per version of pyproject.toml).
SHELL := bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

EXP  ?= demo
ARGS ?=
CKPT ?=
INPUT ?=
OUTPUT ?=
FORMAT ?= onnx
DATASET ?=
RUN  ?=
RUNS ?=
METRICS ?= test/dice,test/iou
CONFIRM ?=
PRED ?=
NAME ?=
BUNDLE ?=
DATA ?=
PORT ?= 7860
TEST_WORKERS ?= 2
TRIALS ?=
STUDY ?=

# Hydra takes -m before the overrides: `make train ARGS="-m seed=0,1"` runs a sweep.
HYDRA_ARGS = $(filter -m --multirun,$(ARGS)) experiment=$(EXP) $(filter-out -m --multirun,$(ARGS))

# `make table ARGS="--by stratum"`: Hydra takes no --options, so --by X (or --by=X) becomes by=X.
TABLE_ARGS = $(subst --by=,by=,$(subst --by ,by=,$(ARGS)))

# Recipe line of `train` and `lr-find`: stop with the known experiments when EXP names none.
define check_experiment
@test -f configs/experiment/$(EXP).yaml || { \
  echo "Unknown experiment '$(EXP)'. Choose one of: $$(ls configs/experiment | sed 's/\.yaml//' | tr '\n' ' ')"; exit 2; }
endef

.PHONY: help install train plan tune tune-report lr-find eval calibrate score predict export bundle verify publish demo data plot table test test-all lint format bench clean clean-runs

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  \033[36mmake %-10s\033[0m %s\n", $$1, $$2}'
	@echo "  Variables: EXP=<configs/experiment name> (default demo)  ARGS=\"hydra overrides\"  CKPT=path"
	@echo "             RUN=<run folder> (plot, score, bundle, publish)  RUNS=<folder of runs> METRICS=a,b (table, plot RUNS=)"
	@echo "             BUNDLE=<archive> DATA=<data folder> (verify)"
	@echo "             OUTPUT=folder (predict, export, publish)  PORT=7860 (demo)"
	@echo "             TRIALS=n STUDY=name (tune, tune-report; the study's default name is the experiment's)"

$(STAMP): pyproject.toml
	@echo "Installing lightseg into $(VENV) (first run only; torch is large)..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP) ## Create .venv and install lightseg with dev tools

train: $(STAMP) ## Train: make train [EXP=ph2_unet] [ARGS="model.arch=FPN trainer.max_epochs=5"]
	$(check_experiment)
	$(PY) -m lightseg.train $(HYDRA_ARGS)

plan: $(STAMP) ## Plan a recipe from the data: writes plan.yaml, prints its reasons: make plan [EXP=demo] [ARGS="data=folder recipe.budget.steps=2000"]; then make train ARGS="recipe=auto recipe.plan=plan.yaml"
	$(check_experiment)
	$(PY) -m lightseg.recipe $(HYDRA_ARGS)

# `make tune`: the options of the search, then ARGS (overrides of every trial) as given.
TUNE_ARGS = experiment=$(EXP) $(if $(TRIALS),search.n_trials=$(TRIALS)) $(if $(STUDY),search.study=$(STUDY)) $(ARGS)

tune: $(STAMP) ## Optuna search, prunes, resumes, shares its study with other workers: make tune [EXP=demo] [TRIALS=20] [STUDY=name] [ARGS="search=default trainer.max_epochs=8"]
	$(check_experiment)
	$(PY) -m lightseg.tools.tune $(TUNE_ARGS)

tune-report: $(STAMP) ## Best trial, table of trials, Optuna plots, the make train command of the best: make tune-report [EXP=demo] [STUDY=name]
	$(PY) -m lightseg.tools.tune report $(TUNE_ARGS)

lr-find: $(STAMP) ## Learning-rate range test, plot + suggestion: make lr-find [EXP=ph2_unet] [ARGS="lr_find.num_training=200"]
	$(check_experiment)
	$(PY) -m lightseg.lr_find $(HYDRA_ARGS)

eval: $(STAMP) ## Evaluate a checkpoint, or an ensemble (CKPT=a,b or a folder of runs): make eval CKPT=path [EXP=name] [ARGS="split=val inference.flip=true"]
	@test -n "$(CKPT)" || { echo "Set CKPT=path/to/best.ckpt (runs write logs/<name>/runs/<time>/checkpoints/best.ckpt)"; exit 2; }
	$(PY) -m lightseg.tools.eval "ckpt_path='$(CKPT)'" $(if $(filter command line environment,$(origin EXP)),experiment=$(EXP)) $(ARGS)

calibrate: $(STAMP) ## Fit a temperature on the run's val split so probabilities are calibrated (eval, predict, export apply it): make calibrate CKPT=path
	@test -n "$(CKPT)" || { echo "Set CKPT=path/to/best.ckpt (runs write logs/<name>/runs/<time>/checkpoints/best.ckpt)"; exit 2; }
	$(PY) -m lightseg.tools.calibrate "ckpt_path='$(CKPT)'" $(if $(filter command line environment,$(origin EXP)),experiment=$(EXP)) $(ARGS)

score: $(STAMP) ## Score masks made elsewhere (nnU-Net, released masks) on a run's split: make score PRED=folder NAME=label RUN=<run folder>
	@test -n "$(PRED)" -a -n "$(NAME)" -a -n "$(RUN)" || { echo "Set PRED=<folder of masks, <id>.png> NAME=<label, e.g. nnunet> RUN=<the run folder whose split they were made for>"; exit 2; }
	$(PY) -m lightseg.tools.score "pred=$(PRED)" "name=$(NAME)" "run=$(RUN)" $(ARGS)

predict: $(STAMP) ## Segment images: make predict CKPT=path INPUT=folder_or_image OUTPUT=folder [ARGS="effect=color-splash"]
	@test -n "$(CKPT)" -a -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "Set CKPT=path/to/best.ckpt INPUT=<image or folder> OUTPUT=<folder>"; exit 2; }
	$(PY) -m lightseg.tools.predict "ckpt_path='$(CKPT)'" "input=$(INPUT)" "output=$(OUTPUT)" $(ARGS)

export: $(STAMP) ## Export a checkpoint and check it against PyTorch: make export CKPT=path [FORMAT=onnx|torchscript]
	@test -n "$(CKPT)" || { echo "Set CKPT=path/to/best.ckpt"; exit 2; }
	$(PY) -m lightseg.tools.export "ckpt_path=$(CKPT)" format=$(FORMAT) $(ARGS)

bundle: $(STAMP) ## One archive of a finished run that re-checks itself: make bundle RUN=<run folder> [OUTPUT=run.tar.gz]
	@test -n "$(RUN)" || { echo "Set RUN=<run folder>, e.g. RUN=$$(ls -d logs/*/runs/* 2>/dev/null | tail -n 1)"; exit 2; }
	$(PY) -m lightseg.tools.bundle "run=$(RUN)" $(if $(OUTPUT),"output=$(OUTPUT)") $(ARGS)

verify: $(STAMP) ## Rebuild a bundle's model, re-score its test split on CPU vs its metrics: make verify BUNDLE=run.tar.gz [DATA=<data folder>]
	@test -n "$(BUNDLE)" || { echo "Set BUNDLE=<archive that make bundle wrote>, e.g. BUNDLE=logs/demo/runs/<time>/bundle.tar.gz"; exit 2; }
	$(PY) -m lightseg.tools.verify "bundle=$(BUNDLE)" $(if $(DATA),"data_dir=$(DATA)") $(ARGS)

publish: $(STAMP) ## Model folder for smp / the Hub (weights, config, card, demo): make publish RUN=<run folder> [OUTPUT=folder] [ARGS="push_to_hub=true repo_id=me/name"]
	@test -n "$(RUN)" || { echo "Set RUN=<run folder>, e.g. RUN=$$(ls -d logs/*/runs/* 2>/dev/null | tail -n 1)"; exit 2; }
	$(PY) -m lightseg.tools.publish "run=$(RUN)" $(if $(OUTPUT),"output=$(OUTPUT)") $(ARGS)

demo: $(STAMP) ## Web demo (Gradio, the demo extra): upload an image, see mask, probability, effects: make demo CKPT=path | RUN=<run folder> [PORT=7860]
	@test -n "$(CKPT)$(RUN)" || { echo "Set CKPT=path/to/best.ckpt or RUN=<run folder> (or a folder make publish wrote)"; exit 2; }
	$(PY) -m lightseg.tools.demo "$(or $(CKPT),$(RUN))" --port $(PORT) $(ARGS)

data: $(STAMP) ## Download (VOC, COCO) or check (PH2, MADS, your own folder) a dataset: make data DATASET=voc [ARGS=...]
	@test -n "$(DATASET)" || { echo "Set DATASET=voc, coco, mads, ph2 or folder (see README, Datasets and Train on your own data)"; exit 2; }
	$(PY) -m lightseg.data.download data=$(DATASET) $(ARGS)

plot: $(STAMP) ## Training curves as PNG: make plot RUN=<run folder>, or RUNS=<folder of runs> [METRICS=val/loss,val/dice]
	@test -n "$(RUN)$(RUNS)" || { echo "Set RUN=<run folder>, e.g. RUN=$$(ls -d logs/*/runs/* 2>/dev/null | tail -n 1), or RUNS=<folder of runs> to compare configurations"; exit 2; }
	$(PY) -m lightseg.tools.plot $(if $(RUNS),"runs=$(RUNS)" $(if $(filter command line environment,$(origin METRICS)),"curves=[$(METRICS)]"),"run=$(RUN)") $(ARGS)

table: $(STAMP) ## Results as Markdown + LaTeX: make table RUNS=logs/demo/multiruns/<time> [METRICS=test/dice,test/iou] [ARGS="eval=true --by stratum"]
	@test -n "$(RUNS)" || { echo "Set RUNS=<folder of runs>, e.g. RUNS=logs/demo/multiruns/<time> or RUNS=logs/demo"; exit 2; }
	$(PY) -m lightseg.tools.table "runs=$(RUNS)" "columns=[$(METRICS)]" $(TABLE_ARGS)

test: $(STAMP) ## Run the fast test suite (what CI runs) in TEST_WORKERS processes (default 2)
	$(PY) -m pytest -m "not slow and not gpu" -q --durations=20 -n $(TEST_WORKERS) --dist loadfile

test-all: $(STAMP) ## Run every test, slow and GPU ones included
	$(PY) -m pytest -q

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check src tests notebooks
	$(VENV)/bin/ruff format --check src tests notebooks

format: $(STAMP) ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix src tests notebooks
	$(VENV)/bin/ruff format src tests notebooks

bench: $(STAMP) ## Throughput: lightseg vs a plain PyTorch loop, and data loaders (bench.md)
	$(PY) -m benchmarks.bench --output logs/bench/latest $(ARGS)

clean: ## Remove caches (.pytest_cache, .ruff_cache, __pycache__); runs and data stay
	rm -rf .pytest_cache .ruff_cache
	find src tests benchmarks -name __pycache__ -type d -prune -exec rm -rf {} +

clean-runs: ## Delete every run in logs/ (checkpoints, metrics, W&B files): make clean-runs CONFIRM=yes
	@test "$(CONFIRM)" = yes || { echo "This deletes logs/ ($$(du -sh logs 2>/dev/null | cut -f1) of runs, checkpoints and results). Run: make clean-runs CONFIRM=yes"; exit 2; }
	rm -rf logs outputs multirun
