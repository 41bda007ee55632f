"""``/files/{id}/result.csv``: a file's full result, one CSV line per row, streamed.

The stream runs on a ledger connection of its own (a server-side cursor holds it for the
whole download), outside the pool the other routes borrow from, and closed when the stream
ends, fails or the client goes away.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from daemon.api._hub import FileId, HubDep
from hookdrop.ops import result_csv
from hookdrop.store import Store

router = APIRouter()

CSV_TYPE = "text/csv; charset=utf-8"


@router.get(
    "/files/{file_id}/result.csv",
    tags=["files"],
    response_class=StreamingResponse,
    responses={200: {"content": {CSV_TYPE: {}}, "description": "The result as CSV"}},
    summary="Every row's outcome as CSV (line, user id, alert id, status, HTTP code, error)",
)
def file_result_csv(hub: HubDep, file_id: FileId) -> StreamingResponse:
    store = hub.pool.factory()
    try:
        pieces = result_csv(store, file_id)  # UnknownFile (404) before anything is sent
    except BaseException:
        store.close()
        raise
    return StreamingResponse(
        _encoded(pieces, store),
        media_type=CSV_TYPE,
        headers={"content-disposition": f'attachment; filename="file-{file_id}-result.csv"'},
    )


def _encoded(pieces: Generator[str, None, None], store: Store) -> Iterator[bytes]:
    try:
        for piece in pieces:
            yield piece.encode("utf-8")
    finally:
        pieces.close()  # ends the cursor's transaction first
        store.close()
