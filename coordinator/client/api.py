"""A small synchronous client of the coordinator's REST API (``/v1``) over httpx.

Every failure becomes an ``ApiError`` with one line a person can act on: the problem
document's title and detail (and the fields at fault) for a 4xx/5xx answer, or a hint when
nothing answers at the URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["DEFAULT_URL", "ApiClient", "ApiError"]

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiError(Exception):
    """A call that did not succeed; ``str()`` is the message to print."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """``GET``/``POST`` on ``{url}/v1/…`` with an optional bearer token."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return self._call("GET", path, params=clean)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self._call("POST", path, json=body)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, f"/v1{path}", **kwargs)
        except httpx.ConnectError as exc:
            raise ApiError(
                f"no saga coordinator answers at {self.url}: start one "
                "(`saga-coordinator dev`), or point --url / SAGA_API_URL at it"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ApiError(f"{self.url} did not answer in time ({exc})") from exc
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {self.url}: {exc}") from exc
        if response.is_success:
            return response.json()
        raise ApiError(_problem_text(method, path, response), response.status_code)


def _problem_text(method: str, path: str, response: httpx.Response) -> str:
    """``METHOD /v1/path: 409 Conflict: <detail>`` plus one line per field at fault."""
    head = f"{method} /v1{path}: {response.status_code}"
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = response.text.strip()[:200]
        return f"{head} {response.reason_phrase}" + (f": {text}" if text else "")
    title = problem.get("title") or response.reason_phrase
    lines = [f"{head} {title}: {problem.get('detail', '')}"]
    for error in problem.get("errors") or []:
        if isinstance(error, dict):
            where = error.get("field") or error.get("line") or ""
            lines.append(f"  {where}: {error.get('message', '')}")
    return "\n".join(lines).rstrip(": ")
