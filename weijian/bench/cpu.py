"""Where the cores went during a measurement: CPU seconds per party, read from /proc.

On a machine where the publisher, the broker, the ingest and PostgreSQL share two cores, the
throughput is decided by how many CPU microseconds each message costs each of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnapshot:
    # party → pid → CPU seconds so far
    parties: dict[str, dict[int, float]]
    machine_busy: float
    machine_total: float


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name may hold spaces; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def pids_named(name: str) -> list[int]:
    """Processes whose command name is exactly `name` (e.g. the broker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
    return found


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[:8])
    busy = user + nice + system + irq + softirq + steal
    return busy / _TICK, (busy + idle + iowait) / _TICK


def snapshot(parties: Mapping[str, Callable[[], list[int]]]) -> CpuSnapshot:
    """CPU seconds so far of every party (each a function listing its current processes)."""
    used = {name: {pid: process_cpu_s(pid) for pid in pids()} for name, pids in parties.items()}
    busy, total = _machine()
    return CpuSnapshot(used, busy, total)


def breakdown(
    before: CpuSnapshot, after: CpuSnapshot, per: Mapping[str, float]
) -> dict[str, object]:
    """CPU seconds of each party between two snapshots, the rest of the machine as `other`,
    and microseconds per unit of work (`per`: party → messages it handled).

    Counted per process: one that appeared in between counts whole (it is new), one that
    exited in between is missing its last stretch."""
    seconds = {
        name: sum(used - before.parties.get(name, {}).get(pid, 0.0) for pid, used in pids.items())
        for name, pids in after.parties.items()
    }
    busy = after.machine_busy - before.machine_busy
    total = after.machine_total - before.machine_total
    seconds["other"] = max(0.0, busy - sum(seconds.values()))
    return {
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "machine_busy_pct": round(100 * busy / total, 1) if total else None,
        "us_per_message": {
            name: round(seconds[name] / count * 1e6, 1)
            for name, count in per.items()
            if count and name in seconds
        },
    }
