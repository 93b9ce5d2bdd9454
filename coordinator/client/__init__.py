"""``saga-coordinator sagas …``: the REST API from a terminal (tables, timelines, ``--json``)."""

from coordinator.client.api import ApiClient, ApiError
from coordinator.client.commands import add_sagas_parser, run_sagas

__all__ = ["ApiClient", "ApiError", "add_sagas_parser", "run_sagas"]
