"""The demo, the README's first command, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

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
