"""The embedded MongoDB-compatible server (SecantusDB) as a plain child process.

The demo, the benchmark and the tests start one when no MongoDB URL is given; this is the
one place that knows how. SecantusDB comes with the ``embedded`` extra.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from pymongo import MongoClient

__all__ = [
    "EmbeddedServerError",
    "server_url",
    "start_server",
    "stop_server",
    "wait_until_answering",
]

INSTALL_HINT = "pip install 'saga-coordinator[embedded]'"
_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(RuntimeError):
    """The server is not installed, or did not start."""


def _executable() -> str:
    found = shutil.which("secantusd-py", path=str(Path(sys.executable).parent)) or shutil.which(
        "secantusd-py"
    )
    if found is None:
        raise EmbeddedServerError(f"secantusd-py not found: install it with `{INSTALL_HINT}`")
    return found


def server_url(port: int) -> str:
    """The MongoDB URL of a server on ``127.0.0.1:port``."""
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def start_server(
    port: int,
    storage: str | Path = ":memory:",
    *,
    output: IO[bytes] | int = subprocess.DEVNULL,
    within: float = 30.0,
    replica_set: bool = False,
    new_session: bool = False,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a server on ``127.0.0.1:port`` and return once it answers ``ping``.

    ``storage`` is ``:memory:`` (gone when it stops) or a directory that survives restarts.
    The server is standalone, like the ``mongod`` of ``compose.yaml``: nothing here needs a
    replica set, and a standalone server keeps no oplog and no retryable-write records
    (both cost the embedded server CPU on every write). ``replica_set=True`` advertises a
    single-node replica set instead (change streams, retryable writes). ``new_session=True``
    starts it in a session of its own, out of reach of the terminal's Ctrl-C;
    ``die_with_parent=True`` has the kernel send it SIGTERM should this process die without
    stopping it (Linux; elsewhere a no-op).

    Raises:
        EmbeddedServerError: not installed, exited, or not answering ``within`` seconds.
    """
    proc = subprocess.Popen(
        [
            _executable(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(storage),
            *([] if replica_set else ["--standalone"]),
        ],
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=new_session,
        preexec_fn=_terminate_with_parent if die_with_parent else None,
    )
    try:
        wait_until_answering(server_url(port), proc, within=within)
    except BaseException:
        stop_server(proc)
        raise
    return proc


def _terminate_with_parent() -> None:
    """In the child, before ``exec``: SIGTERM when the parent dies (``PR_SET_PDEATHSIG``)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_until_answering(
    url: str, proc: subprocess.Popen[bytes] | None = None, *, within: float = 30.0
) -> None:
    """Poll ``ping`` on ``url`` until it answers.

    Raises:
        EmbeddedServerError: ``proc`` exited, or no answer ``within`` seconds.
    """
    client: MongoClient[dict[str, object]] = MongoClient(url, serverSelectionTimeoutMS=500)
    try:
        deadline = time.monotonic() + within
        while True:
            if proc is not None and proc.poll() is not None:
                raise EmbeddedServerError(
                    f"the MongoDB-compatible server exited ({proc.returncode})"
                )
            try:
                client.admin.command("ping")
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(f"{url} did not answer within {within}s") from exc
                time.sleep(0.1)
    finally:
        client.close()


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill if it does not stop within 10 seconds."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
