# vgate tune on real vLLM (CPU, tiny float16 Qwen2): calibration, the full grid, Bayesian
# optimisation with 40 % of its trials, the same grid on the calibrated simulator, and a summary
# (bench/results/tune/summary.md). About 25 minutes on two cores; run it under the heavy lock:
#
#   flock /tmp/vgate-heavy.lock make bench-tune
#   make bench-tune BENCH_TUNE_STEPS=sim        only re-run the simulator's grid, then the summary
BENCH_TUNE_STEPS ?= calibrate,grid,bayes,sim,loadgens
BENCH_TUNE_OUT ?= bench/results/tune

.PHONY: bench-tune

bench-tune: venv-vllm tiny-model venv-vllm-bench ## vgate tune on real vLLM (CPU): grid vs Bayesian, winner vs defaults, simulator vs vLLM ranking
	$(VLLM_BIN)/python -m vgate.tune.bench --model $(TINY_MODEL) --out $(BENCH_TUNE_OUT) --steps $(BENCH_TUNE_STEPS)
