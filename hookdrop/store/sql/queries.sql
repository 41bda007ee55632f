-- Every SQL statement hookdrop runs, by name. Loaded by hookdrop.store.
-- Statuses: see hookdrop/store/statuses.py.
--
-- Statements given a list of alert ids find them by primary key, one lookup each, and test the
-- status as `a.status || ''`: an expression no index serves. Written as `a.status IN (...)`,
-- the planner may instead walk alerts_waiting (every alert off the common path) whenever the
-- statistics say few alerts are open, which is the usual picture of a ledger in service; a
-- backlog arriving after that cost one walk of all of it per batch of outcomes.

-- name: insert_file
INSERT INTO files (name, content_sha256, generation, size_bytes, layout, chunk_size, status,
                   processing_path, claimed_by, file_key, mtime_ns, ctime_ns, endpoint)
VALUES (%(name)s, %(sha)s, %(generation)s, %(size)s, %(layout)s, %(chunk_size)s, %(status)s,
        %(path)s, %(claimed_by)s, %(file_key)s, %(mtime_ns)s, %(ctime_ns)s, %(endpoint)s)
ON CONFLICT (content_sha256, endpoint, generation) WHERE status <> 'duplicate' DO NOTHING
RETURNING id;

-- name: find_file_by_content
SELECT id, status, name FROM files
WHERE content_sha256 = %(sha)s AND endpoint = %(endpoint)s AND generation = %(generation)s
  AND status <> 'duplicate';

-- name: insert_duplicate
INSERT INTO files (name, content_sha256, generation, size_bytes, chunk_size, status,
                   duplicate_of, final_path, claimed_by, finished_at, endpoint)
VALUES (%(name)s, %(sha)s, %(generation)s, %(size)s, %(chunk_size)s, 'duplicate',
        %(duplicate_of)s, %(final_path)s, %(claimed_by)s, now(), %(endpoint)s)
RETURNING id;

-- name: insert_unreadable
INSERT INTO files (name, content_sha256, generation, size_bytes, chunk_size, status, error,
                   final_path, claimed_by, finished_at, endpoint)
VALUES (%(name)s, %(sha)s, %(generation)s, %(size)s, %(chunk_size)s, 'failed', %(error)s,
        %(final_path)s, %(claimed_by)s, now(), %(endpoint)s)
ON CONFLICT (content_sha256, endpoint, generation) WHERE status <> 'duplicate' DO NOTHING
RETURNING id;

-- name: get_file
SELECT * FROM files WHERE id = %(id)s;

-- name: list_files
SELECT * FROM files ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s;

-- name: file_by_processing_path
SELECT id FROM files WHERE processing_path = %(path)s;

-- name: next_generation
SELECT coalesce(max(generation), 0) + 1 AS generation FROM files WHERE content_sha256 = %(sha)s;

-- name: active_files
SELECT id, status, read_complete, processing_path, paused FROM files
WHERE status IN ('claimed', 'reading', 'delivering') ORDER BY id;

-- name: upsert_alerts
-- Returns the alerts this chunk owns: new ones, and on a replay of the same chunk the ones it
-- inserted before. A row repeated in a later chunk belongs to its first chunk and is skipped.
INSERT INTO alerts AS a (id, file_id, chunk_seq, line_no, user_id, message, extra, body)
SELECT u.id, %(file_id)s, %(seq)s, u.line_no, u.user_id, u.message, u.extra, u.body
FROM unnest(%(ids)s::text[], %(lines)s::bigint[], %(users)s::text[], %(messages)s::text[],
            %(extras)s::jsonb[], %(bodies)s::bytea[])
     AS u(id, line_no, user_id, message, extra, body)
ON CONFLICT (id) DO UPDATE SET chunk_seq = a.chunk_seq
    WHERE a.file_id = EXCLUDED.file_id AND a.chunk_seq = EXCLUDED.chunk_seq
RETURNING a.id, a.status;

