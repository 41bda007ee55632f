-- hookdrop schema, version 1.

-- One row per file claimed from the inbox (and per duplicate drop, marked as such).
CREATE TABLE IF NOT EXISTS files (
    id              bigserial PRIMARY KEY,
    name            text        NOT NULL,
    content_sha256  text        NOT NULL,
    generation      integer     NOT NULL DEFAULT 0,   -- 0 = first drop, n = n-th operator resend
    size_bytes      bigint      NOT NULL,
    layout          jsonb,                            -- what sniffing decided (format, columns)
    chunk_size      integer     NOT NULL,             -- fixed per file so chunk boundaries replay exactly
    status          text        NOT NULL,
    -- claimed -> reading -> delivering -> done; or failed, duplicate, cancelled
    duplicate_of    bigint      REFERENCES files (id),
    processing_path text,
    final_path      text,
    claimed_by      text,
    error           text,
    rows_total      bigint      NOT NULL DEFAULT 0,   -- records read (valid + invalid)
    rows_invalid    bigint      NOT NULL DEFAULT 0,
    alerts_total    bigint      NOT NULL DEFAULT 0,   -- unique alerts (repeated rows are one alert)
    read_complete   boolean     NOT NULL DEFAULT false,
    delivered       bigint      NOT NULL DEFAULT 0,
    rejected        bigint      NOT NULL DEFAULT 0,
    dead            bigint      NOT NULL DEFAULT 0,
    cancelled       bigint      NOT NULL DEFAULT 0,
    paused          boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    read_done_at    timestamptz,
    first_delivery_at timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT files_status_check CHECK (status IN
        ('claimed', 'reading', 'delivering', 'done', 'failed', 'duplicate', 'cancelled'))
);

-- The same content is processed once per generation; duplicates get their own row.
CREATE UNIQUE INDEX IF NOT EXISTS files_content_once
    ON files (content_sha256, generation) WHERE status <> 'duplicate';
CREATE INDEX IF NOT EXISTS files_active ON files (status)
    WHERE status IN ('claimed', 'reading', 'delivering');

-- The ledger: one row per alert id, from the batcher's insert to the delivery result.
CREATE TABLE IF NOT EXISTS alerts (
    id               text        PRIMARY KEY,
    file_id          bigint      NOT NULL REFERENCES files (id),
    chunk_seq        integer     NOT NULL,          -- the chunk that first read this alert
    line_no          bigint      NOT NULL,
    user_id          text        NOT NULL,
    message          text        NOT NULL,
    extra            jsonb,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,   -- failed tries (429s do not count)
    throttled        integer     NOT NULL DEFAULT 0,   -- 429 answers seen
    lease_owner      text,
    lease_until      timestamptz,
    next_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    latency_ms       real,
    first_attempt_at timestamptz,
    last_attempt_at  timestamptz,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alerts_status_check CHECK (status IN
        ('pending', 'sending', 'retrying', 'throttled', 'dlq', 'dead', 'delivered', 'rejected',
         'cancelled'))
) WITH (fillfactor = 80);

CREATE INDEX IF NOT EXISTS alerts_by_file ON alerts (file_id);
-- Small: only alerts still moving (delivered ones leave it).
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (status, file_id)
    WHERE status <> 'delivered';

-- Rows that could not become alerts, with where and why.
CREATE TABLE IF NOT EXISTS row_errors (
    file_id  bigint NOT NULL REFERENCES files (id),
    line_no  bigint NOT NULL,
    reason   text   NOT NULL,
    excerpt  text   NOT NULL,
    PRIMARY KEY (file_id, line_no)
);
