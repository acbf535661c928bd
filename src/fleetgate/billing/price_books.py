"""The price books a gateway charges budgets at: every version in memory, refreshed when a new one is stored.

The hot path asks for the rate of (model, adapter, tenant) at a request's start and never reads the database: the
books are loaded at start and re-read when the newest version number in `price_books` changes (one small query every
`prices.refresh_interval`). A book set with `fleetgate usage prices set` comes into force a few seconds after it is
stored (`lead_time`), so every gateway holds it before it applies and charges the same book rating applies.

`prices` in the config is only the initial book: when the ledger holds no book at all, the first start stores it as
version 1. Until the ledger database answers (a separate ledger may be down at boot) the same prices apply from
memory, as a provisional version 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from fleetgate.billing.prices import ModelRate
from fleetgate.billing.rating import (
    PriceBook,
    PriceBookSpec,
    RateSpec,
    Rating,
    RatingPolicy,
    book_at,
    book_from_spec,
    make_policy,
)
from fleetgate.config import ModelPrice, PricesConfig
from fleetgate.db.schema import price_books
from fleetgate.domain.background import Periodic

log = logging.getLogger(__name__)

_MAX_MEMO = 10_000
INITIAL_NOTE = "initial prices from the `prices` config section"


def lead_time(refresh_interval: float) -> float:
    """Seconds between storing a book and its coming into force: two refreshes and a second of clock skew."""
    return 2 * refresh_interval + 1.0


def _rate_spec(price: ModelPrice) -> RateSpec:
    # Decimal(str(x)) keeps what the operator wrote (0.1, not 0.1000000000000000055...).
    def money(x: float) -> Decimal:
        return Decimal(str(x))

    return RateSpec.model_validate(
        {"input": money(price.input), "cached_input": money(price.cached_input), "output": money(price.output)}
    )


def spec_from_config(prices: PricesConfig) -> PriceBookSpec | None:
    """The `prices` config section as a price book (None when it prices nothing: the ledger then starts empty)."""
    models = {name: _rate_spec(p) for name, p in prices.models.items()}
    if "default" in prices.model_fields_set:
        models.setdefault("*", _rate_spec(prices.default))
    if not models:
        return None
    return PriceBookSpec(currency=prices.currency, note=INITIAL_NOTE, prices=models)


class PriceBooks:
    """The books in force for the budget counter, with the rating policy both sides use."""

    def __init__(self, engine: AsyncEngine | None, initial: PricesConfig) -> None:
        self.policy: RatingPolicy = make_policy(initial.policy)
        self._engine = engine
        self._initial = initial
        spec = spec_from_config(initial)
        epoch = datetime.fromtimestamp(0, UTC)
        self._books: list[PriceBook] = [] if spec is None else [book_from_spec(spec, 0, epoch)]
        self._newest: int | None = None  # newest version read from the database; None = not read yet
        self._current: PriceBook | None = None
        self._window = (math.inf, -math.inf)  # [from, until) in which _current is in force; empty = recompute
        self._memo: dict[tuple[str, str | None, str], ModelRate | None] = {}
        self._watch = Periodic("fleetgate-price-books", self._watch_once, initial.refresh_interval, wait_first=True)
        self._starting: asyncio.Lock | None = None

    @classmethod
    def fixed(cls, prices: PricesConfig) -> PriceBooks:
        """Books from the config alone, never read from a database (benchmarks, unit tests)."""
        books = cls(None, prices)
        books._newest = 0
        return books

    @property
    def started(self) -> bool:
        """True once the books were read (or there is no database to read them from)."""
        return self._newest is not None

    @property
    def books(self) -> list[PriceBook]:
        """The books held, oldest version first."""
        return list(self._books)

    async def start(self) -> None:
        """Read the books (storing the initial one if the ledger has none) and start watching for new ones."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._watch.running or self._engine is None:
                return
            await self.refresh(seed=True)
            self._watch.start()

    async def stop(self) -> None:
        """Stop watching."""
        await self._watch.stop()

    async def refresh(self, *, seed: bool = False) -> bool:
        """Re-read the books if a version was added; True if they changed. Keeps what it has when the DB fails."""
        if self._engine is None:
            return False
        rating = Rating(self._engine)
        try:
            async with self._engine.connect() as conn:
                newest = (await conn.execute(select(func.max(price_books.c.version)))).scalar()
            if newest is None and seed and (spec := spec_from_config(self._initial)) is not None:
                newest = (await rating.create_book(spec)).version
                log.info("stored the `prices` config section as price book v%d", newest)
            if (newest or 0) == self._newest:
                return False
            books = await rating.books() if newest is not None else []
        except (SQLAlchemyError, OSError) as exc:
            if self._newest is None:
                log.warning("price books unreadable (%s): budgets use the `prices` config until they are", exc)
            return False
        if books:
            self._books = books
        self._newest = newest or 0
        self._window = (math.inf, -math.inf)
        return True

    async def _watch_once(self) -> None:
        try:
            await self.refresh(seed=not self._newest)
        except Exception:  # the outermost boundary of this task: one bad pass must not end the watching
            log.exception("refreshing price books failed")

    def book(self, when: float) -> PriceBook | None:
        """The book in force at Unix time `when` (rating's rule, `rating.book_at`)."""
        lo, hi = self._window
        if not lo <= when < hi:
            self._move(when)
        return self._current

    def _move(self, when: float) -> None:
        current = book_at(self._books, when)
        starts = sorted({b.created_at.timestamp() for b in self._books})
        lo = max((t for t in starts if t <= when), default=-math.inf)
        hi = min((t for t in starts if t > when), default=math.inf)
        self._current, self._window = current, (lo, hi)
        self._memo.clear()

    def rate(self, model: str, adapter: str | None, tenant: str, when: float) -> ModelRate | None:
        """The rate for `model` (and `adapter`) for a tenant's external id at `when`; None if nothing prices it."""
        book = self.book(when)
        if book is None:
            return None
        key = (model, adapter, tenant)
        try:
            return self._memo[key]
        except KeyError:
            pass
        if len(self._memo) >= _MAX_MEMO:
            self._memo.clear()
        found = self._memo[key] = book.rate_for(model, adapter, tenant)
        return found

    @property
    def currency(self) -> str:
        """The currency of the book in force now."""
        book = self.book(datetime.now(UTC).timestamp())
        return book.currency if book is not None else self._initial.currency
