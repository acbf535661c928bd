"""API key material: generation, hashing and the short prefix operators recognise keys by."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "fg-"
PREFIX_LEN = len(KEY_PREFIX) + 8


def generate_key() -> str:
    """A new random key (190 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    """The stored form of a key. Keys are random, so a plain SHA-256 cannot be reversed by guessing."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    """The recognisable start of a key, safe to show and log."""
    return key[:PREFIX_LEN]
