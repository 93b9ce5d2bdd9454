"""RabbitMQ nodes of the test's own: started, stopped, killed and clustered by the test.

Each node is a separate ``rabbitmq-server`` process with its own node name
(``fault<N>-<uuid>@localhost``), AMQP port, distribution port, data and log directories, an
empty plugin list and a config file of its own, so nothing of the machine's broker (node
``rabbit@<host>`` on 5672, its ``/etc/rabbitmq`` files) is read or touched. The nodes of one
test share a ``HOME`` directory and so one Erlang cookie (``$HOME/.erlang.cookie``, written
by the test): ``rabbitmqctl`` runs with the same ``HOME`` and always with ``-n <node>``.

Debian installs ``/usr/sbin/rabbitmq-server`` as a wrapper that switches to the
``rabbitmq`` user and its home; the scripts behind it (``/usr/lib/rabbitmq/bin``) are used
instead, so the node runs as the test's user with the test's ``HOME``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import free_port

WRAPPER = "rabbitmq-script-wrapper"


def sbin(tool: str) -> Path | None:
    """The real ``rabbitmq-server`` / ``rabbitmqctl`` script, past Debian's wrapper."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/lib/rabbitmq/bin")
    if found is None:
        return None
    real = Path(found).resolve()
    if real.name == WRAPPER:
        behind = real.parent / tool
        return behind if behind.exists() else None
    return Path(found)


def tools() -> tuple[Path, Path]:
    """``(rabbitmq-server, rabbitmqctl)``, or skip the test saying what is missing."""
    server, ctl = sbin("rabbitmq-server"), sbin("rabbitmqctl")
    if server is None or ctl is None:
        pytest.skip("rabbitmq-server is not installed: the fault tests start nodes of their own")
    return server, ctl


def amqp_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return bool(sock.recv(8))
    except OSError:
        return False


class RabbitNode:
    """One RabbitMQ node on ports of its own, under ``base``."""

    def __init__(self, base: Path, home: Path, index: int) -> None:
        self.server, self.ctl_path = tools()
        self.name = f"fault{index}-{uuid.uuid4().hex[:8]}@localhost"
        assert not self.name.startswith("rabbit@")
        self.port = free_port()
        self.dist_port = free_port()
        self.base = base / f"node{index}"
        self.base.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.log_path = self.base / "server.out"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "log.console = false\n"
            "log.file.level = info\n"
            # The machine's free disk space must not block publishers in a test.
            "disk_free_limit.absolute = 10MB\n"
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def env(self) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Where the node and its CLI write a crash dump: never the working directory.
            "ERL_CRASH_DUMP": str(self.base / "erl_crash.dump"),
        }

    def start(self) -> RabbitNode:
        """Start the node in the background (``wait_ready`` waits for it)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.server)],
                cwd=self.base,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """``rabbitmqctl -n <this node> *args``; fail the test (with output) if it fails."""
        done = subprocess.run(
            [str(self.ctl_path), "-n", self.name, *args],
            env=self.env,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"rabbitmqctl -n {self.name} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}\n{self.log()[-3000:]}"
            )
        return done.stdout

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, within: float = 90.0) -> None:
        """Until the node booted (``await_startup``) and its AMQP port answers."""
        deadline = time.monotonic() + within
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node {self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
                )
            remaining = max(1.0, deadline - time.monotonic())
            done = subprocess.run(
                [str(self.ctl_path), "-n", self.name, "await_startup", "--timeout", "5"],
                env=self.env,
                cwd=self.base,
                capture_output=True,
                text=True,
                timeout=remaining + 30,
            )
            if done.returncode == 0 and amqp_answers(self.port):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"node {self.name} not ready:\n{self.log()[-4000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """A clean stop of the whole node (``rabbitmqctl stop``), and wait for the process."""
        self.ctl("stop", timeout=120)
        assert self.proc is not None
        self.proc.wait(60)

    def kill(self) -> None:
        """``kill -9`` of the node's process group."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop_now(self) -> None:
        """Teardown: the node is gone afterwards, whatever happened."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.ctl("stop", timeout=60, check=False)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()


def cookie_home(base: Path) -> Path:
    """A ``HOME`` with an Erlang cookie of its own, shared by one test's nodes and CLI."""
    home = base / "home"
    home.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(20))
    cookie.chmod(0o400)
    return home


def join(node: RabbitNode, seed: RabbitNode) -> None:
    """Make ``node`` a member of ``seed``'s cluster (``rabbitmqctl join_cluster``)."""
    node.ctl("stop_app")
    node.ctl("join_cluster", seed.name)
    node.ctl("start_app")
    node.wait_ready()


def own_node(base: Path) -> Iterator[RabbitNode]:
    """For a fixture: one node under ``base``, ready; stopped at the end whatever happens."""
    node = RabbitNode(base, cookie_home(base), 0)
    try:
        node.start().wait_ready()
        yield node
    finally:
        node.stop_now()


def own_cluster(base: Path, size: int = 3) -> Iterator[list[RabbitNode]]:
    """For a fixture: ``size`` nodes clustered with ``join_cluster``; all stopped at the end."""
    home = cookie_home(base)
    nodes = [RabbitNode(base, home, index) for index in range(size)]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        for node in nodes[1:]:
            join(node, nodes[0])
        status = nodes[0].ctl("cluster_status", "--formatter", "json")
        for node in nodes:
            assert status.count(node.name) >= 2, status  # a disk node, and running
        yield nodes
    finally:
        for node in nodes:
            node.stop_now()
