"""A small synchronous client for the mock's admin and stats endpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx

Stats = dict[str, Any]


class WaitTimeout(TimeoutError):
    """``wait_until`` ran out of time; ``last_stats`` holds the last stats seen (or None)."""

    def __init__(self, message: str, last_stats: Stats | None) -> None:
        super().__init__(message)
        self.last_stats = last_stats


class MockClient:
    """Talks to a running mock at ``base_url`` (e.g. ``http://127.0.0.1:8426``)."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    @property
    def hook_url(self) -> str:
        """The URL webhooks are sent to (any path but the admin ones is accepted)."""
        return f"{self.base_url}/hook"

    def __enter__(self) -> MockClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying connections."""
        self._http.close()

    def _json(self, response: httpx.Response) -> Stats:
        if response.status_code == 400:
            raise ValueError(response.json().get("error", response.text))
        response.raise_for_status()
        data: Stats = response.json()
        return data

    def healthy(self) -> bool:
        """True if ``GET /healthz`` answers 200."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def client_bodies(self) -> list[dict[str, Any]]:
        """``GET /admin/bodies``: the requests kept with ``--record-bodies``."""
        bodies: list[dict[str, Any]] = self._json(self._http.get("/admin/bodies"))["bodies"]
        return bodies

    def stats(self, per_user: bool = True) -> Stats:
        """``GET /stats`` (``per_user=False`` leaves out the per-user map)."""
        params = {} if per_user else {"per_user": "0"}
        return self._json(self._http.get("/stats", params=params))

    def config(self) -> Stats:
        """``GET /admin/config``."""
        return self._json(self._http.get("/admin/config"))

    def configure(self, **changes: Any) -> Stats:
        """``POST /admin/config``; returns the new config, ValueError with the mock's message."""
        return self._json(self._http.post("/admin/config", json=changes))

    def reset(self) -> None:
        """``POST /admin/reset``: zero all counters."""
        self._http.post("/admin/reset").raise_for_status()

    def wait_until(
        self,
        predicate: Callable[[Stats], bool],
        timeout: float,
        *,
        interval: float = 0.05,
        per_user: bool = True,
    ) -> Stats:
        """Poll ``/stats`` until ``predicate(stats)``; returns those stats.

        Raises :class:`WaitTimeout` (a TimeoutError) carrying the last stats after ``timeout``
        seconds. Connection errors count as "not yet" so this also waits for start-up.
        """
        deadline = time.monotonic() + timeout
        last: Stats | None = None
        problem = ""
        while True:
            try:
                last = self.stats(per_user=per_user)
            except httpx.TransportError as exc:
                problem = f" (last error: {exc!r})"
            else:
                if predicate(last):
                    return last
            if time.monotonic() >= deadline:
                brief = {k: v for k, v in (last or {}).items() if k != "per_user"}
                raise WaitTimeout(
                    f"condition not met within {timeout} s{problem}; last stats: {brief}", last
                )
            time.sleep(interval)
