"""The simulator's own tokenizer, chat template and seeded text: cheap, deterministic, self-consistent."""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

VOCAB_SIZE = 49152  # SmolLM2's vocabulary size; ids only need to be stable, not meaningful
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_IDS = {ENDOFTEXT: 0, IM_START: 1, IM_END: 2}

# One token is a special marker, an optional space plus up to 4 letters, up to 3 digits, up to 4 whitespace
# characters, or any other single character: about 4 characters a token, like a real BPE on English.
_PIECE = re.compile(
    r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>| ?[A-Za-z]{1,4}| ?[0-9]{1,3}|\s{1,4}|.",
    re.DOTALL,
)

# Words of at most 4 letters, so that each generated piece (" " + word) is exactly one token when the
# generated text is tokenized again (a follow-up turn counts the previous answer as the engine did).
_WORD_TEXT = (
    "the of and to in is it you that he was for on are as with his they at be this from have or by one had not "
    "but what all were when we there can an your which their said if do will each about how up out them then she "
    "many some so these would make like him into time has look two more go see no way could my than been call who "
    "its now find long down day did get come made may part over new sound take only work know place year live me "
    "back give most very after our just name good man think say great where help much line turn move same tell "
    "boy why ask went men read need land home hand big high such act kind off play air away page"
)
WORDS: tuple[str, ...] = tuple(sorted({w for w in _WORD_TEXT.split() if len(w) <= 4}))
_PUNCT = (".", ",")


def split_pieces(text: str) -> list[str]:
    """The token strings of `text`."""
    return _PIECE.findall(text)


def piece_id(piece: str) -> int:
    """A stable token id for one piece."""
    special = SPECIAL_IDS.get(piece)
    if special is not None:
        return special
    return len(SPECIAL_IDS) + zlib.crc32(piece.encode("utf-8")) % (VOCAB_SIZE - len(SPECIAL_IDS))


def encode(text: str) -> list[int]:
    """Token ids of `text`."""
    return [piece_id(p) for p in split_pieces(text)]


def _content_text(content: Any) -> str:
    # OpenAI content is a string or a list of parts; only text parts count here.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def render_chat(messages: Iterable[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
    """ChatML, the template SmolLM2 ships: what the engine would prefill for these messages."""
    parts = [f"{IM_START}{m.get('role', 'user')}\n{_content_text(m.get('content'))}{IM_END}\n" for m in messages]
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def seed_for(prompt_ids: Sequence[int], seed: int | None, adapter: str | None) -> int:
    """The generator seed: the request's `seed` if given, else a hash of the prompt; adapters change the text."""
    base = seed if seed is not None else zlib.crc32(b",".join(str(t).encode() for t in prompt_ids))
    if adapter:
        base = base * 1_000_003 + zlib.crc32(adapter.encode("utf-8"))
    return base & 0xFFFF_FFFF_FFFF


class TextGenerator:
    """Seeded stream of one-token pieces, and how many the model 'wants' to say before stopping."""

    def __init__(self, seed: int, min_tokens: int, max_tokens: int) -> None:
        self._rng = random.Random(seed)
        self.natural_length = self._rng.randint(max(1, min_tokens), max(1, min_tokens, max_tokens))
        self._count = 0

    def next_piece(self) -> str:
        """The next piece: a word with a leading space, now and then punctuation."""
        self._count += 1
        if self._count > 1 and self._rng.random() < 0.08:
            return self._rng.choice(_PUNCT)
        word = self._rng.choice(WORDS)
        return word.capitalize() if self._count == 1 else " " + word
