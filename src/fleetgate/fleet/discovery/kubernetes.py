"""Replicas from Kubernetes: the Running and Ready pods matching a label selector, via the core v1 REST API.

What a pod tells us (all optional but the port):
- port: the container port named `port_name` (or `port_name` itself when it is a number);
- label or annotation `fleetgate.io/engine`: llamacpp | vllm | sglang | openai (default: `default_kind`);
- annotation `fleetgate.io/models`: comma-separated served model names (empty: ask the engine's /v1/models);
- annotation `fleetgate.io/adapters`: comma-separated LoRA adapters fixed at start (llama.cpp `--lora`);
- label or annotation `fleetgate.io/gpu-type`: the GPU kind, for cost by `gpu_type` (default `unknown`);
- annotation `fleetgate.io/scheme`: http (default) or https;
- annotation `fleetgate.io/path-prefix`: a path the engine is served under (e.g. `/engine`), joined to every path.

An engine key (vLLM `--api-key`) is the discovery's `api_key`, the same for every pod it finds.
"""

from __future__ import annotations

import builtins
import os
import ssl
from pathlib import Path
from typing import Any, cast, get_args

import aiohttp
import orjson

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.fleet.discovery.base import DiscoveryError, ReplicaSpec

PREFIX = "fleetgate.io/"
ENGINE_KEY = PREFIX + "engine"
MODELS_KEY = PREFIX + "models"
ADAPTERS_KEY = PREFIX + "adapters"
GPU_KEY = PREFIX + "gpu-type"
SCHEME_KEY = PREFIX + "scheme"
PATH_PREFIX_KEY = PREFIX + "path-prefix"
_KINDS: tuple[str, ...] = get_args(EngineKind)
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _csv(value: str | None) -> frozenset[str]:
    return frozenset(p.strip() for p in (value or "").split(",") if p.strip())


def _ready(pod: dict[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False  # terminating: it still reports Ready for a while, but must take no new requests
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _port(pod: dict[str, Any], port_name: str) -> int | None:
    if port_name.isdigit():
        return int(port_name)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == port_name and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return None


class KubernetesDiscovery:
    """Lists pods in one namespace by label selector; pages through large lists with `limit`/`continue`."""

    def __init__(
        self,
        api_base_url: str,
        namespace: str,
        label_selector: str,
        port_name: str = "http",
        token: str | None = None,
        *,
        token_file: Path | None = None,
        ca_file: Path | None = None,
        default_kind: EngineKind = "vllm",
        timeout: float = 5.0,
        page_size: int = 500,
        api_key: str | None = None,
    ) -> None:
        self._base = api_base_url.rstrip("/")
        self.namespace = namespace
        self.label_selector = label_selector
        self.port_name = port_name
        self._token = token
        self._token_file = token_file
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self._default_kind = default_kind
        self._timeout = timeout
        self._page_size = page_size
        self._engine_key = api_key
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def in_cluster(
        cls, label_selector: str, port_name: str = "http", namespace: str | None = None
    ) -> KubernetesDiscovery:
        """Configured from the pod's service account (the API server's address comes from the environment)."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise DiscoveryError("not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST is not set")
        if namespace is None:
            namespace = (SERVICE_ACCOUNT / "namespace").read_text().strip()
        host = f"[{host}]" if ":" in host else host
        return cls(
            f"https://{host}:{port}",
            namespace,
            label_selector,
            port_name,
            token_file=SERVICE_ACCOUNT / "token",  # projected tokens rotate: read it on every call
            ca_file=SERVICE_ACCOUNT / "ca.crt",
        )

    def _headers(self) -> dict[str, str]:
        token = self._token_file.read_text().strip() if self._token_file is not None else self._token
        headers = {"accept": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        return headers

    async def _page(self, cont: str | None) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        params = {"labelSelector": self.label_selector, "limit": str(self._page_size)}
        if cont:
            params["continue"] = cont
        url = f"{self._base}/api/v1/namespaces/{self.namespace}/pods"
        try:
            async with self._session.get(url, params=params, headers=self._headers(), ssl=self._ssl) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise DiscoveryError(f"GET {url} answered {resp.status}: {body[:200].decode(errors='replace')}")
                data = orjson.loads(body)
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            raise DiscoveryError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict) or data.get("kind") != "PodList":
            raise DiscoveryError(f"GET {url} did not return a PodList")
        return data

    async def list(self) -> builtins.list[ReplicaSpec]:
        """Running, Ready, not terminating pods with the named port, as replica specs."""
        specs: builtins.list[ReplicaSpec] = []
        cont: str | None = None
        while True:
            page = await self._page(cont)
            for pod in page.get("items") or []:
                spec = self._spec(pod)
                if spec is not None:
                    specs.append(spec)
            cont = (page.get("metadata") or {}).get("continue") or None
            if cont is None:
                return specs

    def _spec(self, pod: dict[str, Any]) -> ReplicaSpec | None:
        if not _ready(pod):
            return None
        port = _port(pod, self.port_name)
        if port is None:
            return None
        meta = pod.get("metadata") or {}
        labels: dict[str, str] = dict(meta.get("labels") or {})
        notes: dict[str, str] = dict(meta.get("annotations") or {})
        kind = labels.get(ENGINE_KEY) or notes.get(ENGINE_KEY) or self._default_kind
        if kind not in _KINDS:
            kind = "openai"  # unknown engine: plain OpenAI-compatible HTTP still works
        ip = pod["status"]["podIP"]
        host = f"[{ip}]" if ":" in ip else ip
        scheme = "https" if notes.get(SCHEME_KEY) == "https" else "http"
        prefix = "/" + notes.get(PATH_PREFIX_KEY, "").strip().strip("/")
        return ReplicaSpec(
            id=str(meta.get("name")),
            url=f"{scheme}://{host}:{port}{prefix.rstrip('/')}",
            kind=cast(EngineKind, kind),  # checked against EngineKind's values above
            models=_csv(notes.get(MODELS_KEY)),
            gpu_type=labels.get(GPU_KEY) or notes.get(GPU_KEY) or "unknown",
            adapters=_csv(notes.get(ADAPTERS_KEY)),
            labels=labels,
            api_key=self._engine_key,
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
