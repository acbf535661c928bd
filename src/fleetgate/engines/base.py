"""The shape of an engine dialect: the facts and the small pieces of logic that change with the engine's kind.

Each dialect lives in its own file (llamacpp.py, vllm.py, sglang.py, openai.py) as one `EngineAdapter`, and
registry.py maps kinds to them. A dialect is pure request/response knowledge: which fields a body may carry, where
its health, model list, props and metrics are and how to read them, how to ask it to count a prompt (through an
injected `post`), how to read its token counters, how to load a LoRA adapter. The I/O stays in fleet/ and lora/.
A feature a dialect lacks is None: no metrics, no tokenizer, no counters, no run-time adapters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Protocol

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.engines.counters import CountersError, EngineCounters
from fleetgate.engines.request_fields import LENGTH_ALIASES, OPENAI_FIELDS, STREAM_OPTIONS, allowed_body

# POST a JSON body to a path of the engine; the decoded JSON answer, or None when the engine did not answer 200.
JsonPost = Callable[[str, dict[str, Any]], Awaitable[Any]]
# Count a request's prompt with the engine's own tokenizer (None: the engine cannot tell).
PromptCounter = Callable[[dict[str, Any], JsonPost], Awaitable[int | None]]
# Read an engine's token counters from its Prometheus text; raises CountersError when they are missing.
CounterReader = Callable[[str], EngineCounters]


@dataclass(frozen=True)
class MetricNames:
    """Where an engine's `/metrics` keeps the numbers the router reads (sample names, counters with `_total`)."""

    waiting: str
    running: str
    kv_usage: str | None = None  # a 0..1 gauge; llama.cpp has none
    prefix_queries: str | None = None  # None: the prompt token counter stands in
    prefix_hits: str | None = None  # None: the cached prompt token counter stands in
    prompt_tokens: str | None = None
    generation_tokens: str | None = None
    cached_prompt_tokens: str | None = None
    # llama.cpp's prompt counter leaves cached tokens out; add them back so every engine reports all prompt tokens.
    prompt_excludes_cached: bool = False

    def sample_names(self) -> frozenset[str]:
        """Every sample name to keep from a scrape."""
        names = (
            self.waiting,
            self.running,
            self.kv_usage,
            self.prefix_queries,
            self.prefix_hits,
            self.prompt_tokens,
            self.generation_tokens,
            self.cached_prompt_tokens,
        )
        return frozenset(n for n in names if n is not None)


@dataclass(frozen=True)
class SlotsSource:
    """Where an engine says how many requests it serves at once (llama.cpp `GET /props`), and how to read it."""

    path: str
    read: Callable[[Any], int | None]


class LoraEndpoints(Protocol):
    """How an engine loads and unloads LoRA adapters while serving, and what its answers mean."""

    def load_request(self, name: str, path: str) -> tuple[str, dict[str, str]]:
        """The path and body that load adapter `name` from `path`."""
        ...

    def unload_request(self, name: str) -> tuple[str, dict[str, str]]:
        """The path and body that unload adapter `name`."""
        ...

    def load_outcome(self, status: int, detail: str) -> Literal["loaded", "already"] | None:
        """What a load answer means: loaded now, loaded before (by another gateway), or None: it failed."""
        ...

    def unload_outcome(self, status: int) -> Literal["unloaded", "gone"] | None:
        """What an unload answer means: unloaded now, not there anyway, or None: it failed."""
        ...


def max_model_len(item: dict[str, Any]) -> Any:
    """The context window a `/v1/models` entry states as vLLM and SGLang do (`max_model_len`)."""
    return item.get("max_model_len")


def listing_context(listing: Any, read: Callable[[dict[str, Any]], Any]) -> int | None:
    """The smallest context window `read` finds among the entries of a `/v1/models` answer."""
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        return None
    found = [value for item in listing["data"] if isinstance(item, dict) for value in (read(item),)]
    windows = [value for value in found if isinstance(value, int) and not isinstance(value, bool) and value > 0]
    return min(windows) if windows else None


def model_ids(payload: Any) -> set[str]:
    """Model ids from an OpenAI `/v1/models` answer (llama.cpp also sends a `models` list; `data` is enough)."""
    if not isinstance(payload, dict):
        return set()
    data = payload.get("data")
    if not isinstance(data, list):
        return set()
    return {str(item["id"]) for item in data if isinstance(item, dict) and "id" in item}


