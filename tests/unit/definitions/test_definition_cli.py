"""``saga-coordinator validate`` and ``graph`` through ``coordinator.cli.main``."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
ORDER = str(SCHEMAS / "order-fulfillment.yaml")
TRIP = str(SCHEMAS / "trip-booking.yaml")


def test_validate_good_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", ORDER, TRIP]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{ORDER}: ok", f"{TRIP}: ok"]
    assert err == ""


def test_validate_reports_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nversion: 1\nsteps:\n  - name: a\n    participant: p\n")
    missing = tmp_path / "missing.yaml"
    assert main(["validate", ORDER, str(bad), str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{ORDER}: ok"]
    assert err.splitlines() == [
        f"{bad}:4: steps[0].command: missing required key 'command'",
        f"{missing}:1: <document>: cannot read the file: No such file or directory",
    ]


def test_graph_order_fulfillment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", ORDER]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "flowchart TD"
    for expected in [
        '    start(["start: order.placed"])',
        '    s0["reserve-stock<br/>inventory.reserve_stock"]',
        '    s1["fraud-review<br/>risk.review"]',
        '    s3{{"ship-order<br/>shipping.create_shipment<br/>(pivot)"}}',
        '    c2["undo charge-payment<br/>payments.refund"]:::compensation',
        "    start --> s0",
        '    s0 -->|"if: input.total >= 1000 && !has(input.trusted)"| s1',
        "    s0 -. else: skipped .-> s2",
        "    s1 --> s2",
        "    s2 --> s3",
        "    s3 --> done",
        "    s0 -. fails .-> compensated",
        "    s1 -. fails .-> c0",
        "    s2 -. fails .-> c0",
        "    s3 -. fails .-> c2",
        "    s2 -. times out .-> c2",
        "    c2 -.-> c0",
        "    c0 -.-> compensated",
    ]:
        assert expected in lines
    assert not any(line.strip().startswith(("c1", "c3")) for line in lines)
    assert "failed" not in "\n".join(lines)


def test_graph_trip_booking(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", TRIP]) == 0
    lines = capsys.readouterr().out.splitlines()
    for expected in [
        '    s0[/"payment-authorized<br/>await payment.authorized"/]',
        '    subgraph g2["book-travel (parallel)"]',
        '    s2["book-flight<br/>flights.book_flight"]',
        '    s3["book-hotel<br/>hotels.book_room"]',
        "    s1 --> f2",
        "    s3 -. times out .-> c3",
        "    c2 -.-> c1",
        "    c3 -.-> c1",
        "    c1 -.-> compensated",
    ]:
        assert expected in lines


def test_graph_steps_after_pivot_lead_to_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "p.yaml"
    file.write_text(
        "name: p\nversion: 1\nsteps:\n"
        "  - {name: a, participant: x, command: do, compensation: {command: undo}}\n"
        "  - {name: b, participant: x, command: do, pivot: true}\n"
        "  - {name: c, participant: x, command: do}\n"
    )
    assert main(["graph", str(file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert '    start(["start"])' in lines
    assert "    s2 -. fails .-> failed" in lines
    assert "    s1 -. fails .-> c0" in lines
    assert '    failed(["failed"])' in lines


def test_graph_invalid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "x.yaml"
    file.write_text("- not a mapping\n")
    assert main(["graph", str(file)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{file}:1: <document>: expected a mapping")
