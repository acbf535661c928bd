"""Where a loaded gateway spends its CPU: py-spy samples `fleetgate up` under closed-loop load, summarised by function.

Run from the repo root, e.g. `.venv/bin/python bench/profile_gateway.py --mode fleetgate-redis --concurrency 32`.
It starts the fake engine and one gateway exactly as bench/overhead.py does (fresh state dir, demo tenant limits
set through the admin API), loads it for `--duration` seconds while `py-spy record --nonblocking` samples it, then
prints the top functions by own time and by inclusive time. Numbers under a sampler are not benchmark numbers.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import redis_keys, runner
from harness.engines import start_fake_engine
from harness.keys import DEMO_KEY
from harness.loadgen import Target, run_cell
from harness.procs import Children, StartError
from overhead_report import EXPECTED_CHUNKS
from overhead_targets import GATEWAY_MODES, ROLE_OF, configure_limits, start_mode

console = runner.console()
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


@dataclass
class Profile:
    """Sample counts: by own (leaf) frame, by frame anywhere on the stack, and in total."""

    own: Counter[str]
    inclusive: Counter[str]
    total: int


def frame_name(frame: str) -> str:
    """`func (path/to/module.py:12)` -> `func (module/path tail)`, without the line, so a function is one entry."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def parse_collapsed(text: str) -> Profile:
    """Read py-spy's `--format raw` output (collapsed stacks: `a;b;c count`)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    return Profile(own, inclusive, total)


def print_profile(profile: Profile, top: int, focus: str) -> None:
    """Top functions by own time, then by inclusive time among those whose name contains `focus`."""
    console.print(f"{profile.total} samples with the gateway on CPU")
    console.print(f"[bold]top {top} by own time[/]")
    for name, n in profile.own.most_common(top):
        console.print(f"  {n / profile.total:6.1%}  {name}")
    console.print(f"[bold]top {top} by inclusive time ({focus!r} frames)[/]")
    shown = [(name, n) for name, n in profile.inclusive.most_common() if focus in name][:top]
    for name, n in shown:
        console.print(f"  {n / profile.total:6.1%}  {name}")


async def load(target: Target, concurrency: int, stream: bool, seconds: float) -> None:
    """Closed-loop load on the gateway for `seconds`; print what it did."""
    await target.open(concurrency)
    try:
        cell = await run_cell(target, concurrency, stream, seconds, EXPECTED_CHUNKS)
    finally:
        await target.close()
    summ = cell.summary()
    console.print(
        f"load: {cell.rps:.0f} req/s, p50 {summ['p50_ms']:.2f} ms, errors {cell.errors} {cell.error_kinds or ''}"
        " (under the sampler)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--mode", choices=GATEWAY_MODES, default="fleetgate")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--stream", action="store_true", help="streamed requests (default: whole answers)")
    p.add_argument("--duration", type=int, default=20, help="seconds sampled (default 20)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    p.add_argument("--redis-url", default=redis_keys.DEFAULT_REDIS_URL)
    p.add_argument("--out", type=Path, default=None, help="keep the collapsed stacks here")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--focus", default="", help="only frames containing this in the inclusive list (e.g. fleetgate)")
    return p.parse_args(argv)


def sample(a: argparse.Namespace, spy: Path, workdir: Path, out: Path) -> str | None:
    """Start the fake engine and the gateway, load it while py-spy samples it; what went wrong, or None."""
    tenant_id = ""
    try:
        with Children() as children:
            upstream, upstream_port = start_fake_engine(workdir)
            children.add(upstream)
            gateway = start_mode(workdir, upstream_port, a.mode, a.redis_url)
            children.add(gateway.child)
            tenant_id, _ = configure_limits(gateway.url)
            target = Target(a.mode, gateway.url, DEMO_KEY, ROLE_OF[a.mode])
            runner.run_async(load(target, a.concurrency, a.stream, 2.0))  # warm-up
            args = [str(spy), "record", "--pid", str(gateway.pid), "--duration", str(a.duration)]
            args += ["--rate", str(a.rate), "--nonblocking", "--format", "raw", "--output", str(out)]
            sampler = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                runner.run_async(load(target, a.concurrency, a.stream, a.duration + 1.0))
            finally:
                try:
                    _, err = sampler.communicate(timeout=a.duration + 30)
                except subprocess.TimeoutExpired:
                    sampler.kill()
                    _, err = sampler.communicate()
    except (StartError, RuntimeError) as exc:
        return f"[bold red]error:[/] {exc}"
    finally:
        if tenant_id and a.mode == "fleetgate-redis":
            redis_keys.drop_keys(a.redis_url, tenant_id)
    if sampler.returncode != 0 or not out.exists():
        return f"[red]py-spy failed ({sampler.returncode}): {err.strip()[-500:]}[/]"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Start, load and sample one gateway; print and keep the profile."""
    a = parse_args(argv)
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        console.print("[red]no py-spy next to this Python[/]")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="fleetgate-profile-"))
    out = a.out or workdir / "profile.txt"
    problem = sample(a, spy, workdir, out)
    if problem is not None:
        console.print(problem)
        return 1
    print_profile(parse_collapsed(out.read_text()), a.top, a.focus)
    if a.out is not None:
        console.print(f"collapsed stacks: {out}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
