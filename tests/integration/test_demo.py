"""The demo, the README's first command, run as a user runs it."""

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


def test_demo_runs_every_sample_saga_to_its_expected_end(mongodb_url: str, amqp_url: str) -> None:
    env = {**os.environ, "SAGA_AMQP_URL": amqp_url}
    # With SAGA_MONGODB_URL set the demo uses that server (in its own database) instead
    # of starting one; without it, it starts the embedded one itself: test that path.
    env.pop("SAGA_MONGODB_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "6 of 6 sample sagas ended as expected" in out
    assert out.count("✓ ") == 6 and "✗ " not in out
    assert "compensation.succeeded        book-hotel compensation" in out
    assert "action.retry_scheduled        charge-payment action #2" in out
    # Streamed: the quick sagas' timelines come first, then what the demo waits for (the
    # hotel that never confirms in time), then that saga's timeline.
    first = out.index("✓ an order that completes")
    waiting = out.index("… waiting for 1 saga: t-")
    slow = out.index("✓ a hotel that never confirms in time")
    assert first < waiting < slow
    assert "awaiting its reply" in out[waiting:slow]
    # No URL of a service that is gone once the demo has exited.
    assert "http://" not in out
    assert "saga-coordinator demo --keep" in out


def test_demo_keep_leaves_the_service_running_until_ctrl_c(
    mongodb_url: str, amqp_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SAGA_AMQP_URL": amqp_url,
        "SAGA_MONGODB_URL": mongodb_url,
        "SAGA_HTTP_PORT": str(port),
    }
    out_path = tmp_path / "demo.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "demo", "--keep"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 150
        while "Ctrl-C stops it" not in out_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.2)
        text = out_path.read_text()
        assert "6 of 6 sample sagas ended as expected" in text
        for path in ("/v1/sagas", "/docs", "/openapi.json", "/ui", "/metrics"):
            assert f"http://127.0.0.1:{port}{path}" in text
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/sagas").json()["items"]
        assert len(listed) == 6
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, out_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_demo_says_how_to_start_rabbitmq_when_it_is_unreachable() -> None:
    env = {**os.environ, "SAGA_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"}
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "RabbitMQ is not reachable at 127.0.0.1:1" in done.stderr
    assert "rabbitmq-server -detached" in done.stderr
