-- hookdrop schema, version 4: several endpoints.
--
-- - files.endpoint: the endpoint a file is delivered to (the inbox folder it was dropped in;
--   'default' for the top of the inbox and for every file claimed before this version);
-- - the same content is one file per endpoint: dropped for two endpoints, it is sent to both
--   (its alert ids include the endpoint's name, except for 'default', whose ids are as before);
-- - alerts.body: the body rendered from the endpoint's template when the alert was written;
--   NULL means hookdrop's own JSON body, built when it is sent (nothing stored);
-- - alert status 'deferred': the endpoint is paused (a long 429 pause) or its circuit breaker
--   is open; the alert waits in PostgreSQL, holding no worker, without spending its budget,
--   until the monitor queues it again.

ALTER TABLE files ADD COLUMN IF NOT EXISTS endpoint text NOT NULL DEFAULT 'default';
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS body bytea;

DROP INDEX IF EXISTS files_content_once;
CREATE UNIQUE INDEX IF NOT EXISTS files_content_once
    ON files (content_sha256, endpoint, generation) WHERE status <> 'duplicate';

ALTER TABLE alerts DROP CONSTRAINT IF EXISTS alerts_status_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_status_check CHECK (status IN
    ('pending', 'sending', 'retrying', 'throttled', 'dlq', 'dead', 'delivered', 'rejected',
     'cancelled', 'deferred'));

-- Deferred alerts by file, for the sweep that queues them again.
CREATE INDEX IF NOT EXISTS alerts_deferred ON alerts (file_id) WHERE status = 'deferred';
