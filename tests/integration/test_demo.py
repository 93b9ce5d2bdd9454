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
    assert "8 of 8 sample sagas ended as expected" in out
    assert out.count("✓ ") == 8 and "✗ " not in out

    small = block(out, "an order under 1000")
    assert "step.skipped                  fraud-review" in small and "→ completed" in small
    assert "fraud-review action" not in small
    large = block(out, "an order of 1500")
    assert "action.succeeded              fraud-review action #1" in large
    assert "→ completed" in large
    flaky = block(out, "a card that fails once")
    assert "action.retry_scheduled        charge-payment action #2" in flaky
    declined = block(out, "a declined card")
    assert "compensation.succeeded        reserve-stock compensation #1" in declined

    waited = block(out, "a trip: its payment authorized while it waits")
    key = waited.split("key=")[1].split()[0]
    assert out.index(f"{key} waits for payment.authorized: publishing it") < out.index(waited)
    assert_in_order(
        waited,
        "await.waiting                 payment-authorized",
        "event.received                payment-authorized action #1",
        "group.started                 book-travel",
        "group.succeeded               book-travel",
        "saga.completed",
    )
    early = block(out, "a trip whose payment was authorized before it was requested")
    key = early.split("key=")[1].split()[0]
    kept = f"published payment.authorized for {key} before its trip is requested: kept by"
    assert out.index(kept) < out.index(early)
    assert f"payment.authorized, message au-{key}" in " ".join(early.split())
    assert "→ completed" in early

    full = block(out, "a trip whose hotel is full")
    assert_in_order(
        full,
        "group.failed                  book-travel",
        "compensation.succeeded        book-flight compensation",
        "compensation.succeeded        charge-payment compensation",
        "saga.compensated",
    )
    assert "book-hotel compensation" not in full  # it failed: nothing to undo
    slow = block(out, "a hotel that never confirms in time")
    assert "step.timed_out                book-hotel action #2" in slow
    for branch in ("book-flight", "book-hotel"):  # both branches, then the step before
        assert_in_order(
            slow,
            f"compensation.succeeded        {branch} compensation",
            "compensation.succeeded        charge-payment compensation",
            "saga.compensated",
        )

    # Streamed: the quick sagas' timelines come first, then what the demo waits for (the
    # hotel that never confirms in time), then that saga's timeline.
    first = out.index("✓ an order under 1000")
    waiting = out.index("… waiting for 1 saga: t-")
    assert first < waiting < out.index(slow)
    assert "awaiting its reply" in out[waiting : out.index(slow)]
    # No URL of a service that is gone once the demo has exited.
    assert "http://" not in out
    assert "saga-coordinator demo --keep" in out


def block(out: str, title: str) -> str:
    """The lines the demo printed for the sample whose title starts with ``title``."""
    start = out.index(f"✓ {title}")
    end = out.find("\n\n", start)
    return out[start : end if end != -1 else len(out)]


def assert_in_order(text: str, *parts: str) -> None:
    where = [text.find(part) for part in parts]
    assert -1 not in where and where == sorted(where), (parts, text)


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
        assert "8 of 8 sample sagas ended as expected" in text
        for path in ("/v1/sagas", "/docs", "/openapi.json", "/ui", "/metrics"):
            assert f"http://127.0.0.1:{port}{path}" in text
        api = f"http://127.0.0.1:{port}/v1/sagas"
        listed = httpx.get(api, params={"limit": 50}).json()["items"]
        assert len(listed) == 8
        sagas = [httpx.get(f"{api}/{item['id']}").json() for item in listed]
        for saga in sagas:
            steps = {step["name"]: step for step in saga["steps"]}
            total, hotel = saga["input"].get("total"), str(saga["input"].get("hotel"))
            if saga["definition"] == "order-fulfillment":
                review = steps["fraud-review"]
                assert review["status"] == ("succeeded" if total >= 1000 else "skipped"), saga
                assert review["condition"] is (total >= 1000)
            elif hotel.startswith("slow"):
                assert saga["status"] == "compensated", saga
                for name in ("book-flight", "book-hotel", "charge-payment"):
                    assert steps[name]["status"] == "compensated", (name, saga)
                assert {steps[name]["branch"] for name in ("book-flight", "book-hotel")} == {
                    "flight",
                    "hotel",
                }
            else:
                assert steps["payment-authorized"]["status"] == "succeeded", saga
                assert steps["payment-authorized"]["output"] == {
                    "trip_id": saga["key"],
                    "authorization_id": f"au-{saga['key']}",
                }
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
