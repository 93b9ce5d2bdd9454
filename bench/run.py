"""The benchmark driver: the floor, then the coordinator with its participants.

Every process under test is separate: the coordinator (``python -m coordinator run``), the
participants (``python -m bench.echo``, no SDK and no database, or the SDK's
``python -m bench.participants``), the floor's responder and its loop
(``python -m bench.floor``). This process only publishes trigger events, keeps
``--concurrency`` sagas in flight, watches the coordinator's log for terminal statuses,
samples CPU and peak RSS from ``/proc``, and cleans up afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import aio_pika
from pymongo import AsyncMongoClient

from bench.procs import (
    broker_pid,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    peak_rss_mib,
    start_secantus,
)
from schemas.envelope import Exchanges
from schemas.topology import declare_exchanges

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3
#: The participants processes of our phase: the echo (same responder as the floor's) or SDK.
PARTICIPANTS = {"echo": "bench.echo", "sdk": "bench.participants"}
EVENT = "bench.requested"
DEFINITION = f"""\
name: bench-saga
version: 1
description: Three trivially fast steps; beta fails when asked, alpha is compensated.
trigger:
  event: {EVENT}
  key: ${{event.id}}
steps:
  - name: one
    participant: alpha
    command: act
    input: {{id: "${{input.id}}"}}
    compensation: {{command: undo, input: {{id: "${{input.id}}"}}}}
  - name: two
    participant: beta
    command: act
    input: {{id: "${{input.id}}", fail: "${{input.fail}}"}}
  - name: three
    participant: gamma
    command: act
    input: {{id: "${{input.id}}"}}
"""
_TERMINAL = re.compile(r"→ (completed|compensated|failed) \[saga_id=(\w+)")
_STOPPED = re.compile(
    r"stopped: (\d+) transitions, (\d+) conflicts retried, (\d+) commands published, "
    r"(\d+) relayed, (\d+) timers fired, (\d+) MongoDB commands, (\d+) outbox entries cleared"
    r"(?:, (\d+) write statements, (\d+) bytes written, (\d+) index entries maintained)?"
)


@dataclass
class CoordinatorLog:
    """What the driver reads from the coordinator's stderr."""

    terminal: dict[str, str] = field(default_factory=dict)
    running: bool = False
    stopped: dict[str, int] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def feed(self, line: str) -> None:
        self.tail.append(line)
        if (match := _TERMINAL.search(line)) is not None:
            self.terminal[match.group(2)] = match.group(1)
            self.progress.set()
        elif "coordinator running" in line:
            self.running = True
            self.progress.set()
        elif (stop := _STOPPED.search(line)) is not None:
            names = (
                *("transitions", "conflicts", "published", "relayed", "timers", "db", "cleared"),
                *("db_writes", "db_write_bytes", "db_index_entries"),
            )
            values = [int(value) if value is not None else -1 for value in stop.groups()]
            self.stopped = dict(zip(names, values, strict=True))


async def _read_lines(stream: asyncio.StreamReader, sink: CoordinatorLog) -> None:
    while line := await stream.readline():
        sink.feed(line.decode(errors="replace").rstrip())


def percentile(sorted_values: Sequence[float], share: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(share * len(sorted_values)) - 1))
    return sorted_values[index]


def fails(index: int, share: float) -> bool:
    """Whether saga ``index`` is one of the compensating share (spread evenly)."""
    return math.floor((index + 1) * share) > math.floor(index * share)


async def _spawn(args: list[str], env: dict[str, str], **kwargs: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env={**os.environ, **env}, **kwargs
    )


async def _wait_line(proc: asyncio.subprocess.Process, text: str, within: float) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), within)
    if text not in line.decode():
        raise RuntimeError(f"{proc.pid} did not start: {line!r}")


async def _terminate(proc: asyncio.subprocess.Process, within: float = 20) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), within)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass
class Setup:
    amqp_url: str
    mongodb_url: str
    database: str
    prefix: str
    sagas: int
    concurrency: int
    compensate_share: float
    prefetch: int


async def run_coordinator(setup: Setup, kind: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="saga-bench-") as workdir:
        return await _run_coordinator(setup, Path(workdir), PARTICIPANTS[kind])


