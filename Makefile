# The commands of the README. Each sets up what it needs first (idempotent).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup sandbox-deps demo study test test-fast

setup: $(STAMP)

# Reinstalls only when pyproject.toml changes. torch (test extra) is the CPU build.
$(STAMP): pyproject.toml
	bash tools/setup_env.sh $(PYTHON) $(VENV)
	touch $(STAMP)

# docker.io, bubblewrap, debootstrap; a running dockerd; the sandbox base image (cached).
sandbox-deps: setup
	bash tools/ensure_sandbox_deps.sh $(VENV)/bin/python

# SFT and DAgger at the same teacher-label budget on synthetic tasks (bubblewrap sandboxes),
# the two runs side by side (JOBS=1: one after the other), evaluated on 24 held-out tasks
# (the seed study: SEEDS=0,1,2 EVAL_TASKS=48).
SEEDS ?= 0
JOBS ?= 2
EVAL_TASKS ?= 24
demo: setup sandbox-deps
	$(VENV)/bin/python -m dagger_jax.demo --config=configs/local_study.py --workdir=$(WORKDIR) \
	  --seeds=$(SEEDS) --recipes=sft,dagger --jobs=$(JOBS) --config.eval.num_tasks=$(EVAL_TASKS)

# The seed study where DAgger's gain exceeds the spread across seeds: the decoy family, SFT and
# DAgger at each seed, 96 held-out tasks, two runs at a time (about 3 hours on 2 cores for four
# seeds; the same WORKDIR resumes). Its summary.json says whether DAgger - SFT exceeds the spread
# (docs/studies/06-decoy-family.md has the study).
STUDY_SEEDS ?= 0,1,2,3
study: setup sandbox-deps
	$(VENV)/bin/python -m dagger_jax.demo --config=configs/studies/decoys.py --workdir=$(WORKDIR) \
	  --seeds=$(STUDY_SEEDS) --recipes=sft,dagger --jobs=$(JOBS)

# Two pytest workers, one test file each at a time: while one waits on a sandbox, a server or a
# child process, the other computes (files with many tests go out first: xdist's order, which
# measured faster here than sending the longest files first, 769 s against 824 s).
PYTEST_WORKERS ?= 2
XDIST = -n $(PYTEST_WORKERS) --dist loadfile
test: setup sandbox-deps
	$(VENV)/bin/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

# The edit-test loop: everything but the tests marked slow (real sandboxes, servers, whole runs).
test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)