-- name: insert_alerts
-- The common case: none of the ids is in the ledger yet (a plain insert, no conflict check
-- before each row). A duplicate fails it, and upsert_alerts does the chunk instead.
INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message, extra, body)
SELECT u.id, %(file_id)s, %(seq)s, u.line_no, u.user_id, u.message, u.extra, u.body
FROM unnest(%(ids)s::text[], %(lines)s::bigint[], %(users)s::text[], %(messages)s::text[],
            %(extras)s::jsonb[], %(bodies)s::bytea[])
     AS u(id, line_no, user_id, message, extra, body);

-- name: insert_row_errors
INSERT INTO row_errors (file_id, line_no, reason, excerpt)
SELECT %(file_id)s, e.line_no, e.reason, e.excerpt
FROM unnest(%(lines)s::bigint[], %(reasons)s::text[], %(excerpts)s::text[])
     AS e(line_no, reason, excerpt)
ON CONFLICT DO NOTHING;

-- name: file_progress
UPDATE files SET
    status = CASE WHEN status = 'claimed' THEN 'reading' ELSE status END,
    rows_total = greatest(rows_total, %(rows)s),
    rows_invalid = greatest(rows_invalid, %(invalid)s),
    alerts_total = greatest(alerts_total, %(alerts)s),
    updated_at = now()
WHERE id = %(id)s
RETURNING status;

-- name: file_read_complete
UPDATE files SET
    status = CASE WHEN status IN ('claimed', 'reading') THEN 'delivering' ELSE status END,
    rows_total = greatest(rows_total, %(rows)s), rows_invalid = greatest(rows_invalid, %(invalid)s),
    alerts_total = greatest(alerts_total, %(alerts)s), read_complete = true, read_done_at = coalesce(read_done_at, now()),
    error = coalesce(%(error)s, error), updated_at = now()
WHERE id = %(id)s;

-- name: lease_chunk
-- Lease a chunk to one notifier: free, or its lease ran out. A chunk leased to a live notifier
-- is left to it; the ids this job was given join its lease, so they are seen to when it ends.
-- The shared lock on the file: a cancel waits until this claim is visible (cancel_file).
WITH lock AS (SELECT pg_advisory_xact_lock_shared(1751413611, (%(file_id)s %% 2147483647)::int))
INSERT INTO chunk_leases AS l (file_id, chunk_seq, owner, until, ids)
SELECT %(file_id)s, %(seq)s, %(owner)s, now() + make_interval(secs => %(lease)s), %(ids)s::text[]
FROM lock
ON CONFLICT (file_id, chunk_seq) DO UPDATE SET
    owner = CASE WHEN l.until < now() THEN EXCLUDED.owner ELSE l.owner END,
    until = CASE WHEN l.until < now() THEN EXCLUDED.until ELSE l.until END,
    ids = ARRAY(SELECT DISTINCT unnest(l.ids || EXCLUDED.ids))
RETURNING l.owner = %(owner)s AS ours, l.ids;

-- name: claim_chunk
-- The alerts of a leased chunk still to send (a DLQ job's also in the DLQ); none of a paused
-- or cancelled file, none delivered in an earlier round. Reads only: the chunk's lease is what
-- makes them ours. fresh: never tried (its delivery at the first try goes to deliveries).
-- Driven by the ids (a primary-key lookup each), the file looked up once: a condition on the
-- alerts' file column would let the planner scan every alert of the file instead (the
-- caller drops alerts of another file).
WITH f AS MATERIALIZED (
    SELECT endpoint, name FROM files
    WHERE id = %(file_id)s AND NOT paused
      AND status IN ('claimed', 'reading', 'delivering', 'done', 'failed')
)
SELECT a.id, a.file_id, a.user_id, a.message, a.extra, a.attempts, a.body, f.endpoint,
       f.name AS file_name,
       (a.status = 'pending' AND a.attempts = 0 AND a.throttled = 0) AS fresh
FROM f, unnest(%(ids)s::text[]) AS u(id)
JOIN alerts AS a ON a.id = u.id
WHERE a.chunk_seq = %(seq)s
  AND (a.status || '' IN ('pending', 'retrying', 'throttled')
       OR (%(dlq)s AND a.status || '' = 'dlq'))
  AND u.id NOT IN (SELECT r.id FROM round_deliveries AS r
                   WHERE r.file_id = %(file_id)s AND r.chunk_seq = %(seq)s)
