"""Workloads for the fleet simulator: a seeded multi-turn chat generator and recorded JSON-lines traces."""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fleetgate.domain.errors import ConfigError
from fleetgate.routing.request import render_messages
from fleetgate.scheduling.fair_queue import PRIORITIES
from fleetgate.sim.text import IM_END, WORDS, TextGenerator, encode, piece_id, render_chat, split_pieces

_STANDARD = PRIORITIES.index("standard")
_POOL = 1 << 16  # random words shared by every message: a span of it is a message, cut in O(1)
_HEADER_IDS = {role: encode(f"<|im_start|>{role}\n") for role in ("system", "user", "assistant")}
_END_IDS = encode(f"{IM_END}\n")


class ScriptedText(TextGenerator):
    """A TextGenerator that says a reply fixed in advance, so the next turn's prompt can contain it."""

    def __init__(self, pieces: list[str], ids: list[int]) -> None:  # no super().__init__: nothing random
        self.pieces = pieces or ["."]
        self.ids = ids or [piece_id(".")]
        self.natural_length = len(self.pieces)
        self.count = 0

    def next_piece(self) -> str:
        """The next scripted piece (the last one again if the engine asks past the script)."""
        self.count += 1
        return self.pieces[min(self.count, len(self.pieces)) - 1]

    def take(self, n: int) -> tuple[list[str], list[int]]:
        """The next `n` pieces and their ids at once, as `n` calls of next_piece would give them."""
        start, self.count = self.count, self.count + n
        pieces, ids = self.pieces[start : self.count], self.ids[start : self.count]
        if len(pieces) < n:  # past the script: the last piece repeats
            pieces += [self.pieces[-1]] * (n - len(pieces))
            ids += [self.ids[-1]] * (n - len(ids))
        return pieces, ids


@dataclass(slots=True, eq=False)
class SimRequest:
    """One request as the simulated gateway receives it."""

    index: int
    arrival: float  # seconds from the start of the run
    tenant: str
    prompt_ids: list[int]  # what the engine prefills (ChatML, the simulator's tokenizer)
    max_tokens: int
    reply: list[str]  # the answer's pieces; the engine stops after them (or at max_tokens)
    reply_ids: list[int]  # their token ids
    prompt_text: str | None = None  # what the router's prefix index hashes; None: a token-only trace
    session: str | None = None
    priority: int = _STANDARD
    cache_key: str | None = None  # conversation: its prompt's block hashes are kept for the next turn
    parent_key: str | None = None  # shared system prompt whose block hashes seed this prompt's
    parent_len: int = 0  # tokens of the prompt that the parent covers
    last_turn: bool = True