def adapter_ids(payload: Any) -> set[str]:
    """LoRA adapters an OpenAI `/v1/models` answer lists: entries whose `parent` is another model (vLLM)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        return set()
    return {
        str(item["id"])
        for item in payload["data"]
        if isinstance(item, dict) and "id" in item and item.get("parent") not in (None, item["id"])
    }


@dataclass(frozen=True)
class RunningCounts:
    """How an engine streams its running token counts on each chunk (llama.cpp's `timings_per_token`): a marker the
    relay scans for (no parse per chunk), and how the latest such chunk reads as a usage block when a stream ended
    before its usage block came."""

    marker: bytes
    read: Callable[[Iterable[dict[str, Any] | None]], dict[str, Any] | None]


@dataclass(frozen=True)
class EngineAdapter:
    """Per-engine facts the gateway needs; everything else is plain OpenAI-compatible HTTP."""

    kind: EngineKind
    health_path: str
    # The `owned_by` an engine signs its `/v1/models` entries with: how an engine named only by URL is recognised.
    owned_by: str | None = None
    models_path: str = "/v1/models"
    # The context window one `/v1/models` entry reports (the list's smallest is the replica's); None: not told.
    model_context: Callable[[dict[str, Any]], Any] | None = None
    metrics_path: str | None = "/metrics"
    metric_names: MetricNames | None = None
    slots: SlotsSource | None = None  # the capacity busy slots count against, when the engine has no KV gauge
    count_prompt: PromptCounter | None = None
    read_counters: CounterReader | None = None  # for `fleetgate usage reconcile`
    lora: LoraEndpoints | None = None  # adapters loaded while serving; None: fixed at start (llama.cpp) or unknown
    # vLLM's `cache_salt` keeps one tenant's cached prefix from being hit (or timed) by another tenant.
    salts_cache: bool = False
    # The request fields a tenant may send this engine (request_fields.py); the rest are dropped.
    request_fields: frozenset[str] = OPENAI_FIELDS
    stream_options: frozenset[str] = STREAM_OPTIONS
    # Set on every stream, e.g. llama.cpp's `timings_per_token`: its running token counts on each chunk.
    stream_fields: tuple[tuple[str, Any], ...] = ()
    running_counts: RunningCounts | None = None  # what those chunks say, for a stream cut before its usage block

    @property
    def runtime_lora(self) -> bool:
        """True if adapters can be loaded while the engine serves (vLLM, SGLang); llama.cpp fixes them at start."""
        return self.lora is not None

    @cached_property
    def accepted_fields(self) -> frozenset[str]:
        """The allowed fields and the output-length fields (which `prepare` replaces): what a usual body holds."""
        return self.request_fields | LENGTH_ALIASES

    def context_len(self, listing: Any) -> int | None:
        """The context window the engine reports in its model list, if it does."""
        return listing_context(listing, self.model_context) if self.model_context is not None else None

    def token_counters(self, text: str) -> EngineCounters:
        """The engine's token counters from its `/metrics` text; CountersError when it keeps none we can read."""
        if self.read_counters is None:
            raise CountersError(f"cannot reconcile engine kind {self.kind!r}: its token counters are not read")
        return self.read_counters(text)

    def prepare(self, body: dict[str, Any], tenant_id: str, max_output_tokens: int | None = None) -> dict[str, Any]:
        """The body this engine gets: allowed fields only, the policy's output limit, the tenant's cache salt.

        Slot pins (`id_slot`) and per-request adapters (`lora`) never pass: a client's pin could queue behind or
        displace other tenants' requests and turns off llama-server's prompt-cache search (docs/architecture.md,
        "llama.cpp slots"); adapters are chosen by the gateway's catalog, never by a body field."""
        sent = allowed_body(body, self.request_fields, self.stream_options, max_output_tokens, self.accepted_fields)
        if self.stream_fields and sent.get("stream") is True:
            sent.update(self.stream_fields)
        if self.salts_cache:
            # Always overwritten, so a client can never name another tenant's salt; a salt the client sent still
            # splits its own tenant's cache further, as vLLM intends it.
            own = body.get("cache_salt")
            sent["cache_salt"] = f"fg:{tenant_id}:{own}" if isinstance(own, str) and own else f"fg:{tenant_id}"
        return sent
