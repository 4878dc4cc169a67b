# Benchmarks: the gateway's routing, dedup, cache and batching on dry-run workers.
#
#   make bench                      all strategies on 2 and 4 workers (about two minutes)
#   make bench BENCH_ARGS='--workers 2 --strategies round-robin,prefix-aware'
BENCH_ARGS ?=

.PHONY: bench

bench: venv ## benchmark routing strategies, dedup, cache, batching on dry-run workers (JSON in bench-results/)
	$(BIN)/vgate bench $(BENCH_ARGS)