@dataclass(frozen=True)
class ChatWorkload:
    """Seeded chat traffic: tenants with shared system prompts, multi-turn conversations, Poisson arrivals."""

    requests: int = 2000
    rate: float = 20.0  # arrivals per second, Poisson
    tenants: int = 4
    tenant_skew: float = 1.0  # Zipf exponent over tenants (0: equal shares)
    system_prompts: int = 2  # per tenant, shared by its conversations
    system_tokens: tuple[int, int] = (400, 1200)
    user_tokens: tuple[int, int] = (20, 200)
    reply_tokens: tuple[int, int] = (32, 256)
    max_tokens: int = 256
    turns: float = 4.0  # mean turns per conversation (geometric)
    think_time: float = 5.0  # seconds at least between two turns of a conversation
    max_context: int = 8192  # a conversation ends before its prompt plus max_tokens would exceed this
    seed: int = 0

    def __post_init__(self) -> None:
        if self.requests < 0 or self.rate <= 0 or self.tenants < 1 or self.system_prompts < 1 or self.turns < 1:
            raise ConfigError("workload: requests >= 0, rate > 0, tenants, system_prompts and turns >= 1")
        for name in ("system_tokens", "user_tokens", "reply_tokens"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ConfigError(f"workload.{name}: need 1 <= min <= max")

    def __iter__(self) -> Iterator[SimRequest]:
        return _ChatGenerator(self).run()


@dataclass(slots=True, eq=False)
class _Conversation:
    key: str
    tenant: str
    system: str  # parent key
    system_len: int
    text: str  # the history as the router renders it (render_messages is per message, so it extends)
    ids: list[int]
    turns_left: int
    ready_at: float = 0.0


@dataclass
class _ChatGenerator:
    spec: ChatWorkload
    rng: random.Random = field(init=False)
    words: list[int] = field(init=False)
    pieces: list[str] = field(init=False)
    ids: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.spec.seed)
        self.words = self.rng.choices(range(len(WORDS)), k=_POOL)
        self.pieces = [" " + WORDS[w] for w in self.words]
        self.ids = [piece_id(p) for p in self.pieces]

    def span(self, n: int) -> tuple[list[str], list[int]]:
        """`n` pieces of text and their ids; the first has no leading space so ChatML tokenizes it alone."""
        off = self.rng.randrange(_POOL - n)
        first = WORDS[self.words[off]].capitalize()
        return [first, *self.pieces[off + 1 : off + n]], [piece_id(first), *self.ids[off + 1 : off + n]]

    def run(self) -> Iterator[SimRequest]:
        spec, rng = self.spec, self.rng
        names = [f"t{i}" for i in range(spec.tenants)]
        shares = list(itertools.accumulate(1.0 / (i + 1) ** spec.tenant_skew for i in range(spec.tenants)))
        systems: dict[str, list[tuple[str, str, list[int]]]] = {}
        for tenant in names:
            systems[tenant] = []
            for j in range(spec.system_prompts):
                pieces, ids = self.span(rng.randint(*spec.system_tokens))
                block = _HEADER_IDS["system"] + ids + _END_IDS
                text = render_messages([{"role": "system", "content": "".join(pieces)}])
                systems[tenant].append((f"{tenant}/sys{j}", text, block))
        open_convs: dict[str, deque[_Conversation]] = {t: deque() for t in names}
        stop = 1.0 / spec.turns  # geometric turn count: each turn is the last with this probability
        now, made = 0.0, 0
        for index in range(spec.requests):
            now += rng.expovariate(spec.rate)
            tenant = rng.choices(names, cum_weights=shares)[0]
            line = open_convs[tenant]
            if line and line[0].ready_at <= now:
                conv = line.popleft()
            else:
                key, text, block = rng.choice(systems[tenant])
                turns = 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - stop)) if stop < 1.0 else 1
                conv = _Conversation(f"{tenant}/c{made}", tenant, key, len(block), text, block, turns)
                made += 1
            user_pieces, user_ids = self.span(rng.randint(*spec.user_tokens))
            prompt_text = conv.text + render_messages([{"role": "user", "content": "".join(user_pieces)}])
            prompt = conv.ids + _HEADER_IDS["user"] + user_ids + _END_IDS + _HEADER_IDS["assistant"]
            reply_pieces, reply_ids = self.span(rng.randint(*spec.reply_tokens))
            reply_pieces, reply_ids = reply_pieces[: spec.max_tokens], reply_ids[: spec.max_tokens]
            conv.turns_left -= 1
            # the next turn adds at least a short user message and a full answer: stop before the context overflows
            history = len(prompt) + len(reply_ids) + len(_END_IDS)
            more = conv.turns_left > 0 and history + spec.user_tokens[1] + 16 + spec.max_tokens * 2 <= spec.max_context
            yield SimRequest(
                index=index,
                arrival=now,
                tenant=tenant,
                prompt_ids=prompt,
                max_tokens=spec.max_tokens,
                reply=reply_pieces,
                reply_ids=reply_ids,
                prompt_text=prompt_text,
                session=conv.key,
                cache_key=conv.key,
                parent_key=conv.system,
                parent_len=conv.system_len,
                last_turn=not more,
            )
            if more:
                conv.ids = prompt + reply_ids + _END_IDS
                conv.text = prompt_text + render_messages([{"role": "assistant", "content": "".join(reply_pieces)}])
                conv.ready_at = now + spec.think_time
                line.append(conv)