async def _run_coordinator(setup: Setup, workdir: Path, participants_module: str) -> dict[str, Any]:
    definitions = workdir / "definitions"
    definitions.mkdir()
    (definitions / "bench.yaml").write_text(DEFINITION)
    env = {
        "SAGA_AMQP_URL": setup.amqp_url,
        "SAGA_MONGODB_URL": setup.mongodb_url,
        "SAGA_MONGODB_DATABASE": setup.database,
        "SAGA_EXCHANGE_PREFIX": setup.prefix,
        "SAGA_HTTP_PORT": str(free_port()),
        "SAGA_DEFINITIONS_DIR": str(definitions),
        "SAGA_PREFETCH": str(setup.prefetch),
        "SAGA_LOG_LEVEL": "INFO",
        "SAGA_LOG_FORMAT": "text",
        "BENCH_PREFETCH": str(setup.prefetch),
    }
    log = CoordinatorLog()
    profile = os.environ.get("BENCH_PROFILE")  # a path: profile the coordinator (cProfile)
    wrapper = ["-m", "cProfile", "-o", profile] if profile else []
    coordinator = await _spawn(
        [*wrapper, "-m", "coordinator", "run"],
        env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert coordinator.stderr is not None
    reader = asyncio.create_task(_read_lines(coordinator.stderr, log))
    participants = await _spawn(["-m", participants_module], env, stdout=asyncio.subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not log.running:
            if coordinator.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the coordinator did not start:\n" + "\n".join(log.tail))
            log.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.progress.wait(), 0.5)
        await _wait_line(participants, "ready", 60)
        result = await _drive(setup, coordinator.pid, participants.pid, log)
    finally:
        await _terminate(participants)
        await _terminate(coordinator)
        await reader
    assert participants.stdout is not None
    replies = json.loads((await participants.stdout.read()).decode().strip() or "{}")
    if log.stopped is None:
        raise RuntimeError("no shutdown totals in the coordinator's log:\n" + "\n".join(log.tail))
    figures = _coordinator_figures(setup, result, log.stopped, int(replies.get("replies", 0)))
    if "db" in replies:  # the SDK participants' own database work, per command
        sdk, commands = replies["db"], figures["commands_published"] or 1
        figures["participants_db"] = {
            "round_trips_per_command": round(sdk["round_trips"] / commands, 3),
            "writes_per_command": round(sdk["writes"] / commands, 3),
            "write_bytes_per_command": round(sdk["write_bytes"] / commands, 1),
            "index_entries_per_command": round(sdk["index_entries"] / commands, 3),
        }
    return figures


async def _drive(
    setup: Setup, coordinator_pid: int, participants_pid: int, log: CoordinatorLog
) -> dict[str, Any]:
    connection = await aio_pika.connect_robust(setup.amqp_url)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(setup.mongodb_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        events = (await declare_exchanges(channel, Exchanges(setup.prefix))).events
        published = 0

        async def publish(index: int) -> None:
            body = {"id": f"o-{index}", "fail": fails(index, setup.compensate_share)}
            message = aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=uuid.uuid4().hex,
            )
            await events.publish(message, routing_key=EVENT)

        cpu_before = cpu_seconds(coordinator_pid)
        participants_before = cpu_seconds(participants_pid)
        began = time.monotonic()
        while len(log.terminal) < setup.sagas:
            room = min(setup.sagas - published, setup.concurrency - (published - len(log.terminal)))
            if room > 0:
                await asyncio.gather(*(publish(published + i) for i in range(room)))
                published += room
            log.progress.clear()
            try:
                await asyncio.wait_for(log.progress.wait(), 60)
            except TimeoutError:
                raise RuntimeError(
                    f"no progress for 60 s ({len(log.terminal)} of {setup.sagas} done):\n"
                    + "\n".join(log.tail)
                ) from None
        elapsed = time.monotonic() - began
        cpu = cpu_seconds(coordinator_pid) - cpu_before
        participants_cpu = cpu_seconds(participants_pid) - participants_before
        rss = peak_rss_mib(coordinator_pid)
        cursor = mongo[setup.database]["sagas"].find({}, {"created_at": 1, "updated_at": 1})
        latencies = sorted(
            [(doc["updated_at"] - doc["created_at"]).total_seconds() async for doc in cursor]
        )
    finally:
        await connection.close()
        await mongo.close()
    statuses = list(log.terminal.values())
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "participants_cpu_s": participants_cpu,
        "peak_rss_mib": rss,
        "latencies_s": latencies,
        "completed": statuses.count("completed"),
        "compensated": statuses.count("compensated"),
        "failed": statuses.count("failed"),
    }


