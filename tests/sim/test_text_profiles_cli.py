"""The tokenizer and seeded text, profile loading, and the Typer command's registration."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fleetgate.cli import sim as sim_cli
from fleetgate.domain.errors import ConfigError
from fleetgate.sim.profiles import load_profile, shipped_profiles
from fleetgate.sim.text import TextGenerator, encode, render_chat, seed_for, split_pieces


def test_tokenizer_is_deterministic_and_about_four_characters_a_token() -> None:
    text = "The quick brown fox jumps over the lazy dog, 12345 times.\n\nAgain!"
    assert encode(text) == encode(text)
    assert split_pieces(text)[:4] == ["The", " quic", "k", " brow"]
    assert 2.5 <= len(text) / len(split_pieces(text)) <= 5
    assert "".join(split_pieces(text)) == text  # lossless


def test_chat_template_marks_are_single_tokens() -> None:
    prompt = render_chat([{"role": "user", "content": "hi"}])
    expected = ["<|im_start|>", "user", "\n", "hi", "<|im_end|>", "\n", "<|im_start|>", "assi", "stan", "t", "\n"]
    assert split_pieces(prompt) == expected
    assert encode(prompt)[0] == 1  # the special id, not a hash


def test_generated_text_is_seeded_and_retokenizes_to_its_length() -> None:
    def say(seed: int) -> str:
        gen = TextGenerator(seed, 20, 20)
        return "".join(gen.next_piece() for _ in range(gen.natural_length))

    assert say(5) == say(5) != say(6)
    assert len(split_pieces(say(5))) == 20
    assert seed_for([1, 2, 3], None, None) == seed_for([1, 2, 3], None, None) != seed_for([1, 2, 4], None, None)
    assert seed_for([1], 9, None) != seed_for([1], 9, "adapter")


def test_shipped_profiles_load_and_errors_name_the_field(tmp_path: Path) -> None:
    assert {"h100-llama3-8b", "smollm2-llamacpp-local"} <= set(shipped_profiles())
    h100 = load_profile("h100-llama3-8b")
    assert h100.step_seconds(prefill_tokens=0, decode_seqs=10, context_tokens=3000) == pytest.approx(0.00708)
    local = load_profile("smollm2-llamacpp-local")
    assert local.max_num_seqs == 2 and local.prefill_tokens_per_s > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprefill_tokens_per_s: -1\ndecode_base_ms: 1\n")
    with pytest.raises(ConfigError, match="prefill_tokens_per_s"):
        load_profile(bad)
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("no-such-profile")
    assert h100.with_overrides(kv_blocks=7, max_loras=None).kv_blocks == 7


def test_fault_overrides_keep_the_profiles_other_faults(tmp_path: Path) -> None:
    path = tmp_path / "faulty.yaml"
    path.write_text("name: f\nprefill_tokens_per_s: 1000\ndecode_base_ms: 1\nfaults: {error_rate: 0.5, latency_s: 2}\n")
    faulty = load_profile(path).with_faults(latency_s=None, hang_rate=0.25, crash_after=3)
    assert (faulty.faults.error_rate, faulty.faults.latency_s) == (0.5, 2.0)  # kept: not given, or None
    assert (faulty.faults.hang_rate, faulty.faults.crash_after) == (0.25, 3)
    with pytest.raises(ConfigError, match=r"faults\.error_rate"):
        faulty.with_faults(error_rate=2.0)


def test_register_adds_the_sim_engine_command() -> None:
    app = typer.Typer()
    app.command("noop")(lambda: None)  # a second command keeps Typer in multi-command mode
    sim_cli.register(app)
    result = CliRunner().invoke(app, ["sim-engine", "--help"])
    assert result.exit_code == 0 and "--time-scale" in result.output and "--kv-blocks" in result.output
    bad = CliRunner().invoke(app, ["sim-engine", "--profile", "no-such-profile"])
    assert bad.exit_code == 2
