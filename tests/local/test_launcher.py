"""The llama-server command line and model lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.config import LocalFleetConfig
from fleetgate.domain.errors import FleetError
from fleetgate.local import launcher
from fleetgate.local.model import MODEL_FILE, find_default_model, resolve_model


def test_args_follow_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "_has_amx", lambda: True)
    cfg = LocalFleetConfig(parallel=3, ctx_size=4096, threads=1, model_alias="tiny", extra_args=["--foo"])
    args = launcher.llama_server_args(Path("/bin/ls"), Path("/m.gguf"), 1234, cfg)
    joined = " ".join(args)
    assert "--host 127.0.0.1 --port 1234" in joined
    assert "--parallel 3" in joined and "-c 4096" in joined and "-t 1" in joined
    assert "--metrics" in args and "--alias tiny" in joined
    assert "--no-repack" in args  # the AMX repack crash
    assert args[-1] == "--foo"


def test_slots_search_the_prompt_cache_by_default() -> None:
    """Every request searches llama-server's RAM prompt cache (similarity 0), whose size is bounded by config."""
    joined = " ".join(launcher.llama_server_args(Path("b"), Path("m"), 1, LocalFleetConfig()))
    assert "--slot-prompt-similarity 0 " in joined and "--cache-ram 2048" in joined
    cfg = LocalFleetConfig(slot_prompt_similarity=0.1, cache_ram_mib=0)
    joined = " ".join(launcher.llama_server_args(Path("b"), Path("m"), 1, cfg))
    assert "--slot-prompt-similarity 0.1 " in joined and "--cache-ram 0" in joined


def test_no_repack_only_on_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "_has_amx", lambda: False)
    assert "--no-repack" not in launcher.llama_server_args(Path("b"), Path("m"), 1, LocalFleetConfig())


def test_free_port_is_bindable() -> None:
    import socket

    port = launcher.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_default_model_comes_from_the_wheel() -> None:
    path = find_default_model()
    assert path is not None and path.name == MODEL_FILE
    assert path.stat().st_size > 50_000_000


def test_configured_model_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="is not a file"):
        resolve_model(tmp_path / "missing.gguf")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_model(model) == model
