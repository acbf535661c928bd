"""Config loading: defaults, YAML, env overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.config import Config, env_overrides, load_config
from fleetgate.domain.errors import ConfigError


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.gateway.port == 8080 and config.gateway.host == "127.0.0.1"
    assert config.local.replicas == 2 and config.local.model_alias == "smollm2"
    assert config.engines == []


def test_yaml_file_and_env_override(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.yaml"
    path.write_text("gateway:\n  port: 9000\nlocal:\n  replicas: 3\nengines:\n  - url: http://127.0.0.1:1234/v1\n")
    config = load_config(path, environ={"FLEETGATE_GATEWAY__PORT": "9100", "FLEETGATE_LOCAL__PARALLEL": "4"})
    assert config.gateway.port == 9100  # env wins over the file
    assert config.local.replicas == 3 and config.local.parallel == 4
    assert config.engines[0].url == "http://127.0.0.1:1234"  # a trailing /v1 is stripped


def test_plain_fleetgate_vars_are_not_config() -> None:
    assert env_overrides({"FLEETGATE_CACHE_DIR": "/x", "FLEETGATE_REQUIRE_SERVICES": "1", "OTHER": "y"}) == {}


@pytest.mark.parametrize(
    ("yaml_text", "env", "needle"),
    [
        ("gateway:\n  port: 70000\n", {}, "gateway.port: Input should be less than or equal to 65535 (got 70000)"),
        ("gateway:\n  prot: 80\n", {}, "gateway.prot: Extra inputs are not permitted"),
        ("", {"FLEETGATE_LOCAL__REPLICAS": "many"}, "local.replicas: Input should be a valid integer"),
        ("engines:\n  - url: ftp://x\n", {}, "engines.0.url: Value error, must start with http:// or https://"),
        ("local:\n  parallel: 0\n", {}, "local.parallel"),
        ("- a\n- b\n", {}, "must hold a mapping"),
        ("gateway: [\n", {}, "not valid YAML"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, yaml_text: str, env: dict[str, str], needle: str) -> None:
    path = tmp_path / "fleetgate.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    assert needle in str(info.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_config_env_var_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("gateway:\n  port: 1234\n")
    assert load_config(environ={"FLEETGATE_CONFIG": str(path)}).gateway.port == 1234


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "fleetgate.example.yaml"
    config = load_config(example, environ={})
    assert isinstance(config, Config)