@dataclass(frozen=True)
class TraceWorkload:
    """A recorded trace, one JSON object a line, replayed in arrival order.

    Fields (aliases in brackets): `arrival` [`t`, `started_at`] seconds (shifted to start at 0); `tenant`
    [`tenant_id`]; the prompt as `messages` (chat), `prompt` (text) or `prompt_tokens` (a count only, as in a
    ledger export: the tokens are then unique to the request and the router sees no text); `max_tokens`;
    `completion_tokens` (the recorded answer length; else the profile's range, seeded); `reply` (the recorded
    answer's text: the engine says exactly it, so a follow-up turn that quotes it finds it cached as it would on
    the engine that wrote it); `session` [`user`];
    `priority` (interactive, standard, batch). Ledger rows with status `rejected` never reached an engine and
    are skipped.
    """

    path: Path
    default_max_tokens: int = 256
    output_tokens: tuple[int, int] = (16, 128)
    seed: int = 0

    def __iter__(self) -> Iterator[SimRequest]:
        rows: list[tuple[float, int, dict[str, Any]]] = []
        with self.path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ConfigError(f"{self.path}:{number}: not JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{self.path}:{number}: expected a JSON object")
                if row.get("status") == "rejected":
                    continue
                rows.append((_number(row, ("arrival", "t", "started_at"), self.path, number), number, row))
        rows.sort(key=lambda r: (r[0], r[1]))
        start = rows[0][0] if rows else 0.0
        for index, (arrival, number, row) in enumerate(rows):
            yield self._request(index, arrival - start, number, row)

    def _request(self, index: int, arrival: float, number: int, row: Mapping[str, Any]) -> SimRequest:
        where = f"{self.path}:{number}"
        text: str | None
        if isinstance(row.get("messages"), list):
            ids, text = encode(render_chat(row["messages"])), render_messages(row["messages"])
        elif isinstance(row.get("prompt"), str):
            ids, text = encode(row["prompt"]), row["prompt"]
        elif isinstance(row.get("prompt_tokens"), int) and row["prompt_tokens"] > 0:
            # a count only: tokens no other request shares (ids past the vocabulary never collide with text)
            base = 1_000_000 + index * 100_000
            ids, text = list(range(base, base + int(row["prompt_tokens"]))), None
        else:
            raise ConfigError(f"{where}: needs `messages`, `prompt` or a positive `prompt_tokens`")
        max_tokens = int(row.get("max_tokens") or row.get("completion_tokens") or self.default_max_tokens)
        out = row.get("completion_tokens")
        if not isinstance(out, int) or out < 1:
            out = random.Random(self.seed * 1_000_003 + index).randint(*self.output_tokens)
        session = row.get("session") or row.get("user")
        priority = row.get("priority", "standard")
        if priority not in PRIORITIES:
            raise ConfigError(f"{where}: priority must be one of {', '.join(PRIORITIES)}")
        recorded = row.get("reply")
        if isinstance(recorded, str) and recorded:
            reply = split_pieces(recorded)[: max(1, max_tokens)]
        else:
            reply = [" " + WORDS[(index + i) % len(WORDS)] for i in range(out)]
        return SimRequest(
            index=index,
            arrival=arrival,
            tenant=str(row.get("tenant") or row.get("tenant_id") or "default"),
            prompt_ids=ids,
            max_tokens=max(1, max_tokens),
            reply=reply,
            reply_ids=[piece_id(p) for p in reply],
            prompt_text=text,
            session=str(session) if session else None,
            priority=PRIORITIES.index(priority),
        )


def _number(row: Mapping[str, Any], names: tuple[str, ...], path: Path, number: int) -> float:
    for name in names:
        value = row.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    raise ConfigError(f"{path}:{number}: needs a numeric `{names[0]}` (or {', '.join(names[1:])})")
