# One-command setup: `make test` builds the venv, fetches and verifies the data, runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEBIAN_DATA := /usr/share/datasets/fashion-mnist

.PHONY: setup data test test-embed embed-deps bench-deps soak mutate lint export train bench bench-cuda cuda-bundle test-gpu-packages clean docs docs-deps docs-serve

setup: $(VENV)/.installed

# setuptools warns on every editable install that a folder named like the package may shadow it: ours is the
# package itself (package-dir maps it), so that one warning is left out of the setup's output.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 needed, found " + sys.version)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation:UserWarning' $(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The IDX files come from Debian's dataset-fashion-mnist package where apt exists;
# training.data verifies every file's sha256 and decompresses them into the per-user cache
# ($XDG_CACHE_HOME/fmnist-deploy, default ~/.cache/fmnist-deploy) in torchvision's layout.
CACHE_RAW = $${XDG_CACHE_HOME:-$$HOME/.cache}/fmnist-deploy/FashionMNIST/raw

data: setup
	@if [ ! -d data/FashionMNIST/raw ] && [ ! -d "$(CACHE_RAW)" ] && [ ! -d $(DEBIAN_DATA) ] && command -v apt-get >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; fi; \
	fi
	$(BIN)/python -m fmnist_deploy.training.data

test: setup data embed-deps bench-deps
	$(BIN)/python -m pytest -q --durations=15

# Only the embedding tests: Node.js (the golden vectors, the image command) and the page in Chromium.
test-embed: setup data embed-deps
	$(BIN)/python -m pytest -q tests/test_embedding.py

# The long reliability runs: 100 SIGKILLs, 200 000 fuzzed inputs, 3 000 examples per property.
soak: setup data
	$(BIN)/python -m pytest -q tests/reliability --soak

# Mutation testing, opt-in (never part of `make test`): mutmut 3 over the critical modules' functions, each mutant
# against the tests that guard them; resumable (results stay in .mutation/), report in artifacts/mutation/report.md.
# About half an hour on 2 cores; `python tests/mutation/mutate.py --fresh` starts over.
mutate: setup data
	$(BIN)/pip install --quiet -e '.[mutation]'
	nice -n 10 $(BIN)/python tests/mutation/mutate.py

# ruff: pyflakes, pycodestyle, import order, bugbear, pyupgrade, docstrings (see pyproject.toml).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The embedding examples' packages (npm ci from their lock files; install scripts stay off: the
# binaries ship inside the npm packages) and Debian's Chromium for the browser test, installed as
# the data set is. Where Node.js is absent the embedding tests skip and say why.
embed-deps:
	@if command -v npm >/dev/null && command -v node >/dev/null; then \
		(cd examples/node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) && \
		(cd examples/web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error); \
	else echo "node/npm not found: the Node.js and browser embedding tests will be skipped"; fi
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi; \
	fi

# wrk drives the serving benchmark's load (a C load generator, so the clients leave the cores to the servers).
bench-deps:
	@if ! command -v wrk >/dev/null && command -v apt-get >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq wrk; fi; \
	fi

export: setup
	$(BIN)/fmnist-export --format all --quantize int8 --weights artifacts/fmnist_mlp.pt --output artifacts

train: setup data
	$(BIN)/fmnist-train --device cpu --output artifacts --overwrite

bench: setup data bench-deps
	$(BIN)/fmnist-bench train --output artifacts/bench
	$(BIN)/fmnist-bench latency --artifacts artifacts --output artifacts/bench
	$(BIN)/fmnist-bench parity --artifacts artifacts --output artifacts/bench
	$(BIN)/fmnist-bench formats --artifacts artifacts --output artifacts/bench
	$(BIN)/fmnist-bench coldstart --artifacts artifacts --output artifacts/bench
	$(BIN)/fmnist-bench files --rounds 15 --output artifacts/bench
	$(BIN)/fmnist-bench int8 --rounds 7 --output artifacts/bench
	$(BIN)/fmnist-bench batch --output artifacts/bench
	$(BIN)/fmnist-bench serve --output artifacts/bench

# On a machine with an NVIDIA GPU: the CUDA tests (a skip fails the run), the CPU + CUDA latency grid,
# parity on both devices and training speed, every report into artifacts/bench/cuda. `benchmarks/cuda.sh
# --dry-run` says what it would run and whether this machine can.
bench-cuda:
	benchmarks/cuda.sh --output artifacts/bench/cuda

# The offline bundle for a GPU machine without network (≤ 64 MiB): this tree, the data set's gz files and the
# wheels that machine's Python lacks (benchmarks/gpu-machine-packages.txt). There: `cd project &&
# benchmarks/cuda.sh --python python3 --offline --output ../reports`. CUDA_BUNDLE=DIR to write it elsewhere;
# CUDA_BUNDLE_ARGS=--without-project for data and wheels alone, when this tree travels by other means
# (then there: `benchmarks/cuda.sh --python python3 --offline --from DIR`; .gpu-bundle/ is git-ignored for that).
CUDA_BUNDLE ?= build/cuda-bundle
CUDA_BUNDLE_ARGS ?=
cuda-bundle:
	benchmarks/cuda.sh --bundle $(CUDA_BUNDLE) $(CUDA_BUNDLE_ARGS)

# `pytest -m cuda` with only the GPU machine's packages (no imagecodecs, starlette, ray, openvino...):
# it must collect and end in skips that say why, never in an error.
test-gpu-packages: setup
	benchmarks/gpu_packages.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache site build/api-source

# The documentation site (docs/, mkdocs.yml): `make docs` builds it into site/ and fails on any
# warning (a broken link, a missing page, a reference that does not resolve); `make docs-serve`
# previews it at http://127.0.0.1:8000, rebuilding on every change.
DOCS_ENV := NO_MKDOCS_2_WARNING=1

docs-deps: $(VENV)/.docs-installed

$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

docs: docs-deps
	$(DOCS_ENV) $(BIN)/mkdocs build --strict

docs-serve: docs-deps
	$(DOCS_ENV) $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000
