-- hookdrop schema, version 6: no planner statistics on columns no statement filters on.
--
-- ANALYZE of alerts (the monitor takes one whenever the table has grown fourfold, and
-- autovacuum takes more) sorts a sample of every column to describe it; the message and user
-- columns are text compared by the database's collation, the costliest to sort. No statement
-- filters, joins or groups alerts on the columns below, so their statistics guide no plan:
-- ANALYZE now skips them, and costs about half as much. On an upgraded ledger the statistics
-- an earlier ANALYZE took of them stay as they were, unused.

ALTER TABLE alerts
    ALTER COLUMN user_id SET STATISTICS 0,
    ALTER COLUMN message SET STATISTICS 0,
    ALTER COLUMN extra SET STATISTICS 0,
    ALTER COLUMN body SET STATISTICS 0,
    ALTER COLUMN attempts SET STATISTICS 0,
    ALTER COLUMN throttled SET STATISTICS 0,
    ALTER COLUMN last_status_code SET STATISTICS 0,
    ALTER COLUMN last_error SET STATISTICS 0,
    ALTER COLUMN latency_ms SET STATISTICS 0,
    ALTER COLUMN first_attempt_at SET STATISTICS 0,
    ALTER COLUMN last_attempt_at SET STATISTICS 0,
    ALTER COLUMN delivered_at SET STATISTICS 0;
