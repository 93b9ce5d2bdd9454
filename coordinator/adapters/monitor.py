"""What a client asks of MongoDB: commands, bytes written, index entries maintained.

``RoundTripCounter`` is a PyMongo command listener. Besides the commands by name, it adds
up, for every write statement (an inserted document, an update or replace, a delete):

* ``write_bytes``: the BSON size of the statement as sent (for an update: its filter, its
  update document and options), the figure that becomes oplog volume and replication
  traffic on a replica set;
* ``index_writes``: the indexes the statement may change, from the collection's index list
  given to the counter: an insert, a replacement or a delete counts every index of the
  collection; an update with operators counts ``_id`` never and each other index whose key
  or partial-filter paths it modifies (a ``$set`` of ``history`` touches an index on
  ``history.x``, and the other way round). That is what ``mongod`` recomputes; it rewrites
  only the entries whose keys actually changed, so this is an upper bound there, and the
  exact count on a server that rewrites every entry it recomputes.

Collections absent from the index list count bytes only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import bson
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

__all__ = ["RoundTripCounter", "touches"]

IndexPaths = Sequence[tuple[str, ...]]
"""Per index of a collection (``_id`` included): the paths that decide its entries."""

_STATEMENTS = {"insert": "documents", "update": "updates", "delete": "deletes"}


def _overlaps(modified: str, indexed: str) -> bool:
    return (
        modified == indexed
        or indexed.startswith(modified + ".")
        or modified.startswith(indexed + ".")
    )


def touches(update: Mapping[str, Any], indexes: IndexPaths) -> int:
    """How many of ``indexes`` an update statement's ``u`` may change (see the module)."""
    if not update or not next(iter(update)).startswith("$"):
        return len(indexes)  # a replacement recomputes every index
    modified = [path for operator in update.values() for path in operator]
    return sum(
        1
        for paths in indexes
        if paths != ("_id",)
        and any(_overlaps(change, path) for change in modified for path in paths)
    )


class RoundTripCounter(CommandListener):
    """Counts the commands a client sends, by command name (``update``, ``find``, …), and
    the bytes and index entries its writes ask for (see the module)."""

    def __init__(self, indexes: Mapping[str, Iterable[tuple[str, ...]]] | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.indexes = {name: list(paths) for name, paths in (indexes or {}).items()}
        self.write_statements = 0
        self.write_bytes = 0
        self.index_writes = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()
        self.write_statements = self.write_bytes = self.index_writes = 0

    def started(self, event: CommandStartedEvent) -> None:
        name = event.command_name
        self.counts[name] += 1
        field = _STATEMENTS.get(name)
        if field is None:
            return
        command = event.command
        statements = command.get(field) or []
        indexes = self.indexes.get(command.get(name, ""))
        for statement in statements:
            self.write_statements += 1
            self.write_bytes += len(bson.encode(statement))
            if indexes is None:
                continue
            if name == "update":
                self.index_writes += touches(statement.get("u") or {}, indexes)
            else:
                self.index_writes += len(indexes)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass
