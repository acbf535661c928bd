"""vLLM's /metrics (vllm/v1/metrics/loggers.py PrometheusStatLogger): same names, types, labels and buckets."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fleetgate.sim.engine import Engine, EngineStats, Sequence, Step

LABELS = ["model_name", "engine"]  # vLLM's order; `engine` is the data-parallel engine index ("0")
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")  # vllm/v1/engine FINISH_REASON_STRINGS
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")  # PromptTokenStats.ALL_SOURCES
# bucket edges copied from PrometheusStatLogger so histogram_quantile answers match a real replica's
TTFT_BUCKETS: tuple[float, ...] = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75),
    *(1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
)
ITL_BUCKETS: tuple[float, ...] = (
    *(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
    *(0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
)
REQUEST_BUCKETS: tuple[float, ...] = (
    *(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0),
    *(30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0),
)
ITERATION_BUCKETS: tuple[float, ...] = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def build_1_2_5_buckets(max_value: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 buckets up to `max_value` (token-count histograms)."""
    out: list[float] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            value = m * 10**exponent
            if value > max_value:
                return tuple(out)
            out.append(float(value))
        exponent += 1


class VllmMetrics:
    """An Engine observer that keeps vLLM's metric families in its own registry."""

    def __init__(self, model_name: str, engine: Engine, *, cache_info: dict[str, str]) -> None:
        self.registry = r = CollectorRegistry()
        self.engine = engine
        values = (model_name, "0")

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=r).labels(*values)

        def counter(name: str, doc: str) -> Counter:
            # prometheus_client appends `_total`, exactly as vLLM's counters get it
            return Counter(name, doc, LABELS, registry=r).labels(*values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=r).labels(*values)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        # counters mirror EngineStats, so the engine stays the one place that counts
        self._mirrors: list[tuple[Counter, Callable[[EngineStats], int]]] = [
            (
                counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."),
                lambda s: s.prefix_queries,
            ),
            (
                counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."),
                lambda s: s.prefix_hits,
            ),
            (
                counter("vllm:num_preemptions", "Cumulative number of preemption from the engine."),
                lambda s: s.preemptions,
            ),
            (counter("vllm:prompt_tokens", "Number of prefill tokens processed."), lambda s: s.prompt_tokens),
            (
                counter("vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."),
                lambda s: s.prompt_tokens_cached,
            ),
            (
                counter("vllm:generation_tokens", "Number of generation tokens processed."),
                lambda s: s.generation_tokens,
            ),
        ]
        by_source = Counter(
            "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", [*LABELS, "source"], registry=r
        )
        source = {s: by_source.labels(*values, s) for s in PROMPT_SOURCES}
        self._mirrors.append((source["local_compute"], lambda s: s.prompt_tokens - s.prompt_tokens_cached))
        self._mirrors.append((source["local_cache_hit"], lambda s: s.prompt_tokens_cached))
        self._seen = [0] * len(self._mirrors)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*LABELS, "finished_reason"],
            registry=r,
        )
        self.success = {reason: success.labels(*values, reason) for reason in FINISH_REASONS}
        tokens = build_1_2_5_buckets(engine.max_model_len)
        self.req_prompt = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens)
        self.req_gen = histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", tokens)
        self.max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", tokens
        )
        self.iteration = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_BUCKETS
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        phase = "Histogram of time spent in {} phase for request."
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", REQUEST_BUCKETS
        )
        self.queue = histogram("vllm:request_queue_time_seconds", phase.format("WAITING"), REQUEST_BUCKETS)
        self.inference = histogram("vllm:request_inference_time_seconds", phase.format("RUNNING"), REQUEST_BUCKETS)
        self.prefill = histogram("vllm:request_prefill_time_seconds", phase.format("PREFILL"), REQUEST_BUCKETS)
        self.decode = histogram("vllm:request_decode_time_seconds", phase.format("DECODE"), REQUEST_BUCKETS)
        # vLLM emulates Info with a gauge set to 1: labels are the CacheConfig fields plus `engine`
        info = Gauge(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", [*cache_info, "engine"], registry=r
        )
        info.labels(*cache_info.values(), "0").set(1)
        self.lora_info: Gauge | None = None
        if engine.lora.enabled:  # only with --enable-lora; this family has no model_name/engine labels
            self.lora_info = Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                registry=r,
            )
        self.refresh()

    def refresh(self) -> None:
        """Scheduler gauges from the engine (vLLM records them every step) and counters caught up."""
        e = self.engine
        self.running.set(len(e.running))
        self.waiting.set(len(e.waiting))
        self.kv_usage.set(e.pool.usage())
        for i, (metric, read) in enumerate(self._mirrors):
            now = read(e.stats)
            if now > self._seen[i]:
                metric.inc(now - self._seen[i])
                self._seen[i] = now
        if self.lora_info is not None:
            running = ",".join(sorted({s.adapter for s in e.running if s.adapter}))
            waiting = ",".join(sorted({s.adapter for s in e.waiting if s.adapter}))
            # vLLM stamps the current label combination with the time; readers take the newest series
            self.lora_info.labels(str(e.lora.max_loras), waiting, running).set_to_current_time()

    def exposition(self) -> bytes:
        """The text /metrics serves."""
        self.refresh()
        return generate_latest(self.registry)

    def on_step(self, engine: Engine, step: Step) -> None:
        """Per-step histogram and gauges."""
        self.iteration.observe(sum(n for _, n in step.entries))
        self.refresh()

    def on_first_token(self, seq: Sequence) -> None:
        """TTFT, from arrival (vLLM measures from the frontend's arrival time)."""
        if seq.first_token_at is not None:
            self.ttft.observe(seq.first_token_at - seq.arrival)

    def on_token(self, seq: Sequence, itl: float) -> None:
        """Inter-token latency of every later token."""
        self.itl.observe(itl)

    def on_finish(self, seq: Sequence) -> None:
        """Finished-request histograms and the success counter (aborts counted too, as vLLM does)."""
        self.success[seq.finish_reason or "abort"].inc()
        end = seq.finished_at if seq.finished_at is not None else seq.arrival
        scheduled = seq.scheduled_at if seq.scheduled_at is not None else end
        first = seq.first_token_at if seq.first_token_at is not None else end
        self.e2e.observe(end - seq.arrival)
        self.queue.observe(scheduled - seq.arrival)
        self.inference.observe(end - scheduled)
        self.prefill.observe(first - scheduled)
        self.decode.observe(end - first)
        self.req_prompt.observe(len(seq.prompt))
        self.req_gen.observe(len(seq.output_ids))
        self.max_tokens.observe(seq.max_tokens)
        self.refresh()
