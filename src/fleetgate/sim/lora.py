"""LoRA adapters the way vLLM serves them: any number registered, `max_loras` resident and per batch."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

from fleetgate.sim.protocol import SimApiError


@dataclass(frozen=True)
class Adapter:
    """One adapter registered through /v1/load_lora_adapter."""

    name: str
    path: str
    int_id: int


class LoraRegistry:
    """Registered adapters plus the resident set (vLLM's worker LRU cache of `max_cpu_loras`)."""

    def __init__(self, max_loras: int, max_cpu_loras: int | None = None) -> None:
        self.max_loras = max_loras
        self.capacity = max(max_cpu_loras or max_loras, max_loras)
        self.adapters: dict[str, Adapter] = {}
        self._resident: OrderedDict[str, None] = OrderedDict()
        self._ids = itertools.count(1)
        self.loads = 0

    @property
    def enabled(self) -> bool:
        """vLLM only serves adapters when started with --enable-lora (here: max_loras > 0)."""
        return self.max_loras > 0

    def resident(self) -> list[str]:
        """Resident adapter names, least recently used first."""
        return list(self._resident)

    def validate_load(self, name: str | None, path: str | None, load_inplace: bool) -> tuple[str, str]:
        """vLLM's _check_load_lora_adapter_request: both fields required, no silent reload."""
        if not self.enabled:
            raise SimApiError(400, "BadRequestError", "LoRA is not enabled (start with --max-loras > 0)")
        if not name or not path:
            raise SimApiError(400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")
        if not load_inplace and name in self.adapters:
            raise SimApiError(
                400,
                "InvalidUserInput",
                f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
                "set 'load_inplace' to True.",
            )
        return name, path

    def register(self, name: str, path: str) -> Adapter:
        """Record a loaded adapter (the caller has already paid the load time) and make it resident."""
        old = self.adapters.get(name)
        adapter = Adapter(name, path, old.int_id if old else next(self._ids))
        self.adapters[name] = adapter
        self.make_resident(name)
        return adapter

    def unregister(self, name: str | None) -> None:
        """vLLM's unload: 400 without a name, 404 for an unknown one."""
        if not name:
            raise SimApiError(400, "InvalidUserInput", "'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.adapters:
            raise SimApiError(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
        del self.adapters[name]
        self._resident.pop(name, None)

    def is_resident(self, name: str) -> bool:
        """True if using the adapter costs no load time."""
        return name in self._resident

    def make_resident(self, name: str) -> list[str]:
        """Load into the resident set (LRU), evicting the least recently used beyond capacity."""
        if name in self._resident:
            self._resident.move_to_end(name)
            return []
        self.loads += 1
        self._resident[name] = None
        evicted: list[str] = []
        while len(self._resident) > self.capacity:
            evicted.append(self._resident.popitem(last=False)[0])
        return evicted
