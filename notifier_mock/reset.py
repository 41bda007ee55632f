"""Dropping a client's connection with a TCP reset and no HTTP answer.

ASGI has no "abort" message: raising in the app makes uvicorn answer 500, and returning
without a response makes it answer 500 too. So we reach the transport behind uvicorn's
``receive`` (a bound method of its request cycle, for both the httptools and h11 protocols)
and abort it with SO_LINGER=0, which makes the kernel send RST instead of FIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any, Protocol

from notifier_mock._asgi import Receive, wait_disconnect

_LINGER_ZERO = struct.pack("ii", 1, 0)


class ConnectionAborted(RuntimeError):
    """Raised instead when the server gives no access to the connection (e.g. in-process tests)."""


class _Transport(Protocol):
    def abort(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def _transport_of(receive: Receive) -> _Transport | None:
    cycle = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not callable(getattr(transport, "abort", None)):
        return None
    return transport  # type: ignore[no-any-return]


async def abort_connection(receive: Receive) -> None:
    """Reset the connection of the current request; ConnectionAborted if that is impossible."""
    transport = _transport_of(receive)
    if transport is None:
        raise ConnectionAborted("injected connection reset (server transport not reachable)")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Without linger=0 the peer may see an orderly close; either way it gets no response.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()
    # Wait until the server has noticed the loss, or it would log "returned without response".
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wait_disconnect(receive), 1.0)