ORDER BY a.line_no;

-- name: chunks_of
-- The chunk of each alert, for a job queued before jobs named their chunk.
SELECT a.file_id, a.chunk_seq, array_agg(a.id ORDER BY a.line_no) AS ids
FROM unnest(%(ids)s::text[]) AS u(id) JOIN alerts AS a ON a.id = u.id
GROUP BY a.file_id, a.chunk_seq ORDER BY a.chunk_seq;

-- name: defer_alerts
-- The endpoint is paused or its breaker open: give leased alerts back to wait in PostgreSQL
-- (no budget spent, no worker held); take_deferred queues them again once it is open.
UPDATE alerts SET status = 'deferred'
WHERE id = ANY(%(ids)s) AND status || '' IN ('pending', 'retrying', 'throttled', 'dlq')
  AND EXISTS (SELECT 1 FROM chunk_leases WHERE file_id = %(file_id)s AND chunk_seq = %(seq)s
              AND owner = %(owner)s)
  AND id NOT IN (SELECT r.id FROM round_deliveries AS r
                 WHERE r.file_id = %(file_id)s AND r.chunk_seq = %(seq)s);

-- name: take_deferred
-- Deferred alerts of one endpoint, pending again, to be queued; none of a chunk some notifier
-- holds (it defers them itself). If the job is lost, the orphan sweep finds them.
UPDATE alerts SET status = 'pending'
WHERE id IN (
    SELECT a.id FROM alerts AS a JOIN files AS f ON f.id = a.file_id
    WHERE a.status = 'deferred' AND f.endpoint = %(endpoint)s
      AND NOT EXISTS (SELECT 1 FROM chunk_leases AS l
                      WHERE l.file_id = a.file_id AND l.chunk_seq = a.chunk_seq)
    ORDER BY a.file_id, a.line_no LIMIT %(limit)s FOR UPDATE OF a SKIP LOCKED)
RETURNING id, file_id, chunk_seq;

-- name: endpoint_waiting
-- Alerts waiting to be sent again (retrying, throttled, in the DLQ, deferred), by endpoint and
-- status: each status looked up in alerts_waiting, so the cost grows with these alerts only (an
-- endpoint held for long defers its backlog), never with the pending one.
SELECT f.endpoint, a.status, count(*) AS n
FROM alerts AS a JOIN files AS f ON f.id = a.file_id
WHERE a.status IN ('retrying', 'throttled', 'dlq', 'deferred')
GROUP BY 1, 2;

-- name: endpoint_sending
-- Pending alerts a live chunk lease holds (of one file, or of all with file_id NULL), by
-- endpoint: a few hundred lookups by primary key per running job (lease_holds).
SELECT f.endpoint, count(*) AS n
FROM lease_holds AS h JOIN files AS f ON f.id = h.file_id
WHERE h.until >= now() AND h.status = 'pending'
  AND (%(file_id)s::bigint IS NULL OR h.file_id = %(file_id)s::bigint)
GROUP BY 1;

-- name: waiting_for_unconfigured
-- Alerts still to go (dead ones left out) of files sent to endpoints not among the configured
-- ones, by endpoint, from the files' counters: the backlog of configured endpoints is never
-- walked.
SELECT endpoint,
       sum(alerts_total - delivered - rejected - dead - cancelled)::bigint AS n
FROM files
WHERE endpoint <> ALL(%(configured)s::text[]) AND status <> 'duplicate'
GROUP BY endpoint
HAVING sum(alerts_total - delivered - rejected - dead - cancelled) > 0;

-- name: endpoint_delivered
-- The files' counters by endpoint; open: alerts not at an end state yet (a file counts every
-- alert it owns in alerts_total, and each end state in its counter as the alert reaches it).
SELECT endpoint, coalesce(sum(delivered), 0)::bigint AS delivered,
       coalesce(sum(rejected), 0)::bigint AS rejected, coalesce(sum(dead), 0)::bigint AS dead,
       coalesce(sum(alerts_total - delivered - rejected - dead - cancelled), 0)::bigint AS open,
       count(*) FILTER (WHERE status IN ('claimed', 'reading', 'delivering')) AS active_files
