"""``/dlq``: alerts in the dead-letter queue, dead or rejected, and their replay."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from daemon.api._hub import MAX_ID, REQUEST_HEADER_PARAM, ControlDep, Limit, Offset

router = APIRouter(tags=["dlq"])


@router.get("/dlq", summary="Alerts in the DLQ, dead or rejected")
def dlq(
    control: ControlDep,
    status: Annotated[
        str, Query(max_length=100, description="Comma-separated: dlq, dead, rejected")
    ] = "dlq,dead",
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    return control.dlq_list(status.split(","), limit, offset)


@router.post(
    "/dlq/replay",
    openapi_extra=REQUEST_HEADER_PARAM,
    summary="Replay DLQ / dead / rejected alerts (all, or one file's)",
)
def replay(
    control: ControlDep,
    file_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: Annotated[str, Query(max_length=100)] = "dlq,dead",
) -> Any:
    return {"replayed": control.replay(file_id, status.split(",")), "file_id": file_id}
