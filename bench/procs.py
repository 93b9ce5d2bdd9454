"""Process helpers: free ports, a throw-away SecantusDB, CPU and peak RSS from ``/proc``."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from coordinator.embedded import server_url, start_server

__all__ = ["cpu_seconds", "free_port", "peak_rss_mib", "start_secantus"]

_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


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
