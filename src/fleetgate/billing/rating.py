"""Rating, kept apart from metering: versioned price books applied to immutable usage, giving charges and margin.

Money is integer micro-units of the book's currency. Prices are per 1M tokens; GPU costs per busy hour or per 1M
tokens. A price book version is never edited: setting prices inserts a new version, and re-rating a period under
another version only changes the charges computed here, never an event or a roll-up.

Price lookup for a request on `model` (with `adapter`) for a tenant: the tenant's overrides win over the global
prices; within each, the most specific name wins: "model:adapter", then "model", then "*".

Which book applies: a book is in force from its `created_at` instant (`usage prices set` puts it a few seconds
ahead, or at `--from`, so every gateway holds it before it applies) until the next book's; an event is rated with
the book in force when it started, and usage before the first book with the oldest. The gateway's budget counter
follows the same rule (billing/price_books.py), with the same money function (billing/prices.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from fleetgate.billing.prices import MICROS_PER_UNIT, ModelRate, micros, token_charge
from fleetgate.db.schema import price_books
from fleetgate.domain.errors import InvalidRequest, NotFound
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.ledger import DailyUsage

TenantNames = Callable[[], Awaitable[Mapping[str, str]]]


def to_micros(value: Any) -> int:
    """Parse a money amount (int, float, decimal text) into exact micro-units; reject negatives and sub-micros."""
    if isinstance(value, bool):
        raise ValueError("must be a number")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a finite amount >= 0")
    micros = amount * MICROS_PER_UNIT
    if micros != micros.to_integral_value():
        raise ValueError(f"{value} has more than 6 decimals")
    return int(micros)


def format_money(micros: int) -> str:
    """Micro-units as decimal text with 2 to 6 decimals (1500000 -> "1.50", 12 -> "0.000012")."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    return f"{sign}{whole}.{f'{frac:06d}'.rstrip('0').ljust(2, '0')}"


def per_million(tokens: int, micros_per_1m: int) -> int:
    """Amount for `tokens` at a per-1M-token price, rounded half up to a micro-unit (integers only)."""
    return micros(max(tokens, 0) * micros_per_1m)


Micros = Annotated[int, BeforeValidator(to_micros)]


class RateSpec(BaseModel):
    """A model's prices per 1M tokens in currency units; cached_input defaults to input (no cache discount)."""

    model_config = ConfigDict(extra="forbid")
    input: Micros
    cached_input: Micros | None = None
    output: Micros


class GpuCostSpec(BaseModel):
    """What a GPU type costs the operator: per busy hour, or per 1M tokens (exactly one)."""

    model_config = ConfigDict(extra="forbid")
    per_hour: Micros | None = None
    per_1m_tokens: Micros | None = None

    @model_validator(mode="after")
    def _one(self) -> GpuCostSpec:
        if (self.per_hour is None) == (self.per_1m_tokens is None):
            raise ValueError("give exactly one of per_hour, per_1m_tokens")
        return self


class PriceBookSpec(BaseModel):
    """What `usage prices set -f prices.yaml` reads (see prices.example.yaml)."""

    model_config = ConfigDict(extra="forbid")
    currency: str = Field("USD", pattern=r"^[A-Z]{3,8}$")
    note: str | None = Field(None, max_length=500)
    prices: dict[str, RateSpec] = Field(min_length=1)
    tenant_overrides: dict[str, dict[str, RateSpec]] = Field(default_factory=dict)
    gpu_costs: dict[str, GpuCostSpec] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GpuCost:
    """Operator cost of a GPU type in micro-units: per busy hour or per 1M tokens."""

    per_hour: int | None = None
    per_1m_tokens: int | None = None


def _rates(data: Mapping[str, Any]) -> dict[str, ModelRate]:
    return {name: ModelRate(int(r["input"]), int(r["cached_input"]), int(r["output"])) for name, r in data.items()}


def _rate_json(specs: Mapping[str, RateSpec]) -> dict[str, dict[str, int]]:
    return {
        name: {
            "input": r.input,
            "cached_input": r.input if r.cached_input is None else r.cached_input,
            "output": r.output,
        }
        for name, r in specs.items()
    }