def _coordinator_figures(
    setup: Setup, run: dict[str, Any], totals: dict[str, int], replies: int
) -> dict[str, Any]:
    transitions = totals["transitions"]
    commands = totals["published"] + totals["relayed"]
    steps = STEPS * setup.sagas  # every saga sends three commands: a, b, c or a, b, undo a
    elapsed = run["elapsed_s"]
    latencies = run["latencies_s"]
    return {
        "sagas_completed": run["completed"],
        "sagas_compensated": run["compensated"],
        "sagas_failed": run["failed"],
        "elapsed_s": round(elapsed, 3),
        "sagas_per_s": round(setup.sagas / elapsed, 1),
        "transitions": transitions,
        "transitions_per_s": round(transitions / elapsed, 1),
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "db_round_trips": totals["db"],
        "db_round_trips_per_transition": round(totals["db"] / transitions, 3),
        "db_writes_per_transition": round(totals["db_writes"] / transitions, 3),
        "db_write_bytes_per_transition": round(totals["db_write_bytes"] / transitions, 1),
        "db_index_entries_per_transition": round(totals["db_index_entries"] / transitions, 3),
        "commands_published": commands,
        "replies_published": replies,
        "commands_per_step": round(commands / steps, 3),
        "replies_per_step": round(replies / steps, 3),
        "broker_messages_per_transition": round((commands + replies) / transitions, 3),
        "conflicts": totals["conflicts"],
        "relayed": totals["relayed"],
        "outbox_entries_cleared": totals["cleared"],
        "cpu_s": round(run["cpu_s"], 2),
        "cpu_s_per_1000_transitions": round(run["cpu_s"] / transitions * 1000, 3),
        "peak_rss_mib": round(run["peak_rss_mib"], 1),
        "participants_cpu_s": round(run["participants_cpu_s"], 2),
    }