FROM files WHERE status <> 'duplicate' GROUP BY endpoint;

-- name: renew_lease
UPDATE chunk_leases SET until = now() + make_interval(secs => %(lease)s)
WHERE file_id = %(file_id)s AND chunk_seq = %(seq)s AND owner = %(owner)s
RETURNING 1 AS ok;

-- name: end_lease
-- The job is over. Settled (nothing it was given is still open) and no other job's ids joined
-- the lease since (it only grows): the lease goes. Otherwise (handed back: stop, pause, lost
-- lease; or ids joined) it ends now and the monitor's lease sweep queues what is still open;
-- its owner is emptied: nothing more is written under it, so a cancel need not wait for it.
WITH gone AS (
    DELETE FROM chunk_leases
    WHERE file_id = %(file_id)s AND chunk_seq = %(seq)s AND owner = %(owner)s
      AND %(settled)s AND cardinality(ids) = %(given)s
    RETURNING 1
)
UPDATE chunk_leases SET until = now(), owner = ''
WHERE file_id = %(file_id)s AND chunk_seq = %(seq)s AND owner = %(owner)s
  AND NOT EXISTS (SELECT 1 FROM gone);

-- name: record_results
-- Write one batch of outcomes, only while this notifier holds the chunk's lease, and move the
-- per-file counters by the alerts that reached an end state in this very statement. Alerts
-- delivered at their first try (sent_*) make one deliveries row; every other outcome updates
-- its alert row (never one of an alert already delivered in a round).
-- The lease row is locked (FOR SHARE) until the outcomes are committed: a takeover of the
-- chunk, or the sweep that ends the lease, waits for them (and then a claim or a cancel sees
-- them), or comes first, and then nothing is written. The same round written twice (a retry
-- after the answer to a commit was lost) is one row: deliveries_once; like the alert rows it
-- would have updated, the retry then writes nothing.
WITH lease AS MATERIALIZED (
    SELECT 1 FROM chunk_leases
    WHERE file_id = %(file_id)s AND chunk_seq = %(seq)s AND owner = %(owner)s
    FOR SHARE
), sent AS (
    INSERT INTO deliveries (file_id, chunk_seq, ids, codes, latencies)
    SELECT %(file_id)s, %(seq)s, %(sent_ids)s::text[], %(sent_codes)s::int[],
           %(sent_latencies)s::real[]
    WHERE cardinality(%(sent_ids)s::text[]) > 0 AND EXISTS (SELECT 1 FROM lease)
    ON CONFLICT DO NOTHING
    RETURNING cardinality(ids) AS n
), r AS (
    SELECT * FROM unnest(%(ids)s::text[], %(statuses)s::text[], %(failed)s::int[],
                         %(throttled)s::int[], %(codes)s::int[], %(errors)s::text[],
                         %(latencies)s::real[], %(next_at)s::timestamptz[])
         AS r(id, status, failed, throttled, code, error, latency, next_at)
), upd AS (
    UPDATE alerts AS a SET
        status = r.status,
        attempts = a.attempts + r.failed,
        throttled = a.throttled + r.throttled,
        last_status_code = r.code,
        last_error = r.error,
        latency_ms = r.latency,
        last_attempt_at = now(),
        delivered_at = CASE WHEN r.status = 'delivered' THEN now() ELSE a.delivered_at END,
        next_attempt_at = r.next_at,
        first_attempt_at = coalesce(a.first_attempt_at, now())
    FROM r
    WHERE a.id = r.id AND a.status || '' IN ('pending', 'retrying', 'throttled', 'dlq')
      AND EXISTS (SELECT 1 FROM lease)
      AND a.id NOT IN (SELECT r.id FROM round_deliveries AS r
                       WHERE r.file_id = %(file_id)s AND r.chunk_seq = %(seq)s)
    RETURNING a.status
), moved AS (
    SELECT coalesce((SELECT sum(n) FROM sent), 0)
               + count(*) FILTER (WHERE status = 'delivered') AS delivered,
           count(*) FILTER (WHERE status = 'rejected') AS rejected,
           count(*) FILTER (WHERE status = 'dead') AS dead,
           coalesce((SELECT sum(n) FROM sent), 0) + count(*) AS written
    FROM upd
), files_upd AS (
    UPDATE files AS f SET
        delivered = f.delivered + m.delivered,
        rejected = f.rejected + m.rejected,
        dead = f.dead + m.dead,
        first_delivery_at = CASE WHEN m.delivered > 0
                                 THEN coalesce(f.first_delivery_at, now())
                                 ELSE f.first_delivery_at END,
        updated_at = now()
    FROM moved AS m WHERE f.id = %(file_id)s AND m.written > 0
    RETURNING f.id
)
SELECT written FROM moved;

