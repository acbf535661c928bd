"""The demo and admin keys a fresh install starts with: random, generated once, kept in a file only its owner reads.

`gateway.demo_api_key` and `gateway.admin_api_key` default to `auto`: their values come from `<state dir>/keys.json`
(0600, in a 0700 folder), written by the first process that starts. It is written aside and hard-linked into
place, so gateways starting together agree on one pair and no reader sees half a file. Keys set explicitly in
config win. `fleetgate up` prints them in its banner, `fleetgate status` to the file's owner.

Earlier versions shipped fixed, published keys as defaults; they are never accepted on a public bind, and a store
still holding the published demo key gets it revoked at start (see `revoke_published_demo_key`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetgate.config import AUTO_KEY, Config, GatewayConfig
from fleetgate.domain.errors import ConfigError
from fleetgate.domain.paths import PRIVATE_FILE_MODE, default_state_dir, ensure_state_dir
from fleetgate.tenancy.keys import KEY_PREFIX, generate_key, hash_key
from fleetgate.tenancy.store import TenantStore

log = logging.getLogger(__name__)

KEY_FILE = "keys.json"
PUBLISHED_DEMO_KEY = "fg-demo-0123456789abcdef"
PUBLISHED_ADMIN_KEY = "fg-admin-0123456789abcdef"
PUBLISHED_KEYS = frozenset({PUBLISHED_DEMO_KEY, PUBLISHED_ADMIN_KEY})


@dataclass(frozen=True)
class GeneratedKeys:
    """The pair in the key file."""

    demo_api_key: str
    admin_api_key: str
    created_at: str


def key_file_path() -> Path:
    """Where the generated keys live."""
    return default_state_dir() / KEY_FILE


def read_key_file(path: Path) -> GeneratedKeys | None:
    """The generated keys, None if never generated; ConfigError if unreadable or damaged."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ConfigError(
            f"cannot read the key file {path}: it belongs to the user the gateway runs as (run as that user, or"
            " set gateway.demo_api_key / gateway.admin_api_key explicitly)"
        ) from None
    try:
        data = json.loads(raw)
        keys = GeneratedKeys(str(data["demo_api_key"]), str(data["admin_api_key"]), str(data.get("created_at", "")))
    except (ValueError, KeyError, TypeError):
        keys = None
    if keys is None or not all(k.startswith(KEY_PREFIX) for k in (keys.demo_api_key, keys.admin_api_key)):
        raise ConfigError(
            f"the key file {path} is damaged: delete it to generate new keys (revoke the old demo key with"
            " `fleetgate keys revoke` if it was handed out)"
        )
    return keys


def load_or_create(path: Path) -> GeneratedKeys:
    """The generated keys, creating the file (0600) with a new random pair on first use."""
    found = read_key_file(path)
    if found is not None:
        return found
    fresh = GeneratedKeys(generate_key(), generate_key(), datetime.now(UTC).isoformat(timespec="seconds"))
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(fresh), out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process started at the same moment: its pair wins
            os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)
    kept = read_key_file(path)
    assert kept is not None
    return kept


def resolve_keys(config: Config) -> Config:
    """Replace `auto` key settings with the generated keys (creating them on first start); idempotent."""
    gateway = config.gateway
    if AUTO_KEY not in (gateway.demo_api_key, gateway.admin_api_key):
        return config
    ensure_state_dir()
    keys = load_or_create(key_file_path())
    if gateway.demo_api_key == AUTO_KEY:
        gateway.demo_api_key = keys.demo_api_key
    if gateway.admin_api_key == AUTO_KEY:
        gateway.admin_api_key = keys.admin_api_key
    return config


def shown_keys(config: Config) -> dict[str, Any]:
    """The keys in force for `fleetgate status` (never creates anything): from config, else from the key file."""
    path = key_file_path()
    gateway = config.gateway
    generated, error = None, None
    if AUTO_KEY in (gateway.demo_api_key, gateway.admin_api_key):
        try:
            generated = read_key_file(path)
        except ConfigError as exc:
            error = str(exc)

    def pick(configured: str | None, generated_value: str | None) -> str | None:
        return generated_value if configured == AUTO_KEY else configured

    return {
        "demo_api_key": pick(gateway.demo_api_key, generated.demo_api_key if generated else None),
        "admin_api_key": pick(gateway.admin_api_key, generated.admin_api_key if generated else None),
        "key_file": str(path),
        "key_file_error": error,
    }


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or every interface ("", "0.0.0.0" is an address and not loopback)


def check_public_bind(gateway: GatewayConfig) -> None:
    """Refuse a non-loopback listen address while a demo key is active or the admin key is missing or published."""
    if is_loopback(gateway.host) or gateway.allow_public_demo_key:
        return
    problems = []
    if gateway.demo_api_key is not None:
        problems.append("a demo key is active (anyone holding it is served and billed as the demo tenant)")
    if gateway.admin_api_key is None:
        problems.append("no admin key is set (gateway.admin_api_key: null)")
    elif gateway.admin_api_key in PUBLISHED_KEYS:
        problems.append("the admin key is the published example key")
    if problems:
        raise ConfigError(
            f"refusing to listen on {gateway.host or 'every interface'} (reachable from other machines): "
            + "; ".join(problems)
            + ". Set gateway.demo_api_key: null and an admin key (`auto` generates one), or set"
            " gateway.allow_public_demo_key: true to accept this"
        )


async def revoke_published_demo_key(store: TenantStore, configured: str | None) -> None:
    """Revoke the demo key earlier versions published, if this store still accepts it and config does not name it."""
    if configured == PUBLISHED_DEMO_KEY:
        return  # the operator's explicit choice
    found = await store.lookup(hash_key(PUBLISHED_DEMO_KEY))
    if found is None or found[0].revoked_at is not None:
        return
    await store.revoke_key(found[0].id)
    log.warning(
        "revoked the demo key %s… that earlier versions published as a default; the demo key is now generated"
        " (`fleetgate status` shows it)",
        found[0].prefix,
    )
