"""Convert a GGUF model to a Hugging Face folder vLLM can load (run by the vLLM environment's Python, offline).

Usage: python convert_gguf.py GGUF_FILE OUT_DIR DTYPE
transformers dequantizes the GGUF and rebuilds its tokenizer and chat template; the model is rebuilt from its
config without the GGUF quantization config, else vLLM would look for a GGUF loader it does not have.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    """Write OUT_DIR (config, tokenizer, safetensors weights) from GGUF_FILE."""
    gguf, out, dtype_name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    dtype = getattr(torch, dtype_name)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=dtype)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = dtype
    plain = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise SystemExit(f"weights do not match the config: missing {missing}, unexpected {unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    print(f"converted {gguf} -> {out}")


if __name__ == "__main__":
    main()
