"""The timeline formatter shared by the demo and the terminal client."""

from __future__ import annotations

from coordinator.timeline import entry_lines, header_lines, timeline

SAGA = {
    "id": "s-1",
    "definition": "trip-booking",
    "version": 2,
    "key": "t-1",
    "status": "compensated",
    "reason": {"code": "no_rooms", "message": "hotel FULL has no rooms left", "retryable": False},
    "created_at": "2026-11-25T17:13:00Z",
    "updated_at": "2026-11-25T17:13:01.5Z",
}

LONG = (
    "duplicate or late reply: the action of step 'book-hotel' is not awaiting a reply "
    "(step compensating, saga compensating) 0ee39b464ffa4f7488b070f088044bf8:book-hotel:action"
)


def entry(at: str, event: str, **fields: object) -> dict[str, object]:
    return {
        "at": at,
        "event": event,
        "step": None,
        "kind": None,
        "attempt": None,
        "detail": {},
        **fields,
    }


def test_header_names_the_saga_its_outcome_duration_and_reason() -> None:
    assert header_lines(SAGA) == [
        "  trip-booking v2  key=t-1  saga=s-1  → compensated in 1.50s",
        "  reason: no_rooms: hotel FULL has no rooms left",
    ]


def test_entries_show_offset_event_where_and_the_note_worth_reading() -> None:
    history = [
        entry("2026-11-25T17:13:00Z", "saga.started", detail={"source": "api"}),
        entry(
            "2026-11-25T17:13:00.25Z",
            "action.retry_scheduled",
            step="book-hotel",
            kind="action",
            attempt=2,
            detail={"delay_ms": 620},
        ),
        entry("2026-11-25T17:13:01.5Z", "saga.compensated"),
    ]
    lines = entry_lines(SAGA, history)
    assert lines[0].split() == ["+", "0.00s", "saga.started", "api"]
    assert lines[1].split() == [
        "+",
        "0.25s",
        "action.retry_scheduled",
        "book-hotel",
        "action",
        "#2",
        "in",
        "0.62s",
    ]
    assert lines[2] == "    +  1.50s  saga.compensated"
    assert timeline(SAGA, history) == header_lines(SAGA) + lines


def test_await_entries_name_the_event_its_value_and_the_message() -> None:
    history = [
        entry(
            "2026-11-25T17:13:00Z",
            "await.waiting",
            step="payment-authorized",
            detail={"event_type": "payment.authorized", "value": "t-1", "deadline": None},
        ),
        entry(
            "2026-11-25T17:13:00.5Z",
            "event.received",
            step="payment-authorized",
            kind="action",
            attempt=1,
            detail={"event_type": "payment.authorized", "message_id": "au-1"},
        ),
    ]
    first, second = entry_lines(SAGA, history)
    assert first.split() == [
        "+",
        "0.00s",
        "await.waiting",
        "payment-authorized",
        "payment.authorized",
        "=",
        "t-1",
    ]
    assert second.endswith("payment-authorized action #1     payment.authorized, message au-1")


def test_a_long_note_wraps_at_word_boundaries_under_its_column_and_loses_nothing() -> None:
    error = {"code": "late", "message": LONG, "retryable": False}
    lines = entry_lines(
        SAGA,
        [
            entry(
                "2026-11-25T17:13:00Z",
                "reply.ignored",
                step="book-hotel",
                kind="action",
                attempt=1,
                detail={"error": error},
            )
        ],
    )
    assert len(lines) > 1
    column = lines[0].index("late:")
    # Within 120 columns, unless one word alone is wider than the room left.
    assert all(len(line) <= 120 or len(line[column:].split()) == 1 for line in lines)
    assert all(line[:column].strip() == "" for line in lines[1:])
    words = " ".join(line[column:] for line in lines).split()
    assert words == f"late: {LONG}".split()  # no word cut, none lost
