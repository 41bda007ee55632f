"""What a webhook answer means for the alert (guarantee 7, docs/guarantees.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

import httpx

EXCERPT = 200


class VerdictKind(StrEnum):
    """What becomes of the alert after one answer (or failure to get one)."""

    DELIVERED = "delivered"  # 2xx
    THROTTLED = "throttled"  # 429: waits, uses no attempt
    RETRY = "retry"  # 5xx, 408, timeout, connection error
    REJECTED = "rejected"  # any other 4xx: not tried again


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    code: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, for throttled answers


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify_response(response: httpx.Response) -> Verdict:
    code = response.status_code
    if 200 <= code < 300:
        return Verdict(VerdictKind.DELIVERED, code)
    if code == 429:
        return Verdict(
            VerdictKind.THROTTLED,
            code,
            "429 Too Many Requests",
            parse_retry_after(response.headers.get("retry-after")),
        )
    excerpt = _excerpt(response)
    if code >= 500 or code == 408:
        return Verdict(
            VerdictKind.RETRY, code, f"HTTP {code}: {excerpt}" if excerpt else f"HTTP {code}"
        )
    return Verdict(
        VerdictKind.REJECTED, code, f"HTTP {code}: {excerpt}" if excerpt else f"HTTP {code}"
    )


def classify_error(exc: httpx.HTTPError) -> Verdict:
    if isinstance(exc, httpx.LocalProtocolError):
        # Refused here, before anything was sent: trying again cannot help.
        return Verdict(VerdictKind.REJECTED, None, f"not sent: {exc}"[:EXCERPT])
    if isinstance(exc, httpx.TimeoutException):
        return Verdict(VerdictKind.RETRY, None, f"timeout ({type(exc).__name__})")
    return Verdict(
        VerdictKind.RETRY, None, f"connection error ({type(exc).__name__}: {exc})"[:EXCERPT]
    )


def _excerpt(response: httpx.Response) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return ""
    return " ".join(text.split())[:EXCERPT]