-- name: take_due_dlq
-- DLQ entries whose time has come, but those of held endpoints (paused, breaker open) and of
-- chunks some notifier holds; pushed forward so that a crash before they are enqueued only
-- delays them by one interval (their job claims them in the DLQ).
UPDATE alerts SET next_attempt_at = now() + make_interval(secs => %(interval)s)
WHERE id IN (
    SELECT a.id FROM alerts AS a JOIN files AS f ON f.id = a.file_id
    WHERE a.status = 'dlq' AND a.next_attempt_at <= now() AND f.endpoint <> ALL(%(held)s::text[])
      AND NOT EXISTS (SELECT 1 FROM chunk_leases AS l
                      WHERE l.file_id = a.file_id AND l.chunk_seq = a.chunk_seq)
    ORDER BY a.next_attempt_at LIMIT %(limit)s FOR UPDATE OF a SKIP LOCKED)
RETURNING id, file_id, chunk_seq;

-- name: take_expired_leases
-- Leases whose notifier died, or that were handed back: they end here (a notifier that still
-- thinks it holds one finds out at its next write), and what is still open among their ids
-- (delivered in none of the chunk's rounds) goes to the queue again. Leases of paused files
-- wait for the resume (or the cancel).
WITH gone AS (
    DELETE FROM chunk_leases WHERE (file_id, chunk_seq) IN (
        SELECT l.file_id, l.chunk_seq FROM chunk_leases AS l JOIN files AS f ON f.id = l.file_id
        WHERE l.until < now() AND (NOT f.paused OR f.status = 'cancelled')
        ORDER BY l.until LIMIT %(limit)s FOR UPDATE OF l SKIP LOCKED)
    RETURNING file_id, chunk_seq, ids
), left_open AS (
    SELECT o.id FROM gone AS g
    CROSS JOIN LATERAL (
        SELECT u.id FROM unnest(g.ids) AS u(id)
        EXCEPT
        SELECT r.id FROM round_deliveries AS r
        WHERE r.file_id = g.file_id AND r.chunk_seq = g.chunk_seq
    ) AS o
)
SELECT a.id, a.file_id, a.chunk_seq
FROM left_open JOIN alerts AS a ON a.id = left_open.id
JOIN files AS f ON f.id = a.file_id
WHERE a.status || '' IN ('pending', 'retrying', 'throttled')
  AND f.status IN ('claimed', 'reading', 'delivering', 'done', 'failed');

-- name: alerts_outgrew_statistics
-- What the planner knows of alerts is what its last ANALYZE (or VACUUM) saw, and a plan a
-- prepared statement keeps was made from that. True once the table has 4 times the pages it
-- had then (at least 8): a plan made while it was small may read all of it, as it grows.
SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint
       > 4 * greatest(c.relpages, 8) AS grown
FROM pg_class AS c WHERE c.oid = 'alerts'::regclass;

-- name: analyze_alerts
-- New statistics, and with them new plans for every statement kept prepared on alerts. Skipped
-- while another ANALYZE or VACUUM holds the table: that one brings new statistics too.
ANALYZE (SKIP_LOCKED) alerts;

-- name: orphaned_pending
-- Open alerts of running files, older than a lease, of chunks no notifier holds, delivered in
-- none of their chunk's rounds. Asked only while the notifier queue is empty: then no queued
-- job carries them, so their job was lost (a notifier killed between dequeuing it and claiming
-- the chunk; RQ does not run such a job again). A file is read (alerts_by_file; OFFSET 0 keeps
-- it per file) only when its counters have more alerts open than its DLQ and deferred ones
-- (alerts_waiting) and the open ones its chunk leases hold (lease_holds):
-- while every open alert is accounted for, as when notifiers keep up with a file still being
-- read, the sweep costs a few lookups, not a read of the file.
SELECT o.id, o.file_id, o.chunk_seq FROM files AS f
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM alerts AS w
    WHERE w.file_id = f.id AND w.status IN ('dlq', 'deferred')
) AS parked
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM lease_holds AS h
    WHERE h.file_id = f.id AND h.status IN ('pending', 'retrying', 'throttled')
) AS held
CROSS JOIN LATERAL (
    SELECT a.id, a.file_id, a.chunk_seq FROM alerts AS a
    WHERE a.file_id = f.id AND a.status IN ('pending', 'retrying', 'throttled')
      AND a.created_at < now() - make_interval(secs => %(age)s)
      AND NOT EXISTS (SELECT 1 FROM chunk_leases AS l
                      WHERE l.file_id = a.file_id AND l.chunk_seq = a.chunk_seq)
      AND NOT EXISTS (SELECT 1 FROM round_deliveries AS r
                      WHERE r.file_id = f.id AND r.id = a.id)
    OFFSET 0
) AS o
WHERE f.status IN ('claimed', 'reading', 'delivering') AND NOT f.paused
  AND f.alerts_total - f.delivered - f.rejected - f.dead - f.cancelled > parked.n + held.n
