"""CPU time of process trees and of the whole machine, and a process's memory, read from /proc."""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    return raw[raw.rindex(")") + 2 :].split()


def _all_stats() -> tuple[dict[int, list[str]], dict[int, list[int]]]:
    """Every process's stat fields, and the children of each pid."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                stats[int(entry.name)] = fields
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    return stats, children


def cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process tree (root and live descendants): `role` user+system, and
    `role.sys` system only."""
    # One pass over /proc for all trees: cheap enough to run right before and after each measured cell.
    stats, children = _all_stats()
    out: dict[str, float] = {}
    for role, root in roots.items():
        user = system = 0
        seen: set[int] = set()
        todo = [root]
        while todo:
            pid = todo.pop()
            if pid in seen or pid not in stats:
                continue
            seen.add(pid)
            # Fields 14 and 15 of proc_pid_stat(5), utime and stime; index 0 here is field 3.
            user += int(stats[pid][11])
            system += int(stats[pid][12])
            todo.extend(children.get(pid, []))
        out[role] = (user + system) / CLK_TCK
        out[f"{role}.sys"] = system / CLK_TCK
    return out


def machine_cpu() -> tuple[float, float]:
    """CPU seconds all CPUs were busy since boot (everything but idle and iowait), and the part of it spent in
    irq, softirq and steal, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, (irq + softirq + steal) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (everything but idle and iowait), from /proc/stat."""
    return machine_cpu()[0]


def own_cpu(children: bool = False) -> tuple[float, float]:
    """CPU seconds (user+system, system) of this process, plus its reaped children's with `children`."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    user, system = me.ru_utime, me.ru_stime
    if children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        user, system = user + kids.ru_utime, system + kids.ru_stime
    return user + system, system


def snapshot(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named tree, of this process (`client`) and of the machine (`machine`)."""
    total, system = own_cpu()
    return {**cpu_seconds(roots), "client": total, "client.sys": system, "machine": machine_busy_seconds()}


def memory_kb(pid: int) -> tuple[int, int] | None:
    """VmRSS and VmHWM of `pid` in kB, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
