"""The two ways a request off the hot path proves who sends it, as FastAPI dependencies every route uses.

- `admin`: the operator's admin key (`admin_or_metrics_token` also takes `observability.metrics_token`, for
  /metrics only), compared in constant time; failures count against the sender's address (tenancy.secret_check).
- `tenant`: a tenant key, resolved to its Principal by the tenant gate (401/403, or 429 for an address that failed
  too often).

What they check against lives on the app (`app.state.credentials`), so a router is built once and the same
dependency serves every app it is part of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request

from fleetgate.tenancy.auth import Authenticate, Principal
from fleetgate.tenancy.failures import FailureLimiter
from fleetgate.tenancy.secret_check import SecretCheck

ADMIN_ASKED = "send the admin key as `Authorization: Bearer <admin key>`"
METRICS_ASKED = (
    "/metrics names tenants: send observability.metrics_token or the admin key as"
    " `Authorization: Bearer <token>` (Prometheus: `authorization: {credentials: <token>}`)"
)
METRICS_DISABLED = "/metrics needs credentials: set observability.metrics_token (or gateway.admin_api_key)"

# Declared so the admin OpenAPI document says how to authenticate; the check itself is AdminKey's.
bearer = HTTPBearer(auto_error=False, description="the admin key")


@dataclass(frozen=True)
class Credentials:
    """What the dependencies check against: the admin key, the metrics token, the tenant keys."""

    admin: SecretCheck
    metrics: SecretCheck
    authenticate: Authenticate

    @classmethod
    def of(
        cls,
        admin_key: str | None,
        metrics_token: str | None,
        authenticate: Authenticate,
        failures: FailureLimiter | None = None,
    ) -> Credentials:
        """Credentials from the configured secrets; `failures` is shared with the tenant keys' (one per address)."""
        return cls(
            SecretCheck([admin_key], failures=failures, asked=ADMIN_ASKED),
            SecretCheck([metrics_token, admin_key], failures=failures, asked=METRICS_ASKED, disabled=METRICS_DISABLED),
            authenticate,
        )


def _credentials(request: Request) -> Credentials:
    credentials = request.app.state.credentials
    assert isinstance(credentials, Credentials), "the app was built without api.app.make_api"
    return credentials


def _authorization(request: Request) -> bytes | None:
    # The raw header bytes, as the checks take them (no decode/encode round trip).
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


def _peer(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


class AdminKey:
    """Dependency: the request carries the admin key (or, with `metrics_token`, the metrics token); else 401/429."""

    def __init__(self, *, metrics_token: bool = False) -> None:
        self.metrics_token = metrics_token

    async def __call__(
        self, request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> None:
        """Check the Authorization header."""
        credentials = _credentials(request)
        check = credentials.metrics if self.metrics_token else credentials.admin
        check.verify(_authorization(request), client=_peer(request))


admin = AdminKey()
admin_or_metrics_token = AdminKey(metrics_token=True)


async def tenant(request: Request) -> Principal:
    """Dependency: the tenant whose key the request carries (the tenant always comes from the key, never the query)."""
    return await _credentials(request).authenticate(_authorization(request), client=_peer(request))


Tenant = Annotated[Principal, Depends(tenant)]
