"""Connecting to one of several RabbitMQ brokers, and failing over (SPEC §6).

``SAGA_AMQP_URL`` may list the nodes of a cluster, comma-separated. ``connect`` tries them
in turn until one answers, and the connection it returns is robust (aio-pika reconnects it
and restores its channels, queues and consumers) with one difference: every reconnection
attempt after the first takes the next URL of the list, round robin. A node that goes away
is thereby left for the next one on the following attempt, and a list of one URL behaves
exactly like ``aio_pika.connect_robust``.

aio-pika's robust connection takes one URL. ``FailoverConnection`` hooks the one place
where it starts an attempt: it clears ``transport`` just before connecting to ``self.url``
(``RobustConnection.__connect_transport``), and ``url`` is read for that attempt only.
``tests/integration/test_broker_failover.py`` checks that this still holds for the installed
aio-pika.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aio_pika.abc import AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

__all__ = ["FailoverConnection", "connect", "split_urls"]


def split_urls(text: str) -> list[str]:
    """The URLs of a comma-separated list (blanks around them ignored)."""
    urls = [part.strip() for part in text.split(",") if part.strip()]
    if not urls:
        raise ValueError("no AMQP URL given")
    return urls


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


class FailoverConnection(RobustConnection):
    """A robust connection that moves to the next URL on every reconnection attempt."""

    def __init__(self, url: URL, *args: Any, urls: Sequence[str] = (), **kwargs: Any) -> None:
        self._urls = [URL(u) for u in urls] or [URL(url)]
        self._index = self._urls.index(URL(url)) if URL(url) in self._urls else 0
        self._attempts = 0
        self._transport: Any = None
        super().__init__(url, *args, **kwargs)

    @property
    def url(self) -> URL:
        return self._urls[self._index]

    @url.setter
    def url(self, value: URL) -> None:  # ``Connection.__init__``, ``update_secret``
        self._urls[self._index] = URL(value)

    @property
    def transport(self) -> Any:
        return self._transport

    @transport.setter
    def transport(self, value: Any) -> None:
        starting = value is None and hasattr(self, "_closed") and not self._close_in_progress
        if starting:  # an attempt begins (not ``__init__``, not ``close()``)
            self._attempts += 1
            if self._attempts > 1:
                self._index = (self._index + 1) % len(self._urls)
        self._transport = value

    @property
    def current_url(self) -> str:
        """The URL of the broker this connection uses or tries now."""
        return str(self.url)


async def connect(urls: str | Sequence[str], **kwargs: Any) -> AbstractRobustConnection:
    """A robust connection to the first broker of ``urls`` that answers.

    Args:
        urls: One URL, a comma-separated list, or a sequence of URLs.
        kwargs: Passed to aio-pika's ``RobustConnection`` (e.g. ``client_properties``).

    Raises:
        The last broker's connection error when none answers.
    """
    listed = split_urls(urls) if isinstance(urls, str) else list(urls)
    last: BaseException | None = None
    for url in listed:
        connection = FailoverConnection(URL(url), urls=listed, **kwargs)
        try:
            await connection.connect()
            return connection
        except Exception as exc:  # each broker in turn
            last = exc
            await connection.close()
    assert last is not None
    raise last