@dataclass(frozen=True, slots=True)
class PriceBook:
    """One stored, immutable price book version, in force from `created_at`."""

    version: int
    created_at: datetime
    currency: str
    prices: dict[str, ModelRate]
    tenant_overrides: dict[str, dict[str, ModelRate]]
    gpu_costs: dict[str, GpuCost]
    note: str | None = None

    def rate_for(self, model: str, adapter: str | None, tenant: str) -> ModelRate | None:
        """The price for a model (and adapter) for a tenant's external id; None if nothing applies."""
        names = [f"{model}:{adapter}"] if adapter else []
        names.append(model)
        if ":" in model:  # "base:adapter" named as the model falls back to the base model's price
            names.append(model.split(":", 1)[0])
        names.append("*")
        for table in (self.tenant_overrides.get(tenant, {}), self.prices):
            for name in names:
                if name in table:
                    return table[name]
        return None

    def to_json(self) -> dict[str, Any]:
        """Plain dict with amounts as decimal text (for `prices list --json`)."""

        def money(rate: ModelRate) -> dict[str, str]:
            return {k: format_money(getattr(rate, k)) for k in ("input", "cached_input", "output")}

        return {
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "currency": self.currency,
            "note": self.note,
            "prices": {m: money(r) for m, r in self.prices.items()},
            "tenant_overrides": {t: {m: money(r) for m, r in o.items()} for t, o in self.tenant_overrides.items()},
            "gpu_costs": {
                g: {k: format_money(v) for k, v in (("per_hour", c.per_hour), ("per_1m_tokens", c.per_1m_tokens)) if v}
                for g, c in self.gpu_costs.items()
            },
        }


@dataclass(frozen=True, slots=True)
class Ratable:
    """The usage a policy rates: one event or one roll-up row, with the tenant's external id resolved."""

    key: str
    tenant: str
    model: str
    adapter: str | None
    gpu_type: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    busy_seconds: float

    @property
    def fresh_tokens(self) -> int:
        """Prompt tokens not served from cache."""
        return max(self.prompt_tokens - self.cached_tokens, 0)


def ratable(usage: UsageEvent | DailyUsage, tenant: str) -> Ratable:
    """One event or roll-up row as something a rating policy can rate (`tenant` is the tenant's external id)."""
    return Ratable(
        key=usage.event_id if isinstance(usage, UsageEvent) else usage.key,
        tenant=tenant,
        model=usage.model,
        adapter=usage.adapter,
        gpu_type=usage.gpu_type,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        busy_seconds=usage.busy_seconds,
    )


@dataclass(frozen=True, slots=True)
class Charge:
    """What one event or roll-up costs the tenant (and the operator), in micro-units, under one book version."""

    key: str  # the event_id, or a roll-up key "day|tenant_id|model|adapter|gpu_type"
    price_book_version: int
    fresh_input: int
    cached_input: int
    output: int
    total: int
    cost: int
    margin: int
    priced: bool = True  # False when no price applied (charged 0): surfaces in reports as unpriced usage
    # Fresh input, cached input and output in exact units (prices.py): what totals are summed from.
    exact: tuple[int, int, int] = field(default=(0, 0, 0), compare=False)


class RatingPolicy(Protocol):
    """Turns token counts and a model's rate into the three charged amounts (fresh, cached, output).

    The budget counter (tenancy/gate.py) and rating both charge through a policy, which calls the one money
    function, `prices.token_charge`."""

    name: str

    def amounts(self, rate: ModelRate, prompt: int, cached: int, completion: int) -> tuple[int, int, int]:
        """Exact units (prices.py) for fresh input, cached input and output."""
        ...


class PerToken:
    """Fresh input, cached input and output each at their own rate (the default)."""

    name = "per_token"

    def amounts(self, rate: ModelRate, prompt: int, cached: int, completion: int) -> tuple[int, int, int]:
        """Exact units for fresh input, cached input and output."""
        return token_charge(rate, prompt, cached, completion)


class NoCacheDiscount:
    """Cached input charged as fresh input (for operators who keep the cache saving)."""

    name = "no_cache_discount"

    def amounts(self, rate: ModelRate, prompt: int, cached: int, completion: int) -> tuple[int, int, int]:
        """Exact units for fresh input, cached input and output."""
        return token_charge(rate, prompt, cached, completion, cache_discount=False)


POLICIES: dict[str, Callable[[], RatingPolicy]] = {"per_token": PerToken, "no_cache_discount": NoCacheDiscount}


def make_policy(name: str) -> RatingPolicy:
    """The rating policy registered under `name`."""
    factory = POLICIES.get(name)
    if factory is None:
        raise InvalidRequest(f"unknown rating policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return factory()


def gpu_cost(usage: Ratable, book: PriceBook) -> int:
    """The operator's cost of serving this usage, by its GPU type (0 when the type has no cost)."""
    cost = book.gpu_costs.get(usage.gpu_type or "")
    if cost is None:
        return 0
    if cost.per_1m_tokens is not None:
        return per_million(usage.prompt_tokens + usage.completion_tokens, cost.per_1m_tokens)
    # per_hour x busy seconds / 3600, rounded half up in integers
    micros_seconds = round(max(usage.busy_seconds, 0.0) * (cost.per_hour or 0))
    return (micros_seconds + 1800) // 3600


def rate(usage: Ratable, book: PriceBook, policy: RatingPolicy) -> Charge:
    """The charge for one event or roll-up under one price book (pure: reads nothing, writes nothing)."""
    price = book.rate_for(usage.model, usage.adapter, usage.tenant)
    exact = (
        (0, 0, 0)
        if price is None
        else policy.amounts(price, usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)
    )
    total = micros(sum(exact))
    cost = gpu_cost(usage, book)
    fresh, cached, output = (micros(x) for x in exact)
    return Charge(usage.key, book.version, fresh, cached, output, total, cost, total - cost, price is not None, exact)


def _book(row: Mapping[str, Any]) -> PriceBook:
    created = row["created_at"]
    return PriceBook(
        version=int(row["version"]),
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
        currency=row["currency"],
        prices=_rates(row["prices"]),
        tenant_overrides={t: _rates(o) for t, o in row["tenant_overrides"].items()},
        gpu_costs={g: GpuCost(c.get("per_hour"), c.get("per_1m_tokens")) for g, c in row["gpu_costs"].items()},
        note=row["note"],
    )


def _columns(spec: PriceBookSpec) -> dict[str, Any]:
    # The stored form: amounts as integer micro-units (per 1M tokens, per hour), cached_input filled in.
    return {
        "currency": spec.currency,
        "prices": _rate_json(spec.prices),
        "tenant_overrides": {t: _rate_json(o) for t, o in spec.tenant_overrides.items()},
        "gpu_costs": {g: c.model_dump(exclude_none=True) for g, c in spec.gpu_costs.items()},
        "note": spec.note,
    }


def book_from_spec(spec: PriceBookSpec, version: int, created_at: datetime) -> PriceBook:
    """The PriceBook a spec becomes once stored (for previews and tests; storing is Rating.create_book)."""
    return _book({**_columns(spec), "version": version, "created_at": created_at})


class Rating:
    """Price books in the ledger's database, a rating policy, and tenant names for overrides and reports."""

    def __init__(
        self, engine: AsyncEngine, *, policy: str = "per_token", tenant_names: TenantNames | None = None
    ) -> None:
        self.engine = engine
        self.policy = make_policy(policy)
        self._tenant_names = tenant_names

    async def tenant_names(self) -> Mapping[str, str]:
        """Tenant id -> external id (empty without a lookup: ids are shown as they are)."""
        return {} if self._tenant_names is None else await self._tenant_names()

    async def tenant_id(self, external_id: str) -> str:
        """The tenant id events carry for an external id (the text itself if no tenant has that name)."""
        for tid, ext in (await self.tenant_names()).items():
            if ext == external_id:
                return tid
        return external_id

    async def create_book(self, spec: PriceBookSpec, *, in_force_from: datetime | None = None) -> PriceBook:
        """Store a new price book version (versions are never edited), in force from `in_force_from` (now)."""
        values = {"created_at": in_force_from or datetime.now(UTC), **_columns(spec)}
        async with self.engine.begin() as conn:
            version = (
                await conn.execute(price_books.insert().values(values).returning(price_books.c.version))
            ).scalar_one()
        return _book({**values, "version": version})

    async def books(self) -> list[PriceBook]:
        """Every price book version, oldest first."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(price_books).order_by(price_books.c.version))).all()
        return [_book(dict(r._mapping)) for r in rows]

    async def book(self, version: int | None = None) -> PriceBook | None:
        """One version (404 if unknown), or the newest when `version` is None (None if there is none yet)."""
        query = select(price_books)
        query = query.where(price_books.c.version == version) if version is not None else query
        async with self.engine.connect() as conn:
            row = (await conn.execute(query.order_by(price_books.c.version.desc()).limit(1))).first()
        if row is None and version is not None:
            raise NotFound(f"no price book version {version}")
        return None if row is None else _book(dict(row._mapping))

    def charge(self, usage: Ratable, book: PriceBook) -> Charge:
        """Rate one event or roll-up with this rating's policy."""
        return rate(usage, book, self.policy)


def _order(book: PriceBook) -> tuple[float, int]:
    return book.created_at.timestamp(), book.version


def book_at(books: Sequence[PriceBook], when: float) -> PriceBook | None:
    """The book in force at Unix time `when`: the latest in force by then, else the earliest (None: no books)."""
    chosen: PriceBook | None = None
    for book in books:
        if _order(book)[0] <= when and (chosen is None or _order(book) > _order(chosen)):
            chosen = book
    return chosen if chosen is not None or not books else min(books, key=_order)


def book_changes(books: Sequence[PriceBook], start: float, end: float) -> list[tuple[float, PriceBook | None]]:
    """The books in force over [start, end): (from, book) pieces, the first from `start`, one per change."""
    pieces: list[tuple[float, PriceBook | None]] = [(start, book_at(books, start))]
    for when in sorted({_order(b)[0] for b in books if start < _order(b)[0] < end}):
        book = book_at(books, when)
        if book is not pieces[-1][1]:
            pieces.append((when, book))
    return pieces
