-- hookdrop schema, version 2: which file was claimed, so a batcher reads that file and no other.

ALTER TABLE files ADD COLUMN IF NOT EXISTS file_key text;        -- "<device>:<inode>" at claim
ALTER TABLE files ADD COLUMN IF NOT EXISTS mtime_ns bigint;      -- modification time at claim
ALTER TABLE files ADD COLUMN IF NOT EXISTS ctime_ns bigint;      -- change time, after the claim's rename
