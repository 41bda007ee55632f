"""Uploads: a request body streamed into the inbox, raw bytes or the first file of a
multipart form, written atomically (a hidden temp file renamed into place)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from daemon.api._hub import REQUEST_HEADER_PARAM, Hub, HubDep
from hookdrop.ops import BadRequest, InboxWriter, TooLarge

log = structlog.get_logger(__name__)

router = APIRouter(tags=["files"])

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file itself
WRITE_BUFFER = 1 << 20  # bytes gathered before one write in the thread pool

_UPLOAD_BODY = {
    **REQUEST_HEADER_PARAM,
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    },
}


class Upload:
    """Streams a request body into the inbox: raw bytes, or the first file of a multipart."""

    def __init__(self, hub: Hub, name: str | None) -> None:
        self.hub = hub
        self.name = name
        self.writer: InboxWriter | None = None
        self.buffer = bytearray()
        self.received = 0

    async def open(self, name: str) -> None:
        self.writer = await run_in_threadpool(
            InboxWriter, self.hub.settings.inbox, name, limit=self.hub.max_upload_bytes
        )

    def add(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.hub.max_upload_bytes:
            raise TooLarge(f"upload larger than the {self.hub.max_upload_bytes} bytes allowed")
        self.buffer += data

    async def flush(self, force: bool = False) -> None:
        if self.writer is not None and self.buffer and (force or len(self.buffer) >= WRITE_BUFFER):
            data, self.buffer = bytes(self.buffer), bytearray()
            await run_in_threadpool(self.writer.write, data)

    async def raw(self, request: Request) -> None:
        if not self.name:
            raise BadRequest(
                "give the file name: POST /files?name=alerts.csv (or upload "
                "multipart/form-data with a filename)"
            )
        await self.open(self.name)
        async for chunk in request.stream():
            self.add(chunk)
            await self.flush()

    async def multipart(self, request: Request, boundary: bytes) -> None:
        state: dict[str, Any] = {
            "field": b"",
            "value": b"",
            "headers": {},
            "file": False,
            "taken": False,
            "pending": None,
        }

        def on_part_begin() -> None:
            state.update(headers={}, file=False)

        def on_header_field(data: bytes, start: int, end: int) -> None:
            state["field"] += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            state["value"] += data[start:end]

        def on_header_end() -> None:
            state["headers"][state["field"].lower()] = state["value"]
            state.update(field=b"", value=b"")

        def on_headers_finished() -> None:
            _, options = parse_options_header(state["headers"].get(b"content-disposition", b""))
            filename = options.get(b"filename")
            if filename is not None and not state["taken"]:
                state.update(
                    file=True, taken=True, pending=self.name or filename.decode("utf-8", "replace")
                )

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if state["file"]:
                self.add(data[start:end])

        def on_part_end() -> None:
            state["file"] = False

        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
            },
        )
        async for chunk in request.stream():
            parser.write(chunk)
            if state["pending"] is not None:
                await self.open(state["pending"])
                state["pending"] = None
            await self.flush()
        parser.finalize()
        if not state["taken"]:
            raise BadRequest("multipart body has no file part (a part with a filename)")

    async def commit(self) -> Path:
        assert self.writer is not None
        await self.flush(force=True)
        return await run_in_threadpool(self.writer.commit)

    async def abort(self) -> None:
        if self.writer is not None:
            await run_in_threadpool(self.writer.abort)


@router.post(
    "/files",
    status_code=201,
    openapi_extra=_UPLOAD_BODY,
    summary="Upload a file into the inbox (raw body with ?name=, or multipart)",
    responses={
        400: {"description": "bad name"},
        409: {"description": "name taken"},
        413: {"description": "too large"},
    },
)
async def upload(
    request: Request,
    hub: HubDep,
    name: Annotated[str | None, Query(max_length=255, description="File name in the inbox")] = None,
) -> Any:
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    is_multipart = ctype == b"multipart/form-data"
    length = request.headers.get("content-length", "")
    allowed = hub.max_upload_bytes + (MULTIPART_OVERHEAD if is_multipart else 0)
    if length.isdigit() and int(length) > allowed:
        raise TooLarge(f"upload larger than the {hub.max_upload_bytes} bytes allowed")
    upload = Upload(hub, name)
    try:
        if is_multipart:
            boundary = options.get(b"boundary")
            if not boundary:
                raise BadRequest("multipart/form-data without a boundary")
            await upload.multipart(request, boundary)
        else:
            await upload.raw(request)
        final = await upload.commit()
    except BaseException:
        await upload.abort()
        raise
    log.info("api.uploaded", name=final.name, size=upload.received)
    return {"name": final.name, "size": upload.writer.size if upload.writer else 0}
