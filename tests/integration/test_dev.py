"""``saga-coordinator dev`` (SPEC §7) run as a user runs it, and the fast failure of
``register`` and ``run`` when no MongoDB answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration

ORDER = {
    "definition": "order-fulfillment",
    "key": "o-dev-1",
    "input": {
        "order_id": "o-dev-1",
        "items": [{"sku": "BOOK-42", "qty": 1}],
        "total": 42.5,
        "card": "4000-0000-0000-0002",
        "address": "1 Main St",
    },
}


class Dev:
    """One ``python -m coordinator dev`` process and what it printed."""

    def __init__(self, tmp_path: Path, amqp_url: str, prefix: str, *args: str, **env: str):
        self.port = free_port()
        self.out = tmp_path / f"dev-{time.monotonic_ns()}.out"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coordinator", "dev", "--port", str(self.port), *args],
                cwd=ROOT,
                env={
                    **environ,
                    "SAGA_AMQP_URL": amqp_url,
                    "SAGA_EXCHANGE_PREFIX": prefix,
                    "SAGA_SHUTDOWN_GRACE": "3",
                    **env,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_running(self, within: float = 90.0) -> str:
        deadline = time.monotonic() + within
        while "Ctrl-C stops everything." not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"dev did not come up:\n{self.output()[-4000:]}")
            time.sleep(0.2)
        return self.output()

    def children(self) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def interrupt(self, within: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"dev ignored SIGINT:\n{self.output()[-4000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_status(url: str, saga_id: str, status: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while (now := httpx.get(f"{url}/v1/sagas/{saga_id}").json()["status"]) != status:
        assert time.monotonic() < deadline, f"saga {saga_id} is {now}, not {status}"
        time.sleep(0.2)


@pytest.fixture
def cleanup_topology(amqp_url: str, prefix: str) -> object:
    """Delete the test's exchanges and queues at the end (dev declares them)."""
    yield None
    import asyncio

    import aio_pika

    from tests.integration.helpers import Broker

    async def delete() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            broker = Broker(await connection.channel(), prefix)
            await broker.delete_topology(
                f"{prefix}.{name}.commands"
                for name in ("inventory", "risk", "payments", "shipping", "flights", "hotels")
            )

    asyncio.run(delete())


def test_dev_runs_the_examples_keeps_its_data_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, amqp_url: str, prefix: str, cleanup_topology: object
) -> None:
    data = tmp_path / "data"
    db_port = free_port()
    args = ("--examples", "--data-dir", str(data), "--db-port", str(db_port))
    dev = Dev(tmp_path, amqp_url, prefix, *args)
    try:
        banner = dev.wait_running()
        for path in ("/v1/sagas", "/docs", "/openapi.json", "/ui", "/metrics"):
            assert f"{dev.url}{path}" in banner
        assert f"export SAGA_MONGODB_URL='mongodb://127.0.0.1:{db_port}/" in banner
        assert f"export SAGA_API_URL={dev.url}" in banner
        assert "examples     inventory, risk, payments, shipping, flights, hotels" in banner
        for path in ("/openapi.json", "/docs", "/metrics", "/readyz", "/ui"):
            assert httpx.get(f"{dev.url}{path}").status_code == 200, path

        started = httpx.post(f"{dev.url}/v1/sagas", json=ORDER)
        assert started.status_code == 201, started.text
        saga_id = started.json()["id"]
        wait_status(dev.url, saga_id, "compensated")  # the example payments declines the card
        large = {**ORDER["input"], "order_id": "o-dev-2", "total": 1500, "card": "4242"}
        reviewed = httpx.post(
            f"{dev.url}/v1/sagas",
            json={"definition": "order-fulfillment", "key": "o-dev-2", "input": large},
        )
        assert reviewed.status_code == 201, reviewed.text
        wait_status(dev.url, reviewed.json()["id"], "completed")  # reviewed by the example risk
        steps = httpx.get(f"{dev.url}/v1/sagas/{reviewed.json()['id']}").json()["steps"]
        assert [step["status"] for step in steps if step["name"] == "fraud-review"] == ["succeeded"]

        children = dev.children()
        assert len(children) == 1, children  # the database server
        assert dev.interrupt() == 0, dev.output()[-4000:]
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
        assert (data / "db").is_dir()
    finally:
        dev.kill()

    again = Dev(tmp_path, amqp_url, prefix, *args)
    try:
        again.wait_running()
        kept = httpx.get(f"{again.url}/v1/sagas/{saga_id}")
        assert kept.status_code == 200 and kept.json()["status"] == "compensated"

        second = Dev(tmp_path, amqp_url, prefix, *args)  # the same data folder
        try:
            assert second.proc.wait(60) == 1
        finally:
            second.kill()
        assert f"{data}/ is in use by another `saga-coordinator dev`" in second.output()
        assert again.interrupt() == 0
    finally:
        again.kill()


def test_the_database_server_does_not_outlive_a_killed_dev(
    tmp_path: Path, amqp_url: str, prefix: str, cleanup_topology: object
) -> None:
    dev = Dev(
        tmp_path,
        amqp_url,
        prefix,
        "--data-dir",
        str(tmp_path / "data"),
        "--db-port",
        str(free_port()),
    )
    try:
        dev.wait_running()
        children = dev.children()
        assert len(children) == 1
    finally:
        dev.kill()  # SIGKILL: no chance to stop its child itself
    deadline = time.monotonic() + 30
    while Path(f"/proc/{children[0]}").exists():
        assert time.monotonic() < deadline, "the database server outlived dev"
        time.sleep(0.1)


def test_dev_uses_the_mongodb_of_saga_mongodb_url(
    tmp_path: Path,
    amqp_url: str,
    mongodb_url: str,
    prefix: str,
    database_name: str,
    cleanup_topology: object,
) -> None:
    dev = Dev(
        tmp_path,
        amqp_url,
        prefix,
        "--data-dir",
        str(tmp_path / "unused"),
        SAGA_MONGODB_URL=mongodb_url,
        SAGA_MONGODB_DATABASE=database_name,
    )
    try:
        banner = dev.wait_running()
        assert "starting the embedded database" not in banner
        assert dev.children() == []
        assert not (tmp_path / "unused").exists()
        assert httpx.get(f"{dev.url}/readyz").status_code == 200
        assert dev.interrupt() == 0
    finally:
        dev.kill()


@pytest.mark.parametrize("command", [["register", "schemas/order-fulfillment.yaml"], ["run"]])
def test_register_and_run_fail_fast_with_a_hint_when_no_mongodb_answers(
    command: list[str],
) -> None:
    port = free_port()  # nothing listens there
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", *command],
        cwd=ROOT,
        env={**environ, "SAGA_MONGODB_URL": f"mongodb://127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=25,  # PyMongo alone would wait 30 s before failing
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"no MongoDB at 127.0.0.1:{port}: start one, or run `saga-coordinator dev` and point "
        "SAGA_MONGODB_URL at the server it prints"
    )