LIMIT %(limit)s;

-- name: open_alerts
-- A file's alerts still to send (delivered in no round; the DLQ and deferred ones left out).
SELECT id, file_id, chunk_seq FROM alerts AS a
WHERE file_id = %(file_id)s AND status IN ('pending', 'retrying', 'throttled')
  AND NOT EXISTS (SELECT 1 FROM round_deliveries AS r
                  WHERE r.file_id = %(file_id)s AND r.id = a.id)
ORDER BY chunk_seq, line_no;

-- name: finish_files
UPDATE files SET status = CASE WHEN error IS NULL THEN 'done' ELSE 'failed' END,
                 finished_at = now(), updated_at = now()
WHERE status = 'delivering' AND read_complete AND NOT paused
  AND delivered + rejected + dead + cancelled >= alerts_total
RETURNING id, name, status, processing_path;

-- name: files_to_move
-- A cancelled file waits while a notifier still holds a lease on one of its chunks that it has
-- not handed back (live, or run out and not yet ended by the lease sweep): the outcomes of
-- what it had in flight may still come, and belong in its summary.
SELECT id, name, status, processing_path FROM files
WHERE status IN ('done', 'failed', 'cancelled') AND processing_path IS NOT NULL
  AND final_path IS NULL
  AND NOT (status = 'cancelled' AND EXISTS (SELECT 1 FROM chunk_leases AS l
                                            WHERE l.file_id = files.id AND l.owner <> ''));

-- name: set_final_path
UPDATE files SET final_path = %(final_path)s, updated_at = now() WHERE id = %(id)s;

-- name: set_paused
UPDATE files SET paused = %(paused)s, updated_at = now()
WHERE id = %(id)s AND status IN ('claimed', 'reading', 'delivering')
RETURNING id;

-- name: cancel_file
-- Alerts of chunks a notifier holds (a lease row it has not handed back, live or run out: a
-- stalled holder may still write outcomes) are left to it: it sees the file paused, hands them
-- back, and cancel_leftovers marks them; what it sent meanwhile, its outcomes written late
-- included, counts as delivered. Alerts delivered in a round stay delivered.
-- Run after the file's exclusive lock (lock_file): every claim is then visible, or waits and
-- finds the file cancelled.
WITH c AS (
    UPDATE alerts AS a SET status = 'cancelled'
    WHERE a.file_id = %(id)s
      AND EXISTS (SELECT 1 FROM files WHERE id = %(id)s
                  AND status IN ('claimed', 'reading', 'delivering'))
      AND a.status IN ('pending', 'retrying', 'throttled', 'dlq', 'deferred')
      AND NOT EXISTS (SELECT 1 FROM chunk_leases AS l
                      WHERE l.file_id = a.file_id AND l.chunk_seq = a.chunk_seq
                        AND l.owner <> '')
      AND NOT EXISTS (SELECT 1 FROM round_deliveries AS r
                      WHERE r.file_id = %(id)s AND r.id = a.id)
    RETURNING 1
)
UPDATE files SET status = 'cancelled', cancelled = cancelled + (SELECT count(*) FROM c),
                 finished_at = now(), updated_at = now()
