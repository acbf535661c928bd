"""An in-process measurement run in a subprocess and driven step by step: how a benchmark that times fleetgate's
code inside its own process (router_micro) measures another checkout's code next to this one's, interleaved.

The parent sends one JSON object per line on the worker's stdin and reads one JSON object per line back; the
worker's own prints go to its log. `serve(handle)` is the worker's side, `Worker` the parent's.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.procs import Child, start

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def serve(handle: Handler) -> int:
    """Answer each command line on stdin with `handle(command)` as one line on stdout, until stdin closes."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # anything else printed goes to the log, not into the replies
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = handle(json.loads(line))
        except Exception as exc:  # the parent reports it, with the worker's log
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(answer, default=str) + "\n")
        replies.flush()
    return 0


class WorkerError(RuntimeError):
    """A worker failed a command, died or did not answer in time."""


class Worker:
    """A worker process (`argv` runs `serve`), stopped by PID with its `Child`."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.child: Child = start(name, list(argv), log_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._buffer = b""

    @property
    def name(self) -> str:
        """What the worker measures (for messages)."""
        return self.child.name

    def call(self, command: Mapping[str, Any], timeout: float = 1800) -> dict[str, Any]:
        """Send `command`, wait for the answer; WorkerError if the worker failed it, died or took too long."""
        proc = self.child.proc
        assert proc.stdin is not None
        try:
            proc.stdin.write((json.dumps(command) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError as exc:
            raise WorkerError(f"{self.name} is gone; log {self.child.log_path}:\n{self.child.log_tail()}") from exc
        answer: dict[str, Any] = json.loads(self._readline(timeout))
        if "error" in answer:
            raise WorkerError(f"{self.name}: {answer['error']}; log {self.child.log_path}")
        return answer

    def _readline(self, timeout: float) -> bytes:
        proc = self.child.proc
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{self.name} did not answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                piece = os.read(fd, 65536)
                if not piece:
                    raise WorkerError(f"{self.name} exited; log {self.child.log_path}:\n{self.child.log_tail()}")
                self._buffer += piece
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def stop(self) -> None:
        """Close its stdin (it exits when it has read everything), then stop it by PID if it has not."""
        proc = self.child.proc
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)  # Child.stop below ends it either way
        if proc.stdout is not None:
            proc.stdout.close()
        self.child.stop()
