"""``/files``: list files, one file's status and result, and the actions on a file."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from daemon.api._hub import REQUEST_HEADER_PARAM, ControlDep, FileId, Limit, Offset

router = APIRouter()


@router.get("/files", tags=["files"], summary="List files, newest first")
def list_files(control: ControlDep, limit: Limit = 50, offset: Offset = 0) -> Any:
    return {"files": control.list_files(limit, offset), "limit": limit, "offset": offset}


@router.get("/files/{file_id}", tags=["files"], summary="Status, counts, rate and ETA")
def file_status(control: ControlDep, file_id: FileId) -> Any:
    return control.file_status(file_id)


@router.get(
    "/files/{file_id}/result",
    tags=["files"],
    summary="Bad rows and failed alerts with reasons (paginated)",
)
def file_result(
    control: ControlDep, file_id: FileId, limit: Limit = 100, offset: Offset = 0
) -> Any:
    return control.file_result(file_id, limit, offset)


@router.post(
    "/files/{file_id}/pause",
    tags=["actions"],
    openapi_extra=REQUEST_HEADER_PARAM,
    summary="Stop sending this file",
)
def pause(control: ControlDep, file_id: FileId) -> Any:
    return control.pause(file_id)


@router.post(
    "/files/{file_id}/resume",
    tags=["actions"],
    openapi_extra=REQUEST_HEADER_PARAM,
    summary="Send this file again",
)
def resume(control: ControlDep, file_id: FileId) -> Any:
    return control.resume(file_id)


@router.post(
    "/files/{file_id}/cancel",
    tags=["actions"],
    openapi_extra=REQUEST_HEADER_PARAM,
    summary="Cancel every alert of this file not yet sent",
)
def cancel(control: ControlDep, file_id: FileId) -> Any:
    return control.cancel(file_id)


@router.post(
    "/files/{file_id}/resend",
    tags=["actions"],
    status_code=201,
    openapi_extra=REQUEST_HEADER_PARAM,
    summary="Send a finished file again, as a new generation (new alert ids)",
)
def resend(control: ControlDep, file_id: FileId) -> Any:
    return control.resend(file_id)
