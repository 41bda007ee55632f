-- Every SQL statement hookdrop runs, by name. Loaded by hookdrop.store.
-- Statuses: see hookdrop/store/statuses.py.

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

-- name: claim_alerts
-- Lease the given alerts to one notifier; alerts delivered, leased by a live notifier, of a
-- paused or cancelled file, or already finished are left out.
UPDATE alerts AS a SET
    status = 'sending', lease_owner = %(owner)s,
    lease_until = now() + make_interval(secs => %(lease)s),
    first_attempt_at = coalesce(a.first_attempt_at, now())
FROM files AS f
WHERE a.id = ANY(%(ids)s) AND f.id = a.file_id
  AND NOT f.paused AND f.status IN ('claimed', 'reading', 'delivering', 'done', 'failed')
  AND (a.status IN ('pending', 'dlq', 'deferred')
       OR (a.status IN ('sending', 'retrying', 'throttled')
           AND (a.lease_until < now() OR a.lease_owner IS NULL)))
RETURNING a.id, a.file_id, a.user_id, a.message, a.extra, a.attempts, a.body, f.endpoint,
          f.name AS file_name;

-- name: defer_alerts
-- The endpoint is paused or its breaker open: give leased alerts back to wait in PostgreSQL
-- (no budget spent, no worker held); take_deferred queues them again once it is open.
UPDATE alerts SET status = 'deferred', lease_owner = NULL, lease_until = NULL
WHERE id = ANY(%(ids)s) AND lease_owner = %(owner)s
  AND status IN ('sending', 'retrying', 'throttled');

-- name: take_deferred
-- Deferred alerts of one endpoint, back to pending for a new job (if that job is lost, the
-- orphaned-pending sweep finds them).
UPDATE alerts SET status = 'pending'
WHERE id IN (
    SELECT a.id FROM alerts AS a JOIN files AS f ON f.id = a.file_id
    WHERE a.status = 'deferred' AND f.endpoint = %(endpoint)s
    ORDER BY a.file_id, a.line_no LIMIT %(limit)s FOR UPDATE OF a SKIP LOCKED)
RETURNING id, file_id;

-- name: endpoint_counts
-- Alerts not yet at an end state (rejected and cancelled left out), by endpoint and status.
SELECT f.endpoint, a.status, count(*) AS n
FROM alerts AS a JOIN files AS f ON f.id = a.file_id
WHERE a.status IN ('pending', 'sending', 'retrying', 'throttled', 'dlq', 'dead', 'deferred')
GROUP BY f.endpoint, a.status;

-- name: endpoint_delivered
SELECT endpoint, coalesce(sum(delivered), 0)::bigint AS delivered,
       coalesce(sum(rejected), 0)::bigint AS rejected, coalesce(sum(dead), 0)::bigint AS dead,
       count(*) FILTER (WHERE status IN ('claimed', 'reading', 'delivering')) AS active_files
FROM files WHERE status <> 'duplicate' GROUP BY endpoint;

-- name: renew_leases
UPDATE alerts SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = ANY(%(ids)s) AND lease_owner = %(owner)s;

-- name: release_alerts
-- Give back leased alerts that were not tried (shutdown, pause): their lease ends now, so the
-- monitor's lease sweep queues them again; a crash here loses nothing either.
UPDATE alerts SET lease_until = now()
WHERE id = ANY(%(ids)s) AND lease_owner = %(owner)s
  AND status IN ('sending', 'retrying', 'throttled');

-- name: record_results
-- Write one batch of outcomes, only for alerts this notifier still holds, and move the
-- per-file counters by the alerts that reached an end state in this very statement.
WITH r AS (
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
        lease_owner = CASE WHEN r.status IN ('retrying', 'throttled') THEN a.lease_owner END,
        lease_until = CASE WHEN r.status IN ('retrying', 'throttled') THEN a.lease_until END
    FROM r
    WHERE a.id = r.id AND a.lease_owner = %(owner)s
      AND a.status IN ('sending', 'retrying', 'throttled')
    RETURNING a.file_id, a.status
), counts AS (
    SELECT file_id,
           count(*) FILTER (WHERE status = 'delivered') AS delivered,
           count(*) FILTER (WHERE status = 'rejected') AS rejected,
           count(*) FILTER (WHERE status = 'dead') AS dead
    FROM upd GROUP BY file_id
), files_upd AS (
    UPDATE files AS f SET
        delivered = f.delivered + c.delivered,
        rejected = f.rejected + c.rejected,
        dead = f.dead + c.dead,
        first_delivery_at = CASE WHEN c.delivered > 0
                                 THEN coalesce(f.first_delivery_at, now())
                                 ELSE f.first_delivery_at END,
        updated_at = now()
    FROM counts AS c WHERE f.id = c.file_id
    RETURNING f.id
)
SELECT (SELECT count(*) FROM upd) AS written;

