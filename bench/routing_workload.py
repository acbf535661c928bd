"""Deterministic workloads for bench/routing.py, and the best cached-token count a request could have had.

Pure functions, no I/O: the same seed gives the same tenants, system prompts, user turns and request order.

- `shared`: each tenant has its own long system prompt; each conversation sends `turns` requests whose history
  grows with the engine's real replies (the caller appends them), so every request has a reusable prefix: the
  tenant's system prompt for a first turn, the previous turn (prompt and reply) for a follow-up.
- `unique`: the same number of requests of about the same sizes, each a standalone prompt that starts with a
  nonce, so nothing but the chat template's first tokens is shared.

Requests are dispatched turn-major: the first turn of every conversation (in a seeded order), then the second
turns (in another seeded order), and so on, a follow-up only once its previous turn has been answered. At a fixed
concurrency this interleaves the conversations as much as possible: between two turns of one conversation about
every other conversation has a turn, which is what makes the engine's per-slot cache matter.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Common English words: about one SmolLM2 token each, so a word count is close to a token count.
_VOCAB_TEXT = (
    "time person year way day thing man world life hand part child eye woman place work week case point "
    "company number group problem fact question answer order account invoice payment service customer team "
    "project report system network server request response policy option feature product price plan market "
    "sale budget review status change update issue ticket release version support contract delivery storage "
    "record schedule meeting message email phone address office region country city street station window "
    "door table chair paper book letter story history music color light water food money power energy "
    "health school student teacher class lesson course exam result level quality value cost risk goal task "
    "step method model data field file folder page list item line word name title note idea reason choice "
    "small large early late fast slow new old high low long short simple clear open close ready quick "
    "check send read write build test move keep start stop help show find give take make use ask tell call"
)
VOCAB = tuple(_VOCAB_TEXT.split())

REPLY_WORDS_GUESS = 7  # a reply of max_tokens=8 is about 7 words: sizes `unique` prompts like `shared` ones
TEMPLATE_WORDS_PER_TURN = 8  # chat template tokens per user+assistant pair, counted as words


@dataclass(frozen=True)
class Conversation:
    """One conversation: its tenant, its fixed system prompt and user turns (replies come from the engine)."""

    index: int
    tenant: str
    system: str
    users: tuple[str, ...]
    # `unique` only: a standalone system prompt per turn (sized like the shared history at that turn).
    systems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """One request: the `turn`-th (0-based) turn of conversation `conv`."""

    conv: int
    turn: int


@dataclass
class Workload:
    """A named workload: its conversations and the order their turns are offered to the client's workers."""

    name: str
    seed: int
    tenants: tuple[str, ...]
    conversations: list[Conversation]
    jobs: list[Job] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """How many requests the workload sends."""
        return len(self.jobs)

    def messages(self, job: Job, replies: Sequence[str]) -> list[dict[str, str]]:
        """The chat messages of `job`, given the replies to the conversation's earlier turns."""
        conv = self.conversations[job.conv]
        if conv.systems:  # unique: one standalone prompt per request
            return [
                {"role": "system", "content": conv.systems[job.turn]},
                {"role": "user", "content": conv.users[job.turn]},
            ]
        out = [{"role": "system", "content": conv.system}]
        for t in range(job.turn):
            out += [{"role": "user", "content": conv.users[t]}, {"role": "assistant", "content": replies[t]}]
        out.append({"role": "user", "content": conv.users[job.turn]})
        return out

    def describe(self) -> dict[str, Any]:
        """Sizes for the report."""
        return {
            "name": self.name,
            "seed": self.seed,
            "tenants": len(self.tenants),
            "conversations": len(self.conversations),
            "turns": len(self.conversations[0].users) if self.conversations else 0,
            "requests": self.requests,
        }


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def tenant_names(n: int) -> tuple[str, ...]:
    """`bench-t0`, `bench-t1`, ...: the tenant ids (and the order) both workloads use."""
    return tuple(f"bench-t{i}" for i in range(n))


def build(
    kind: str,
    *,
    seed: int,
    tenants: int,
    conversations_per_tenant: int,
    turns: int,
    system_words: int,
    user_words: int,
) -> Workload:
    """The `shared` or `unique` workload; the same arguments give the same workload."""
    if kind not in ("shared", "unique"):
        raise ValueError(f"unknown workload {kind!r}")
    rng = random.Random(f"{kind}:{seed}")
    names = tenant_names(tenants)
    systems = {
        t: f"You are the support assistant of tenant {t}. Answer in one short sentence. Facts: "
        + _words(rng, system_words)
        for t in names
    }
    convs: list[Conversation] = []
    for t in names:
        for _ in range(conversations_per_tenant):
            index = len(convs)
            users = tuple(f"Question {k + 1} of chat {index}: {_words(rng, user_words)}?" for k in range(turns))
            if kind == "shared":
                convs.append(Conversation(index, t, systems[t], users))
                continue
            # The nonce comes first, so two prompts part right after the template's first tokens.
            grown = [
                system_words + k * (user_words + REPLY_WORDS_GUESS + TEMPLATE_WORDS_PER_TURN) for k in range(turns)
            ]
            standalone = tuple(
                f"Ticket {rng.getrandbits(48):012x}. You are the support assistant of tenant {t}. Facts: "
                + _words(rng, n)
                for n in grown
            )
            convs.append(Conversation(index, t, "", users, standalone))
    # A fresh seeded order per turn: with one fixed order, round-robin over an even number of conversations
    # would send every turn of a conversation to the same replica, a stickiness real traffic does not give it.
    order_rng = random.Random(f"order:{seed}")
    jobs: list[Job] = []
    for k in range(turns):
        order = list(range(len(convs)))
        order_rng.shuffle(order)
        jobs += [Job(c, k) for c in order]
    return Workload(kind, seed, names, convs, jobs)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Served:
    """What one request looked like to the engine, for the best-possible computation."""

    prompt: tuple[int, ...]  # the rendered prompt's tokens (the engine's tokenizer)
    reply: tuple[int, ...]  # the reply's tokens
    completion_tokens: int  # what the engine reported
    seq: int  # dispatch order: 0 for the first request sent
    started: float = 0.0  # when the client sent it
    finished: float = 0.0  # when its stream ended
    conversation: int = -1


def best_cached(served: Sequence[Served], *, timed: bool = False, no_history: bool = False) -> list[int]:
    """The most prompt tokens each request could have found cached, as llama.cpp reuses them.

    A slot holds the tokens it last processed: the prompt and the reply minus its last token (the last sampled
    token is never decoded). A request can at best reuse the longest common prefix with such a state left by any
    request dispatched before it (its own previous turn, or another conversation of its tenant for the system
    prompt), and llama.cpp always evaluates at least the prompt's last token. This is the limit with a perfect
    router and enough slots: every reusable prefix hits. It does not depend on timing, only on the replies.

    `timed=True` counts only requests that had finished when this one was sent: what could really be reused
    (requests in flight together, like the first ones of a run, cannot share a prefix). `no_history=True` leaves
    out the request's own conversation: the best when only other conversations' prefixes (the tenant's system
    prompt) survive, i.e. when every conversation's history is overwritten before its next turn.
    """
    states = [s.prompt + s.reply[: max(0, s.completion_tokens - 1)] for s in served]
    out: list[int] = []
    for s in served:
        best = 0
        for j, other in enumerate(served):
            if other.seq >= s.seq or (timed and other.finished > s.started):
                continue
            if not no_history or other.conversation != s.conversation:
                best = max(best, common_prefix(s.prompt, states[j]))
        out.append(min(best, max(0, len(s.prompt) - 1)))
    return out