WHERE id = %(id)s AND status IN ('claimed', 'reading', 'delivering')
RETURNING id;

-- name: lock_file
SELECT pg_advisory_xact_lock(1751413611, (%(id)s %% 2147483647)::int);

-- name: cancel_leftovers
-- Alerts of cancelled files that nobody holds any more (handed back, or written by a batcher
-- that had not yet noticed the cancel) end as cancelled; those delivered in a round stay
-- delivered. Only cancelled files whose counters still have alerts open and none of whose
-- chunks a holder that may still write holds (a lease not handed back; the lease sweep ends
-- one only once its outcomes are written) are read, each file by itself (alerts_by_file;
-- OFFSET 0 keeps the lookup per file).
WITH left_over AS (
    SELECT o.id FROM files AS f
    CROSS JOIN LATERAL (
        SELECT a.id FROM alerts AS a
        WHERE a.file_id = f.id AND a.status IN ('pending', 'retrying', 'throttled', 'dlq', 'deferred')
          AND NOT EXISTS (SELECT 1 FROM round_deliveries AS r
                          WHERE r.file_id = f.id AND r.id = a.id)
        OFFSET 0
    ) AS o
    WHERE f.status = 'cancelled'
      AND f.alerts_total > f.delivered + f.rejected + f.dead + f.cancelled
      AND NOT EXISTS (SELECT 1 FROM chunk_leases AS l WHERE l.file_id = f.id AND l.owner <> '')
), c AS (
    UPDATE alerts AS a SET status = 'cancelled'
    FROM left_over
    WHERE a.id = left_over.id
      AND a.status || '' IN ('pending', 'retrying', 'throttled', 'dlq', 'deferred')
      AND NOT EXISTS (SELECT 1 FROM chunk_leases AS l
                      WHERE l.file_id = a.file_id AND l.chunk_seq = a.chunk_seq
                        AND l.owner <> '')
    RETURNING a.file_id
), n AS (SELECT file_id, count(*) AS n FROM c GROUP BY file_id)
UPDATE files SET cancelled = files.cancelled + n.n, updated_at = now()
FROM n WHERE files.id = n.file_id
RETURNING files.id;

-- name: status_counts
-- A file's alerts off the common path (retrying, throttled, DLQ, deferred, dead, rejected,
-- cancelled), by status, from alerts_waiting; pending and sending ones are counted from the
-- file's counters and its chunk leases (see Store.status_counts).
SELECT status, count(*) AS n FROM alerts
WHERE file_id = %(file_id)s AND status NOT IN ('pending', 'delivered')
GROUP BY 1;

-- name: row_errors_page
SELECT line_no, reason, excerpt FROM row_errors WHERE file_id = %(file_id)s
ORDER BY line_no LIMIT %(limit)s OFFSET %(offset)s;

-- name: failed_alerts_page
SELECT id, line_no, user_id, status, attempts, throttled, last_status_code, last_error,
       last_attempt_at
FROM alerts
WHERE file_id = %(file_id)s AND status IN ('rejected', 'dead', 'dlq', 'cancelled')
ORDER BY line_no LIMIT %(limit)s OFFSET %(offset)s;

-- name: dlq_page
SELECT id, file_id, user_id, status, attempts, last_status_code, last_error, next_attempt_at
FROM alerts WHERE status = ANY(%(statuses)s)
ORDER BY file_id, line_no LIMIT %(limit)s OFFSET %(offset)s;

