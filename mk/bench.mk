# Benchmarks: the gateway's routing, dedup, cache and batching on dry-run workers.
#
#   make bench                      all strategies on 2 and 4 workers (about two minutes)
#   make bench BENCH_ARGS='--workers 2 --strategies round-robin,prefix-aware'
BENCH_ARGS ?=

.PHONY: bench

bench: venv redis-server ## benchmark on dry-run workers, then on real vLLM when .venv-vllm exists (JSON in bench-results/)
	$(BIN)/python -m bench.efficiency $(BENCH_ARGS)
	@if [ -f $(VLLM_VENV)/.stamp ]; then $(MAKE) --no-print-directory bench-vllm; \
	else echo "real-vLLM section skipped: no $(VLLM_VENV) (make bench-vllm builds it and runs it)"; fi

# The real-vLLM section: two vLLM CPU workers (tiny float16 Qwen2) behind the gateway. `make bench` runs it too
# when .venv-vllm exists; `make bench-vllm` builds .venv-vllm first if needed.
BENCH_VLLM_ARGS ?=

.PHONY: bench-vllm

bench-vllm: venv-vllm tiny-model ## benchmark dedup, cache fidelity, batching and routing quality on real vLLM (CPU)
	$(VLLM_BIN)/python -m bench.real_vllm --model $(TINY_MODEL) $(BENCH_VLLM_ARGS)

# The data plane against the proxies users compare it with (Debian's nginx and wrk; vllm-router,
# LiteLLM and py-spy pinned in a virtualenv of their own). Each system under test gets one core.
#
#   make bench-proxy                                  the full comparison (about six minutes)
#   make bench-proxy BENCH_PROXY_ARGS='--systems vgate,nginx --cases json-c16 --profile'
BENCH_PROXY_ARGS ?=
BENCH_VENV ?= .venv-bench
VLLM_ROUTER_VERSION ?= 0.1.17
LITELLM_VERSION ?= 1.106.2
PY_SPY_VERSION ?= 0.4.3

.PHONY: bench-proxy bench-tools

$(BENCH_VENV)/.stamp: mk/bench.mk
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -U pip
	$(BENCH_VENV)/bin/python -m pip install -q 'vllm-router==$(VLLM_ROUTER_VERSION)' \
		'litellm[proxy]==$(LITELLM_VERSION)' 'py-spy==$(PY_SPY_VERSION)' \
		'aiohttp==3.14.5' 'httpx==0.28.1' 'aiosonic==1.3.3' 'pyreqwest==0.15.1' 'uvloop==0.23.0'
	@touch $@

bench-tools: $(BENCH_VENV)/.stamp ## install what bench-proxy needs: nginx and wrk (apt), the peers' virtualenv
	@command -v nginx >/dev/null && command -v wrk >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light wrk; }

bench-proxy: venv bench-tools $(VENV)/.stamp-plot ## data plane vs nginx, vllm-router, LiteLLM: rps/core, p50/p99, SSE events/s (bench/results/)
	$(BIN)/python -m bench.proxy --peers $(BENCH_VENV) $(BENCH_PROXY_ARGS)

# The noisy neighbour: one tenant floods at 10x the fleet's measured capacity while two others send a little;
# fair dispatch against FIFO, on dry-run workers, then on real vLLM (CPU, the tiny model) when .venv-vllm exists.
# Results in bench/results/fairness-<time>.{json,md,png}; about five minutes (plus vLLM's start-up).
#
#   make bench-fairness BENCH_FAIRNESS_ARGS='--phase-s 20'
#   make bench-fairness VLLM_VENV=/path/to/.venv-vllm    a vLLM build elsewhere (its python runs the workers only)
BENCH_FAIRNESS_ARGS ?=
# Plots are PNG files made with matplotlib, installed into .venv on first use (not a dependency of the product).
MATPLOTLIB_SPEC ?= matplotlib==3.10.*

.PHONY: bench-fairness

$(VENV)/.stamp-plot: $(VENV)/.stamp
	$(BIN)/python -m pip install -q '$(MATPLOTLIB_SPEC)'
	@touch $@

bench-fairness: venv $(VENV)/.stamp-plot ## noisy neighbour: fair dispatch vs FIFO under a 10x flood, TTFT per tenant (bench/results/)
	@if [ -f $(VLLM_VENV)/.stamp ]; then \
		$(MAKE) --no-print-directory tiny-model && \
		$(BIN)/python -m bench.fairness --vllm-python $(abspath $(VLLM_BIN))/python \
			--vllm-model $(abspath $(TINY_MODEL)) $(BENCH_FAIRNESS_ARGS); \
	else echo "real-vLLM fleet skipped: no $(VLLM_VENV) (make venv-vllm builds it)"; \
		$(BIN)/python -m bench.fairness $(BENCH_FAIRNESS_ARGS); fi

# LoRA adapter placement (docs/lora.md): 8 adapters with Zipf popularity on 2 dry-run workers of 4 slots,
# V-Gate's adapter affinity against round-robin placement in the same run (about two minutes).
#   make bench-lora BENCH_LORA_ARGS='--requests 2000 --concurrency 32'
.PHONY: bench-lora
bench-lora: venv ## LoRA placement vs round-robin: adapter loads/1k requests, TTFT p99, split per worker (bench/results/lora-*)
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || { echo "installing matplotlib (PyPI) for the plot"; $(BIN)/python -m pip install -q matplotlib; }
	$(BIN)/python -m bench.lora $(BENCH_LORA_ARGS)

# The elastic fleet against static and oracle fleets on one trace (idle, ramp, hold, burst, ramp
# down, idle), compressed 10x: the GPU bill (replica-seconds), TTFT, queue wait and failures of
# each (bench/results/fleet-*.{json,md,png}, docs/autoscaling.md "Measured"). About 12 minutes.
# `elastic` runs the policy's defaults; `elastic-tuned` windows and delays sized to the trace's 20 s cold
# start: a 30 s stable window, scale down and to zero after one cold start (20 s).
#
#   make bench-fleet BENCH_FLEET_ARGS='--systems elastic,oracle --compress 20'
BENCH_FLEET_ARGS ?= --compress 10 --decode-step-s 0.4 --systems elastic,elastic-tuned,oracle,static-peak,static-mean \
	--stable-window 30 --scale-down-delay 20 --scale-to-zero-delay 20

.PHONY: bench-fleet bench-fleet-model

# The same trace and policy as a queueing model over 30 arrival seeds, in seconds: how often a
# run lands over half of static-at-peak, which one 12-minute run cannot say (docs/autoscaling.md).
bench-fleet-model: venv ## the fleet benchmark's queueing model over 30 arrival seeds: the bill's spread
	$(BIN)/python -m bench.fleet_model

bench-fleet: venv ## elastic vs static and oracle fleets on one trace: replica-seconds, TTFT, queue wait (bench/results/)
	$(BIN)/python -m bench.fleet $(BENCH_FLEET_ARGS)
