-- skiplock schema, version 3: one index over running jobs instead of three, and autovacuum tuned for a queue.
--
-- A claim's UPDATE moves each row into the `running` partial indexes, one entry per index. Three
-- of them (lease expiry, worker, type/tenant) cost a claim three index inserts per job; one index
-- keyed on the lease, carrying the other columns, serves every reader of running jobs: the rescue
-- (a range on lease_expires_at), the operator's per-worker counts and the limits' running counts
-- (a walk of the running jobs, which number at most the workers' total concurrency).
CREATE INDEX jobs_running_idx ON skiplock.jobs (lease_expires_at) INCLUDE (worker_id, type, tenant)
    WHERE state = 'running';
DROP INDEX skiplock.jobs_lease_idx;
DROP INDEX skiplock.jobs_worker_idx;
DROP INDEX skiplock.jobs_running_type_idx;

-- A queue table churns: every claim and finish leaves a dead row version and, in jobs_claim_idx, a
-- dead entry at the head of the index that every claim walks until a vacuum removes it (measured:
-- 10 ms per claim after 200k jobs without one). The defaults wait for 20 % of the table to be dead;
-- vacuum the hot table after a few thousand changes instead, at full speed.
ALTER TABLE skiplock.jobs SET (
    autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0.0, autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0);
