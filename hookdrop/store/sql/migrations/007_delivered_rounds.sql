-- hookdrop schema, version 7: an alert delivered at its first try is not written again.
--
-- Almost every alert is delivered at its first try. Its alert row was written a second time
-- for that outcome (an UPDATE of the whole row, with a new entry in the primary key and a dead
-- row version for VACUUM): half of what PostgreSQL spent per alert. Now a notifier records
-- those outcomes as one row per round of outcomes here, and the alert row stays as the
-- batcher inserted it, status 'pending'.
--
-- - An alert is delivered when its status is 'delivered' (an outcome after failed tries, and
--   every alert delivered before this version) or when its id is in a row here for its chunk.
-- - Only an alert never tried before (status 'pending', no attempts, no 429) and delivered at
--   its first try in this job goes here; every other outcome updates the alert row as before.
-- - The files' counters count both (delivered), in the same statement that writes either.
-- - alerts_open listed every alert not delivered; pending alerts delivered here would stay in
--   it for good. alerts_waiting lists the alerts off that path only (retrying, throttled, in the
--   DLQ, deferred, dead, rejected, cancelled): what the sweeps and the status views look up by
--   status. Pending ones are found file by file (alerts_by_file), or counted from the files'
--   counters.
-- - Stop every notifier of an earlier version before upgrading: they do not read this table.

CREATE TABLE IF NOT EXISTS deliveries (
    file_id   bigint      NOT NULL,
    chunk_seq integer     NOT NULL,
    ids       text[]      NOT NULL,   -- alerts delivered at their first try, in one round
    codes     integer[]   NOT NULL,   -- the receiver's status code, per id
    latencies real[]      NOT NULL,   -- milliseconds, per id
    at        timestamptz NOT NULL DEFAULT now()
);
-- By chunk; and a round is written once: a retry of the same round (the answer to its commit
-- was lost) finds its first id taken.
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_once ON deliveries (file_id, chunk_seq, (ids[1]));

CREATE INDEX IF NOT EXISTS alerts_waiting ON alerts (status, file_id)
    WHERE status NOT IN ('pending', 'delivered');
DROP INDEX IF EXISTS alerts_open;
DROP INDEX IF EXISTS alerts_deferred;

-- Every alert delivered in a round, one row each: the one definition statements read.
CREATE OR REPLACE VIEW round_deliveries AS
SELECT d.file_id, d.chunk_seq, s.id, s.code
FROM deliveries AS d CROSS JOIN LATERAL unnest(d.ids, d.codes) AS s(id, code);

-- The alerts each chunk lease holds that no round of its chunk delivered, with their status:
-- the lease's ids, each looked up by primary key (OFFSET 0 keeps the lookup per id: joined
-- plainly, the planner may read the whole ledger and match it against the leases).
CREATE OR REPLACE VIEW lease_holds AS
SELECT l.file_id, l.chunk_seq, l.until, held.id, held.status
FROM chunk_leases AS l
CROSS JOIN LATERAL (
    SELECT u.id FROM unnest(l.ids) AS u(id)
    EXCEPT
    SELECT r.id FROM round_deliveries AS r
    WHERE r.file_id = l.file_id AND r.chunk_seq = l.chunk_seq
) AS o
CROSS JOIN LATERAL (
    SELECT a.id, a.status FROM alerts AS a
    WHERE a.id = o.id AND a.file_id = l.file_id AND a.chunk_seq = l.chunk_seq
    OFFSET 0
) AS held;
