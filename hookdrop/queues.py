"""The two RQ queues and how work is put on them.

- batcher queue: one job per file (``workers.batcher.read_file_job``), reads it in chunks.
- notifier queue: one job per chunk of a file (``workers.notifier.deliver_job``): the alert
  ids the batcher wrote in one transaction, or the open ones among them.

Jobs carry alert ids only; the payload comes from PostgreSQL when a notifier claims them, so a
job that runs twice, late, or after a DLQ re-injection can never send stale data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis
from rq import Queue
from rq.job import Job

from hookdrop.keys import Keys
from hookdrop.store import AlertRef

BATCHER_JOB = "workers.batcher.read_file_job"
NOTIFIER_JOB = "workers.notifier.deliver_job"

# Generous: a batcher job streams a whole file; a notifier job may wait out back-pressure.
BATCHER_TIMEOUT = 7 * 24 * 3600
NOTIFIER_TIMEOUT = 24 * 3600
RESULT_TTL = 60
FAILURE_TTL = 7 * 24 * 3600


def batcher_queue(conn: redis.Redis, keys: Keys) -> Queue:
    return Queue(keys.batcher_queue, connection=conn)


def notifier_queue(conn: redis.Redis, keys: Keys) -> Queue:
    return Queue(keys.notifier_queue, connection=conn)


def enqueue_read(conn: redis.Redis, keys: Keys, file_id: int) -> Job:
    """Queue the reading of one file. Harmless if queued twice: readers take a per-file lock."""
    return batcher_queue(conn, keys).enqueue_call(
        BATCHER_JOB,
        args=(file_id,),
        job_id=keys.new_job_id(),
        timeout=BATCHER_TIMEOUT,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        description=f"read file {file_id}",
    )


def notifier_jobs(
    keys: Keys, file_id: int, chunks: Iterable[tuple[int, Sequence[str]]], *, dlq: bool = False
) -> list[Any]:
    """Job data (for ``Queue.enqueue_many``): one job per chunk ``(seq, ids)`` of the file, so
    one lease covers each job; ``dlq``: its alerts wait in the DLQ until it claims them."""
    return [
        Queue.prepare_data(
            NOTIFIER_JOB,
            args=(file_id, list(ids)),
            kwargs={"seq": seq, "dlq": dlq} if dlq else {"seq": seq},
            job_id=keys.new_job_id(),
            timeout=NOTIFIER_TIMEOUT,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            description=f"deliver {len(ids)} alerts of file {file_id}",
        )
        for seq, ids in chunks
        if ids
    ]


def enqueue_deliveries(
    conn: redis.Redis,
    keys: Keys,
    file_id: int,
    chunks: Iterable[tuple[int, Sequence[str]]],
    *,
    dlq: bool = False,
) -> int:
    """Queue delivery of a file's chunks ``(seq, ids)`` now (outside any checkpoint
    transaction); returns the job count."""
    data = notifier_jobs(keys, file_id, chunks, dlq=dlq)
    if not data:
        return 0
    queue = notifier_queue(conn, keys)
    with conn.pipeline(transaction=True) as pipe:
        jobs = queue.enqueue_many(data, pipeline=pipe)
        pipe.execute()
    return len(jobs)


def by_chunk(refs: Iterable[AlertRef]) -> dict[int, list[tuple[int, list[str]]]]:
    """Alerts as chunks ``(seq, ids)`` by file, in order."""
    found: dict[int, dict[int, list[str]]] = {}
    for ref in refs:
        found.setdefault(ref.file_id, {}).setdefault(ref.chunk_seq, []).append(ref.id)
    return {file_id: sorted(chunks.items()) for file_id, chunks in found.items()}


def forget_deployment(conn: redis.Redis, keys: Keys) -> int:
    """Delete every Redis key of the deployment ``keys`` belongs to, and nothing else.

    Its own keys and RQ's keys of its queues, jobs and workers go; its members leave RQ's
    shared sets of queues and workers. Returns how many keys were deleted. For a deployment
    (a test, a demo run) whose processes have all stopped.
    """
    found = {
        _text(key)
        for pattern in keys.scan_patterns
        for key in conn.scan_iter(match=pattern, count=1000)
    }
    owned = sorted(key for key in found if keys.owns(key))
    with conn.pipeline(transaction=False) as pipe:
        for start in range(0, len(owned), 500):
            pipe.delete(*owned[start : start + 500])
        for shared in ("rq:queues", "rq:workers"):
            members = [m for m in conn.smembers(shared) if keys.owns(_text(m))]
            if members:
                pipe.srem(shared, *members)
        pipe.execute()
    return len(owned)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
