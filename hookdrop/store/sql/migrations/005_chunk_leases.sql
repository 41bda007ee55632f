-- hookdrop schema, version 5: one lease per chunk instead of one per alert.
--
-- A notifier used to lease every alert it sent (an UPDATE of each alert row before sending,
-- then another with the outcome): a third of what PostgreSQL spent per alert. Now a job leases
-- its chunk, one row here, and the alert rows are written twice only: by the batcher that
-- inserts them and by the notifier that records their outcome.
--
-- - A chunk is what the batcher wrote in one transaction (alerts.chunk_seq); every notifier job
--   delivers alerts of one chunk, and only the job holding the chunk's lease sends them.
-- - ids: the alerts the holder was given (the monitor queues the open ones among them again
--   when the lease runs out: the holder died, or it handed them back).
-- - An alert is "sending" while it is open and its chunk has a live lease; the status column
--   keeps 'pending' meanwhile.
-- - The per-alert lease columns go. Alerts that were leased the old way become pending: with no
--   chunk lease, the monitor's sweep queues them again. Stop every notifier before upgrading.

CREATE TABLE IF NOT EXISTS chunk_leases (
    file_id   bigint      NOT NULL,
    chunk_seq integer     NOT NULL,
    owner     text        NOT NULL,   -- the job holding it: host:pid:token of one run
    until     timestamptz NOT NULL,   -- renewed while it sends; past: the monitor takes over
    ids       text[]      NOT NULL,   -- the alerts given to the holder
    PRIMARY KEY (file_id, chunk_seq)
);
CREATE INDEX IF NOT EXISTS chunk_leases_until ON chunk_leases (until);

UPDATE alerts SET status = 'pending' WHERE status = 'sending';

ALTER TABLE alerts DROP COLUMN IF EXISTS lease_owner;
ALTER TABLE alerts DROP COLUMN IF EXISTS lease_until;