async def run_floor(setup: Setup) -> dict[str, Any]:
    common = ["--amqp-url", setup.amqp_url, "--prefix", setup.prefix]
    common += ["--prefetch", str(setup.prefetch)]
    responder = await _spawn(
        ["-m", "bench.floor", "responder", *common], {}, stdout=asyncio.subprocess.PIPE
    )
    try:
        await _wait_line(responder, "ready", 60)
        responder_before = cpu_seconds(responder.pid)
        loop = await _spawn(
            [
                "-m",
                "bench.floor",
                "loop",
                *common,
                "--mongodb-url",
                setup.mongodb_url,
                "--database",
                setup.database,
                "--sagas",
                str(setup.sagas),
                "--concurrency",
                str(setup.concurrency),
                "--steps",
                str(STEPS),
            ],
            {},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await loop.communicate()
        if loop.returncode != 0:
            raise RuntimeError(f"the floor loop failed ({loop.returncode})")
        responder_cpu = cpu_seconds(responder.pid) - responder_before
    finally:
        await _terminate(responder)
    raw = json.loads(out.decode().strip().splitlines()[-1])
    elapsed, steps, latencies = raw["elapsed_s"], raw["steps"], raw["latencies_s"]
    return {
        "sagas": raw["sagas"],
        "steps": steps,
        "elapsed_s": round(elapsed, 3),
        "sagas_per_s": round(raw["sagas"] / elapsed, 1),
        "steps_per_s": round(steps / elapsed, 1),
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "db_round_trips_per_step": 1,
        "broker_messages_per_step": 2,
        "cpu_s": round(raw["cpu_s"], 2),
        "cpu_s_per_1000_steps": round(raw["cpu_s"] / steps * 1000, 3),
        "peak_rss_mib": round(raw["peak_rss_mib"], 1),
        "responder_cpu_s": round(responder_cpu, 2),
    }


async def cleanup(setup: Setup) -> None:
    """Delete the run's queues, exchanges and database."""
    exchanges = Exchanges(setup.prefix)
    queues = [
        f"{setup.prefix}.coordinator.events",
        f"{setup.prefix}.coordinator.replies",
        f"{setup.prefix}.dead-letter",
        *(f"{setup.prefix}.{name}.commands" for name in ("alpha", "beta", "gamma")),
        f"{setup.prefix}.floor.commands",
        f"{setup.prefix}.floor.replies",
    ]
    names = [exchanges.events, exchanges.commands, exchanges.replies, exchanges.dead_letter]
    names.append(f"{setup.prefix}.floor")
    connection = await aio_pika.connect_robust(setup.amqp_url)
    try:
        for queue in queues:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
            with contextlib.suppress(Exception):
                await channel.close()
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()
    finally:
        await connection.close()
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(setup.mongodb_url)
    try:
        await mongo.drop_database(setup.database)
    finally:
        await mongo.close()


async def _phase(
    setup: Setup,
    fresh_server: bool,
    body: Callable[[Setup], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    server = None
    if fresh_server:
        server, url = start_secantus()
        setup = replace(setup, mongodb_url=url)
    try:
        try:
            # The phase's whole run, its processes' start-up and shutdown included.
            before = cpu_seconds(server.pid) if server is not None else 0.0
            broker = broker_pid()
            broker_before = _cpu_or_none(broker)
            machine_before = machine_busy_seconds()
            figures = await body(setup)
            machine = machine_busy_seconds() - machine_before
            broker_after = _cpu_or_none(broker)
            if server is not None:
                figures["db_server_cpu_s"] = round(cpu_seconds(server.pid) - before, 2)
            figures["broker_cpu_s"] = (
                round(broker_after - broker_before, 2)
                if broker_before is not None and broker_after is not None
                else None
            )
            figures["machine_cpu_busy_s"] = round(machine, 2)
            return figures
        finally:
            await cleanup(setup)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


def _cpu_or_none(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return cpu_seconds(pid)
    except OSError:  # the process is gone
        return None


def _ratio(ours: float, floor: float) -> float:
    return round(ours / floor, 3) if floor else math.nan


def _ratios(ours: dict[str, Any], floor: dict[str, Any]) -> dict[str, float]:
    ours_cpu = ours["cpu_s_per_1000_transitions"]
    floor_cpu = floor["cpu_s_per_1000_steps"]
    return {
        "throughput_sagas": _ratio(ours["sagas_per_s"], floor["sagas_per_s"]),
        "transitions_per_floor_step_rate": _ratio(ours["transitions_per_s"], floor["steps_per_s"]),
        "cpu_per_transition": _ratio(ours_cpu, floor_cpu),
        "latency_p50": _ratio(ours["latency_p50_ms"], floor["latency_p50_ms"]),
        "latency_p99": _ratio(ours["latency_p99_ms"], floor["latency_p99_ms"]),
    }


def phase_participants(participants: str) -> list[str]:
    """The participants of our phases, in order: ``both`` runs the echo, then the SDK."""
    return ["echo", "sdk"] if participants == "both" else [participants]


async def bench(setup: Setup, fresh_server: bool, participants: str) -> dict[str, Any]:
    """The floor first, then the coordinator once per participants kind.

    Each phase on a fresh server when we start them: a fresh SecantusDB per phase keeps one
    phase's data (and the server's state) from slowing the next down.
    """
    floor = await _phase(setup, fresh_server, run_floor)
    runs: list[dict[str, Any]] = []
    for kind in phase_participants(participants):
        runs.append(await _phase(setup, fresh_server, partial(run_coordinator, kind=kind)))
    ours = runs[0]
    ratios = _ratios(ours, floor)
    targets = {
        "db_round_trips_per_transition_le_1_2": ours["db_round_trips_per_transition"] <= 1.2,
        "one_command_one_reply_per_step": ours["commands_per_step"] == 1
        and ours["replies_per_step"] == 1,
        "cpu_per_transition_le_2x_floor": ratios["cpu_per_transition"] <= 2.0,
        "throughput_ge_70pct_floor": ratios["throughput_sagas"] >= 0.7,
    }
    db_ratio = _db_cpu_ratio(ours, floor)
    if db_ratio is not None:
        ratios["db_server_cpu_per_saga"] = db_ratio
        targets["db_server_cpu_per_saga_le_3x_floor"] = db_ratio <= 3.0
    targets["throughput_ge_50pct_floor"] = ratios["throughput_sagas"] >= 0.5
    result = {"coordinator": ours, "floor": floor, "ratios": ratios, "targets": targets}
    if len(runs) > 1:
        sdk_ratios = _ratios(runs[1], floor)
        sdk_ratios["throughput_of_echo_phase"] = _ratio(runs[1]["sagas_per_s"], ours["sagas_per_s"])
        sdk_db = _db_cpu_ratio(runs[1], floor)
        if sdk_db is not None:
            sdk_ratios["db_server_cpu_per_saga"] = sdk_db
        targets["sdk_throughput_ge_75pct_echo"] = sdk_ratios["throughput_of_echo_phase"] >= 0.75
        result["with_sdk"] = {**runs[1], "ratios": sdk_ratios}
    return result


def _db_cpu_ratio(ours: dict[str, Any], floor: dict[str, Any]) -> float | None:
    """The database server's CPU per saga, ours ÷ the floor's (embedded server only)."""
    if "db_server_cpu_s" not in ours or "db_server_cpu_s" not in floor:
        return None
    sagas = ours["sagas_completed"] + ours["sagas_compensated"] + ours["sagas_failed"]
    ours["db_server_cpu_ms_per_saga"] = round(ours["db_server_cpu_s"] / sagas * 1000, 2)
    floor["db_server_cpu_ms_per_saga"] = round(floor["db_server_cpu_s"] / floor["sagas"] * 1000, 2)
    return _ratio(ours["db_server_cpu_ms_per_saga"], floor["db_server_cpu_ms_per_saga"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="The coordinator against the broker's floor."
    )
    parser.add_argument("--sagas", type=int, default=600, help="sagas per phase (default 600)")
    parser.add_argument("--concurrency", type=int, default=32, help="sagas in flight")
    parser.add_argument("--compensate-share", type=float, default=0.1)
    parser.add_argument("--mongodb-url", help="default: a SecantusDB started for the run")
    parser.add_argument(
        "--amqp-url", default=os.environ.get("SAGA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--prefetch", type=int, default=64, help="consumer prefetch, both sides")
    parser.add_argument(
        "--participants",
        choices=["echo", "sdk", "both"],
        default="both",
        help="our phase's participants: the echo (no SDK, no database), the SDK, or the echo "
        "then the SDK (default both)",
    )
    args = parser.parse_args(argv)
    if args.sagas < 1 or args.concurrency < 1 or not 0 <= args.compensate_share <= 1:
        parser.error("--sagas and --concurrency must be >= 1, --compensate-share in [0, 1]")
    token = uuid.uuid4().hex[:10]
    setup = Setup(
        amqp_url=args.amqp_url,
        mongodb_url=args.mongodb_url or "",
        database=f"bench_{token}",
        prefix=f"bench{token}",
        sagas=args.sagas,
        concurrency=args.concurrency,
        compensate_share=args.compensate_share,
        prefetch=args.prefetch,
    )
    result = asyncio.run(bench(setup, args.mongodb_url is None, args.participants))
    kinds = phase_participants(args.participants)
    config = {
        "sagas": args.sagas,
        "concurrency": args.concurrency,
        "compensate_share": args.compensate_share,
        "mongodb": "given URL"
        if args.mongodb_url
        else "embedded SecantusDB, a fresh one per phase",
        "cpus": os.cpu_count(),
        "participants": {
            "floor": "floor-responder",
            "coordinator": kinds[0],
            **({"with_sdk": kinds[1]} if len(kinds) > 1 else {}),
        },
    }
    print(json.dumps({"config": config, **result}, indent=2))
    return 0
