"""Write a small random LoRA adapter for a Hugging Face model folder (run by the vLLM environment's Python).

Usage: python make_lora.py MODEL_DIR OUT_DIR SEED [RANK]
Weights are random and non-zero (`init_lora_weights=False`), seeded, so outputs visibly differ from the base and
the same seed always gives the same adapter.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def main() -> None:
    """Save a PEFT adapter (adapter_config.json + adapter_model.safetensors) to OUT_DIR."""
    base, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    rank = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out)
    print(f"adapter seed {seed} rank {rank} -> {out}")


if __name__ == "__main__":
    main()
