"""Engine simulator: a vLLM-shaped engine model (scheduler, paged KV, prefix cache) behind real HTTP."""