-- name: take_due_dlq
-- DLQ entries whose time has come, but those of held endpoints (paused, breaker open); pushed
-- forward so that a crash before they are enqueued only delays them by one interval.
UPDATE alerts SET next_attempt_at = now() + make_interval(secs => %(interval)s)
WHERE id IN (
    SELECT a.id FROM alerts AS a JOIN files AS f ON f.id = a.file_id
    WHERE a.status = 'dlq' AND a.next_attempt_at <= now() AND f.endpoint <> ALL(%(held)s::text[])
    ORDER BY a.next_attempt_at LIMIT %(limit)s FOR UPDATE OF a SKIP LOCKED)
RETURNING id, file_id;

-- name: take_expired_leases
-- Alerts whose notifier died holding them: mark them claimable by anyone and hand them back.
UPDATE alerts SET lease_owner = NULL, lease_until = now() + make_interval(secs => %(lease)s)
WHERE id IN (
    SELECT id FROM alerts
    WHERE status IN ('sending', 'retrying', 'throttled') AND lease_until < now()
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING id, file_id;

-- name: orphaned_pending
-- Pending alerts of running files, older than a lease. Asked only while the notifier
-- queue is empty: then no queued job carries them, so their job was lost (a notifier killed
-- between dequeuing it and claiming them; RQ does not run such a job again).
SELECT a.id, a.file_id FROM alerts AS a JOIN files AS f ON f.id = a.file_id
WHERE a.status = 'pending' AND a.created_at < now() - make_interval(secs => %(age)s)
  AND f.status IN ('claimed', 'reading', 'delivering') AND NOT f.paused
LIMIT %(limit)s;

-- name: open_alert_ids
SELECT id FROM alerts
WHERE file_id = %(file_id)s AND status IN ('pending', 'sending', 'retrying', 'throttled')
ORDER BY chunk_seq, line_no;

-- name: finish_files
UPDATE files SET status = CASE WHEN error IS NULL THEN 'done' ELSE 'failed' END,
                 finished_at = now(), updated_at = now()
WHERE status = 'delivering' AND read_complete AND NOT paused
  AND delivered + rejected + dead + cancelled >= alerts_total
RETURNING id, name, status, processing_path;

-- name: files_to_move
SELECT id, name, status, processing_path FROM files
WHERE status IN ('done', 'failed', 'cancelled') AND processing_path IS NOT NULL
  AND final_path IS NULL;

-- name: set_final_path
UPDATE files SET final_path = %(final_path)s, updated_at = now() WHERE id = %(id)s;

-- name: set_paused
UPDATE files SET paused = %(paused)s, updated_at = now()
WHERE id = %(id)s AND status IN ('claimed', 'reading', 'delivering')
RETURNING id;

-- name: cancel_file
-- Alerts a live notifier is sending are left to it: it sees the file paused, hands them back,
-- and cancel_leftovers marks them; what it already sent stays counted as delivered.
WITH c AS (
    UPDATE alerts SET status = 'cancelled', lease_owner = NULL, lease_until = NULL
    WHERE file_id = %(id)s
      AND (status IN ('pending', 'dlq', 'deferred')
           OR (status IN ('sending', 'retrying', 'throttled') AND lease_until < now()))
    RETURNING 1
)
UPDATE files SET status = 'cancelled', cancelled = cancelled + (SELECT count(*) FROM c),
                 finished_at = now(), updated_at = now()
WHERE id = %(id)s AND status IN ('claimed', 'reading', 'delivering')
RETURNING id;

-- name: cancel_leftovers
-- Alerts of cancelled files that nobody holds any more (handed back, or written by a batcher
-- that had not yet noticed the cancel) end as cancelled.
WITH c AS (
    UPDATE alerts AS a SET status = 'cancelled', lease_owner = NULL, lease_until = NULL
    FROM files AS f
    WHERE f.id = a.file_id AND f.status = 'cancelled'
      AND a.status IN ('pending', 'sending', 'retrying', 'throttled', 'dlq', 'deferred')
      AND (a.lease_until IS NULL OR a.lease_until < now())
    RETURNING a.file_id
), n AS (SELECT file_id, count(*) AS n FROM c GROUP BY file_id)
UPDATE files SET cancelled = files.cancelled + n.n, updated_at = now()
FROM n WHERE files.id = n.file_id
RETURNING files.id;

-- name: status_counts
SELECT status, count(*) AS n FROM alerts WHERE file_id = %(file_id)s AND status <> 'delivered'
GROUP BY status;

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
SELECT count(*) FILTER (WHERE status = 'dlq') AS dlq,
       count(*) FILTER (WHERE status = 'dead') AS dead
FROM alerts WHERE status IN ('dlq', 'dead');

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
-- batches: the reader's memory does not grow with the file.
SELECT line, user_id, alert_id, status, http_code, error FROM (
    SELECT line_no AS line, user_id, id AS alert_id, status, last_status_code AS http_code,
           last_error AS error
    FROM alerts WHERE file_id = %(file_id)s
    UNION ALL
    SELECT line_no, NULL, NULL, 'invalid', NULL, reason
    FROM row_errors WHERE file_id = %(file_id)s
) AS lines
ORDER BY line, alert_id;
