"""The engine dialects fleetgate speaks: what a replica runs, as config, discovery and routing name it."""

from __future__ import annotations

from typing import Literal

EngineKind = Literal["llamacpp", "vllm", "sglang", "openai"]
