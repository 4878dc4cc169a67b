# Benchmarks: the gateway's routing, dedup, cache and batching on dry-run workers.
#
#   make bench                      all strategies on 2 and 4 workers (about two minutes)
#   make bench BENCH_ARGS='--workers 2 --strategies round-robin,prefix-aware'
BENCH_ARGS ?=

.PHONY: bench

bench: venv ## benchmark on dry-run workers, then on real vLLM when .venv-vllm exists (JSON in bench-results/)
	$(BIN)/vgate bench $(BENCH_ARGS)
	@if [ -f $(VLLM_VENV)/.stamp ]; then $(VLLM_BIN)/vgate bench --vllm $(BENCH_VLLM_ARGS); \
	else echo "real-vLLM section skipped: no $(VLLM_VENV) (make bench-vllm builds it and runs it)"; fi

# The real-vLLM section: two vLLM CPU workers (tiny float16 Qwen2) behind the gateway. `make bench` runs it too
# when .venv-vllm exists; `make bench-vllm` builds .venv-vllm first if needed.
BENCH_VLLM_ARGS ?=

.PHONY: bench-vllm

bench-vllm: venv-vllm ## benchmark dedup, cache fidelity, batching and routing quality on real vLLM (CPU)
	$(VLLM_BIN)/vgate bench --vllm $(BENCH_VLLM_ARGS)
