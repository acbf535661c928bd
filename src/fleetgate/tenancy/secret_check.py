"""Operator secrets sent as `Authorization: Bearer <secret>`: the admin key, the metrics token.

The comparison is constant-time whatever is sent: the given token and every accepted secret are hashed to
SHA-256 digests of equal length, and each digest is compared (no early exit), so neither the secrets' length nor a
shared prefix shows in the timing. Failures count against the sender's address like tenant key failures do.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fleetgate.config import AUTO_KEY
from fleetgate.domain.errors import AuthenticationFailed
from fleetgate.tenancy.failures import FailureLimiter


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _token(authorization: bytes | str | None) -> tuple[str, str]:
    if authorization is None:
        return "", ""
    text = authorization.decode("latin-1") if isinstance(authorization, bytes) else authorization
    scheme, _, token = text.strip().partition(" ")
    return scheme, token.strip()


class SecretCheck:
    """Accepts a bearer token equal to one of `secrets`; raises 401 (or 429 after too many failures) otherwise."""

    def __init__(
        self,
        secrets: Sequence[str | None],
        *,
        failures: FailureLimiter | None = None,
        asked: str = "send the admin key as `Authorization: Bearer <admin key>`",
        disabled: str = "the admin API is disabled (gateway.admin_api_key is not set)",
    ) -> None:
        # An unresolved `auto` setting is no secret: it must never open anything.
        self._expected = [_digest(s) for s in secrets if s and s != AUTO_KEY]
        self._failures = failures
        self._asked = asked
        self._disabled = disabled

    @property
    def enabled(self) -> bool:
        """Whether any secret is configured (else every request is refused)."""
        return bool(self._expected)

    async def __call__(self, authorization: bytes | str | None, *, client: str | None = None) -> None:
        """Return if the header carries an accepted secret; else raise an OpenAI-shaped 401/429."""
        self.verify(authorization, client=client)

    def verify(self, authorization: bytes | str | None, *, client: str | None = None) -> None:
        """The synchronous check behind `__call__`. The right secret always passes, even from an address that
        failed too often (comparing costs no store lookup, and a prober behind the same NAT must not lock the operator
        out); a wrong one from such an address gets 429 instead of 401."""
        if not self._expected:
            raise AuthenticationFailed(self._disabled)
        scheme, token = _token(authorization)
        given = _digest(token)
        matched = False
        for expected in self._expected:
            matched |= hmac.compare_digest(given, expected)
        if scheme.lower() != "bearer" or not token or not matched:
            if self._failures is not None:
                self._failures.check(client)
                self._failures.failed(client)
            raise AuthenticationFailed(self._asked)
