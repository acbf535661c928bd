"""Bearer-key authentication; until tenants exist, one demo key from config is accepted."""

from __future__ import annotations

import hashlib
import hmac

from fleetgate.errors import AuthenticationFailed


def bearer_token(authorization: bytes | None) -> str:
    """Extract the key from an `Authorization: Bearer <key>` header value, or fail with 401."""
    if not authorization:
        raise AuthenticationFailed("missing API key: send it as `Authorization: Bearer <key>`")
    scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("malformed Authorization header: expected `Bearer <key>`")
    return token


class StaticKeyAuthenticator:
    """Accepts exactly one configured key; compares digests in constant time."""

    def __init__(self, key: str) -> None:
        self._digest = hashlib.sha256(key.encode()).digest()

    def authenticate(self, authorization: bytes | None) -> str:
        """Return the principal id for a valid header, else raise AuthenticationFailed (never echoing the key)."""
        token = bearer_token(authorization)
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._digest):
            raise AuthenticationFailed("invalid API key: check the key you were given")
        return "demo"