-- name: replay_alerts
-- Manual replay: dead, DLQ and rejected alerts get a fresh attempt budget and go out now; their
-- files count them as open again.
WITH o AS (
    SELECT id, status AS old FROM alerts
    WHERE status = ANY(%(statuses)s)
      AND (%(file_id)s::bigint IS NULL OR file_id = %(file_id)s::bigint)
    FOR UPDATE
), r AS (
    UPDATE alerts AS a SET status = 'dlq', attempts = 0, next_attempt_at = now()
    FROM o WHERE a.id = o.id
    RETURNING a.file_id, o.old
), c AS (
    SELECT file_id, count(*) AS n,
           count(*) FILTER (WHERE old = 'dead') AS dead,
           count(*) FILTER (WHERE old = 'rejected') AS rejected
    FROM r GROUP BY file_id
), f AS (
    UPDATE files SET dead = files.dead - c.dead, rejected = files.rejected - c.rejected,
                     status = CASE WHEN files.status = 'done' THEN 'delivering' ELSE files.status END,
                     finished_at = NULL, updated_at = now()
    FROM c WHERE files.id = c.file_id
    RETURNING files.id
)
SELECT coalesce(sum(n), 0)::bigint AS n FROM c;

-- name: totals
SELECT count(*) FILTER (WHERE status IN ('claimed', 'reading', 'delivering')) AS active,
       count(*) FILTER (WHERE status = 'done') AS done,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       coalesce(sum(delivered), 0) AS delivered,
       coalesce(sum(alerts_total), 0) AS alerts
FROM files;

-- name: dlq_size
-- DLQ entries counted one by one (alerts_waiting by status); dead alerts, which only a replay
-- brings back and which add up over the ledger's life, from the files' counters (the status
-- page asks every second).
SELECT (SELECT count(*) FROM alerts WHERE status = 'dlq') AS dlq,
       (SELECT coalesce(sum(dead), 0) FROM files WHERE status <> 'duplicate')::bigint AS dead;

-- name: ping
SELECT 1 AS ok;

-- name: migration_lock
-- Taken by the migrating transaction: one process migrates, the others wait and find it done.
SELECT pg_advisory_xact_lock(x'686F6F6B'::bigint);

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS hookdrop_migrations (
    version integer PRIMARY KEY, name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());

-- name: applied_migrations
SELECT version FROM hookdrop_migrations;

-- name: record_migration
INSERT INTO hookdrop_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: has_migrations_table
SELECT to_regclass('hookdrop_migrations') IS NOT NULL AS ok;

-- name: schema_version
SELECT max(version) AS version FROM hookdrop_migrations;

-- name: latest_file_named
-- The newest file of that name claimed under a folder (a demo or benchmark run's inbox).
SELECT * FROM files
WHERE name = %(name)s AND status <> 'duplicate' AND processing_path LIKE %(under)s
ORDER BY id DESC LIMIT 1;

-- name: result_lines
-- One line per row of a file, in the file's order: its alerts (a repeated row is one alert,
-- listed at the line that first read it) and its row errors. Read through a server-side
-- cursor, so PostgreSQL sorts (spilling to disk past work_mem) and hands the lines out in
-- batches: the reader's memory does not grow with the file. Alerts delivered in a round are
-- delivered, with the code of their round; pending alerts a live lease holds are listed as
-- sending.
SELECT line, user_id, alert_id, status, http_code, error FROM (
    SELECT a.line_no AS line, a.user_id, a.id AS alert_id,
           CASE WHEN d.id IS NOT NULL THEN 'delivered'
                WHEN a.status = 'pending' AND l.until >= now() AND a.id = ANY(l.ids)
                THEN 'sending' ELSE a.status END,
           coalesce(d.code, a.last_status_code) AS http_code,
           CASE WHEN d.id IS NULL THEN a.last_error END AS error
    FROM alerts AS a LEFT JOIN chunk_leases AS l
        ON l.file_id = a.file_id AND l.chunk_seq = a.chunk_seq
    LEFT JOIN (SELECT r.id, r.code FROM round_deliveries AS r
               WHERE r.file_id = %(file_id)s) AS d ON d.id = a.id
    WHERE a.file_id = %(file_id)s
    UNION ALL
    SELECT line_no, NULL, NULL, 'invalid', NULL, reason
    FROM row_errors WHERE file_id = %(file_id)s
) AS lines
ORDER BY line, alert_id;

