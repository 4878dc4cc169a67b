"""Prometheus metrics under vLLM's names, on a registry owned by one app."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# vLLM's bucket edges for vllm:time_to_first_token_seconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# vLLM's bucket edges for vllm:e2e_request_latency_seconds.
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)


@dataclass(frozen=True)
class SimMetrics:
    """The metrics of one simulated engine, already bound to its ``model_name`` label."""

    registry: CollectorRegistry
    num_requests_running: Gauge
    num_requests_waiting: Gauge
    kv_cache_usage: Gauge
    prefix_cache_queries: Counter
    prefix_cache_hits: Counter
    prompt_tokens: Counter
    generation_tokens: Counter
    time_to_first_token: Histogram
    e2e_latency: Histogram
    #: Time from arrival to first admission into the running batch.
    queue_time: Histogram
    #: Running sequences sent back to waiting for lack of KV blocks.
    preemptions: Counter
    # Labelled at use with ("model_name", "finished_reason").
    request_success: Counter
    # Labelled at use with (max_lora, running_lora_adapters, waiting_lora_adapters), set to the time.
    lora_requests_info: Gauge

    @classmethod
    def create(cls, model_name: str) -> SimMetrics:
        """A fresh registry, so several simulators can live in one process."""
        reg = CollectorRegistry(auto_describe=True)
        lbl = ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, lbl, registry=reg).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            # prometheus_client appends the ``_total`` suffix, as vLLM's exposition shows.
            return Counter(name, doc, lbl, registry=reg).labels(model_name)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, lbl, buckets=buckets, registry=reg).labels(model_name)

        return cls(
            registry=reg,
            num_requests_running=gauge(
                "vllm:num_requests_running", "Number of requests in model execution batches."
            ),
            num_requests_waiting=gauge(
                "vllm:num_requests_waiting", "Number of requests waiting to be processed."
            ),
            kv_cache_usage=gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
            prefix_cache_queries=counter(
                "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
            ),
            prefix_cache_hits=counter(
                "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
            ),
            prompt_tokens=counter("vllm:prompt_tokens", "Number of prefill tokens processed."),
            generation_tokens=counter("vllm:generation_tokens", "Number of generation tokens processed."),
            time_to_first_token=histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                TTFT_BUCKETS,
            ),
            request_success=Counter(
                "vllm:request_success",
                "Count of successfully processed requests.",
                ["model_name", "finished_reason"],
                registry=reg,
            ),
            lora_requests_info=Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
                registry=reg,
            ),
            e2e_latency=histogram(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                E2E_BUCKETS,
            ),
            queue_time=histogram(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                E2E_BUCKETS,
            ),
            preemptions=counter("vllm:num_preemptions", "Cumulative number of preemption from the engine."),
        )
