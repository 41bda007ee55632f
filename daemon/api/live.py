"""Live updates of a file's status: Server-Sent Events, and a WebSocket for several files.

Both poll the ledger every half second (in the thread pool) and send a status only when it
changed; the rate and ETA, which move all the time, do not count as a change.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from daemon.api._hub import MAX_ID, FileId, hub_of
from hookdrop.ops import UnknownFile

STREAM_INTERVAL = 0.5  # seconds between status polls of SSE and WebSocket streams
HEARTBEAT_SECONDS = 15.0

router = APIRouter()


def _status_key(status: dict[str, Any]) -> str:
    """What counts as a change worth sending (the rate and ETA move all the time)."""
    return json.dumps(
        {k: v for k, v in status.items() if k not in ("rate", "eta_seconds")},
        sort_keys=True,
        default=str,
    )


@router.get(
    "/files/{file_id}/events",
    tags=["files"],
    summary="Server-sent events: the file's status on change, until it is finished",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def file_events(request: Request, file_id: FileId) -> StreamingResponse:
    hub = hub_of(request)
    first = await run_in_threadpool(hub.call, lambda c: c.file_status(file_id))

    async def stream() -> AsyncIterator[str]:
        status, last, quiet = first, None, 0.0
        while True:
            key = _status_key(status)
            if key != last:
                yield f"event: status\ndata: {json.dumps(status)}\n\n"
                last, quiet = key, 0.0
            elif quiet >= HEARTBEAT_SECONDS:
                yield ": keep-alive\n\n"
                quiet = 0.0
            if status["finished"]:
                yield "event: end\ndata: {}\n\n"
                return
            await anyio.sleep(STREAM_INTERVAL)
            quiet += STREAM_INTERVAL
            status = await run_in_threadpool(hub.call, lambda c: c.file_status(file_id))

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@router.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    hub = websocket.app.state.hub
    await websocket.accept()
    subscribed: dict[int, str | None] = {}
    send_lock = anyio.Lock()
    wake = [anyio.Event()]

    async def send(message: dict[str, Any]) -> None:
        async with send_lock:
            await websocket.send_json(message)

    async def reader() -> None:
        while True:
            try:
                message = json.loads(await websocket.receive_text())
            except json.JSONDecodeError:
                await send({"error": 'send JSON, e.g. {"subscribe": 12}'})
                continue
            target = (
                message.get("subscribe", message.get("fileId"))
                if isinstance(message, dict)
                else None
            )
            drop = message.get("unsubscribe") if isinstance(message, dict) else None
            if isinstance(drop, int) and not isinstance(drop, bool):
                subscribed.pop(drop, None)
            elif isinstance(target, int) and not isinstance(target, bool) and 1 <= target <= MAX_ID:
                subscribed[target] = None
                wake[0].set()
            else:
                await send({"error": 'expected {"subscribe": <file id>} or {"fileId": <file id>}'})

    async def writer() -> None:
        while True:
            for file_id in list(subscribed):
                try:
                    status = await run_in_threadpool(
                        hub.call, lambda c, f=file_id: c.file_status(f)
                    )
                except UnknownFile as exc:
                    subscribed.pop(file_id, None)
                    await send({"error": str(exc), "fileId": file_id})
                    continue
                key = _status_key(status)
                if subscribed.get(file_id, "gone") != key and file_id in subscribed:
                    subscribed[file_id] = key
                    await send(status)
            with anyio.move_on_after(STREAM_INTERVAL):
                await wake[0].wait()
            wake[0] = anyio.Event()

    try:
        async with anyio.create_task_group() as group:

            async def read_then_stop() -> None:
                try:
                    await reader()
                finally:
                    group.cancel_scope.cancel()

            group.start_soon(read_then_stop)
            group.start_soon(writer)
    except* WebSocketDisconnect:
        pass
