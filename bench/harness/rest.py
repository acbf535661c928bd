"""Blocking JSON calls to 127.0.0.1 (set-up and checks, never the measured load) and Prometheus text."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

_LABEL = re.compile(r'(\w+)="([^"]*)"')


def call(method: str, url: str, body: Any = None, *, key: str | None = None, timeout: float = 30) -> tuple[int, bytes]:
    """One request with a JSON body (if any) and a bearer key (if any); (status, body), also for an HTTP error."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if key:
        request.add_header("authorization", f"Bearer {key}")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def post_json(url: str, body: Any, timeout: float = 60) -> Any:
    """POST `body`, return the decoded answer; RuntimeError unless it is a 200."""
    status, data = call("POST", url, body, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"POST {url} answered HTTP {status}: {data[:200]!r}")
    return json.loads(data)


def metrics_text(url: str, key: str | None = None, timeout: float = 10) -> str | None:
    """The Prometheus text of `url` (a /metrics URL), or None unless it answers 200."""
    status, data = call("GET", url, key=key, timeout=timeout)
    return data.decode() if status == 200 else None


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of the metric `name` in Prometheus text: (labels, value)."""
    out: list[tuple[dict[str, str], float]] = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest.startswith("{"):
            labels, _, value = rest[1:].rpartition("}")
            out.append((dict(_LABEL.findall(labels)), float(value.split()[0])))
        elif rest.startswith(" "):
            out.append(({}, float(rest.split()[0])))
    return out


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for have, v in samples(text, name) if all(have.get(k) == x for k, x in labels.items()))
