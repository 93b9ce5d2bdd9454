"""Process helpers: free ports, a throw-away SecantusDB, CPU and peak RSS from ``/proc``."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from coordinator.embedded import server_url, start_server

__all__ = [
    "broker_pid",
    "cpu_seconds",
    "free_port",
    "machine_busy_seconds",
    "peak_rss_mib",
    "start_secantus",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (``state`` is field 0)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far, all CPUs together (``/proc/stat``).

    user + nice + system + irq + softirq + steal: everything but idle and iowait (guest time
    is already counted in user).
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def broker_pid() -> int | None:
    """The local RabbitMQ server's pid: the oldest ``beam.smp`` running ``rabbit``, or None."""
    found: list[tuple[int, int]] = []  # (start time in ticks, pid)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "beam.smp":
                continue
            if b"rabbit" not in (proc / "cmdline").read_bytes():
                continue
            started = int(_stat_fields(proc.name)[19])
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append((started, int(proc.name)))
    return min(found)[1] if found else None


def peak_rss_mib(pid: int) -> float:
    """The peak resident set size (``VmHWM``) of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_secantus() -> tuple[subprocess.Popen[bytes], str]:
    """A SecantusDB on a free port, in memory; returns the process and its URL."""
    port = free_port()
    return start_server(port), server_url(port)
