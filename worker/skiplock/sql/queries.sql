-- Every statement skiplock runs, by name. Loaded once by skiplock.sql; used as QUERIES["name"].
-- Parameters are psycopg named placeholders; nothing is ever formatted into the text.
-- State lists are named, never written out: {{runnable}}, {{finished}}... are the sets of
-- skiplock.states (the one transitions table), expanded when skiplock.sql loads this file.
-- "Runnable" means state IN {{runnable}} AND run_at <= now(): a scheduled or retrying job becomes
-- runnable when its time comes, with no promoter process.

-- name: lock_parents
-- Enqueue with dependencies, step 1 (same transaction as enqueue): lock each parent and mark that
-- it has dependents, so that its finish (which takes the same row lock) propagates to the child.
WITH locked AS (
    UPDATE skiplock.jobs SET has_dependents = true
    WHERE id = ANY(%(ids)s::bigint[])
    RETURNING id, state::text
)
SELECT id, state FROM locked
UNION ALL
SELECT id, state::text FROM skiplock.jobs_history
WHERE id = ANY(%(ids)s::bigint[]) AND id NOT IN (SELECT id FROM locked);

-- name: enqueue
-- Insert a batch (thousands per round trip) from one JSON array; wake idle workers by NOTIFY
-- (delivered at commit, so enqueueing inside the caller's transaction wakes nobody early), and
-- tell them on skiplock_due ('queue epoch') when the soonest scheduled job of a queue is due.
-- RETURNING gives the inserted rows; duplicates of an unfinished dedup_key are skipped. What a job
-- leaves unset comes from its queue's settings (skiplock.queues): max_attempts (else 5) and the
-- lifetimes; a ttl runs from when the job is due: expires_at = max(now, run_at) + ttl.
WITH rows AS (
    SELECT * FROM jsonb_to_recordset(%(jobs)s::jsonb) AS r(
        ord integer, queue text, type text, payload jsonb, priority integer, run_at timestamptz,
        max_attempts integer, timeout_seconds double precision, tenant text, labels jsonb,
        dedup_key text, depends_on bigint[], pending_deps integer, dep_error text, ttl_seconds double precision,
        result_ttl_seconds double precision, failure_ttl_seconds double precision, retry_policy jsonb)
), ins AS (
    INSERT INTO skiplock.jobs (queue, type, payload, priority, state, run_at, max_attempts,
                               timeout_seconds, tenant, labels, dedup_key, depends_on,
                               pending_deps, last_error, finished_at, retry_policy, ttl_seconds, expires_at,
                               result_ttl_seconds, failure_ttl_seconds)
    SELECT r.queue, r.type, r.payload, r.priority,
           CASE WHEN r.dep_error IS NOT NULL THEN 'cancelled'
                WHEN r.pending_deps > 0 THEN 'blocked'
                WHEN r.run_at > now() THEN 'scheduled'
                ELSE 'pending' END::skiplock.job_state,
           coalesce(r.run_at, now()), coalesce(r.max_attempts, q.max_attempts, 5), r.timeout_seconds, r.tenant,
           r.labels, r.dedup_key, r.depends_on, r.pending_deps, r.dep_error,
           CASE WHEN r.dep_error IS NOT NULL THEN now() END,
           nullif(r.retry_policy, 'null'), coalesce(r.ttl_seconds, q.ttl_seconds),
           greatest(r.run_at, now()) + make_interval(secs => coalesce(r.ttl_seconds, q.ttl_seconds)),
           coalesce(r.result_ttl_seconds, q.result_ttl_seconds), coalesce(r.failure_ttl_seconds, q.failure_ttl_seconds)
    FROM rows r LEFT JOIN skiplock.queues q ON q.name = r.queue
    ORDER BY r.ord
    ON CONFLICT (queue, dedup_key)
        WHERE dedup_key IS NOT NULL AND state NOT IN {{finished}}
        DO NOTHING
    RETURNING id, queue, dedup_key, state::text, run_at
), wake AS (
    SELECT pg_notify('skiplock_jobs', q.queue) FROM (SELECT DISTINCT queue FROM ins WHERE state = 'pending') q
    UNION ALL  -- idle workers poll seldom: tell them when the soonest scheduled job is due
    SELECT pg_notify('skiplock_due', t.queue || ' ' || extract(epoch FROM t.due)::text)
    FROM (SELECT queue, min(run_at) AS due FROM ins WHERE state = 'scheduled' GROUP BY queue) t
)
SELECT id, queue, dedup_key, state, (SELECT count(*) FROM wake) AS woken FROM ins ORDER BY id;

-- name: find_dedup
-- The unfinished jobs that hold the given (queue, dedup_key) pairs.
SELECT j.id, j.queue, j.dedup_key FROM skiplock.jobs j
JOIN unnest(%(queues)s::text[], %(keys)s::text[]) AS k(queue, dedup_key)
  ON j.queue = k.queue AND j.dedup_key = k.dedup_key
WHERE j.state NOT IN {{finished}};

-- fragment: claim_next
-- The jobs a claim takes (the `next` CTE of claim and claim_announce).
SELECT id FROM skiplock.jobs
WHERE state IN {{runnable}}
  AND queue = %(queue)s
  AND run_at <= now()
  AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s::text[]))
  AND (expires_at IS NULL OR expires_at > now())
  AND NOT EXISTS (SELECT 1 FROM skiplock.limits l WHERE l.type = jobs.type)
ORDER BY priority DESC, run_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- fragment: claim_take
-- What a claim does to the jobs in `next`: each runs under a lease and has spent an attempt.
UPDATE skiplock.jobs j
SET state = 'running', attempts = j.attempts + 1, worker_id = %(worker_id)s,
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
    started_at = now(), updated_at = now()
FROM next WHERE j.id = next.id
RETURNING j.id, j.queue, j.type, j.payload, j.priority, j.attempts, j.max_attempts,
          j.timeout_seconds, j.tenant, j.labels, j.run_at, j.created_at

-- name: claim
-- Claim up to %(limit)s runnable jobs of one queue in one statement, highest priority first, then
-- oldest run_at, then id: an ordered walk of jobs_claim_idx, no sort (guarded by an EXPLAIN test).
-- A worker serving several queues claims from each in turn. Each claim spends an attempt and
-- starts a lease that the worker's heartbeat renews. A job past its ttl is not claimed (maintenance
-- ends it cancelled: `expire`). Jobs of types that have limits are left to
-- claim_limited, so a worker that has not yet noticed a new limit can never break it.
WITH next AS ({{> claim_next}})
{{> claim_take}};

-- name: claim_announce
-- `claim`, for a worker among many idle ones of the queue: when the claim takes fewer jobs than it
-- asked for (nothing more is runnable), it says so on skiplock_drained ('worker_id<newline>queue'),
-- so the others woken by the same NOTIFY, still waiting their random backoff, do not claim in
-- vain. Always returns one row (a NULL id when nothing was claimed).
WITH next AS ({{> claim_next}}),
claimed AS ({{> claim_take}}),
drained AS (
    SELECT pg_notify('skiplock_drained', %(worker_id)s || E'\n' || %(queue)s)
    WHERE (SELECT count(*) FROM claimed) < %(limit)s
)
SELECT c.* FROM (SELECT count(*) FROM drained) d LEFT JOIN claimed c ON true;

-- name: finish
-- Record the outcome of a batch of executions: completed (with result), failed (retry after the
-- retry policy's delay, or dead when attempts are spent), dead (permanent failure) or cancelled.
-- A failure after a cancel request ends cancelled, not retry: the request is honoured, and like
-- every end of an execution this clears it. `retry_in` (optional, per outcome) overrides the
-- policy's delay. Only the execution that holds the lease may finish a job: a late finish from a
-- lease that was rescued (and maybe re-claimed: attempts moved on) changes nothing.
-- The batch is found by primary key whatever the statistics say: `id = ANY(ids)` gives the planner
-- the row count, and `state::text = 'running'` (not `state = 'running'`) keeps it off
-- jobs_running_idx (stale statistics made it walk every job claimed since the last vacuum, or
-- scan the whole table, to find a hundred).
WITH f AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
        AS f(id bigint, attempt integer, outcome text, result jsonb, error text, retry_in double precision)
), done AS (
    UPDATE skiplock.jobs j
    SET state = CASE
            -- completed, cancelled, dead: as said
            WHEN f.outcome <> 'failed' THEN f.outcome
            WHEN j.attempts >= j.max_attempts THEN 'dead'
            WHEN j.cancel_requested THEN 'cancelled'
            ELSE 'retry' END::skiplock.job_state,
        result = CASE WHEN f.outcome = 'completed' THEN f.result ELSE j.result END,
        last_error = CASE WHEN f.outcome = 'completed' THEN j.last_error ELSE f.error END,
        run_at = CASE WHEN f.outcome = 'failed' AND j.attempts < j.max_attempts AND NOT j.cancel_requested
                      THEN now() + make_interval(secs => coalesce(
                               f.retry_in, skiplock.retry_delay(coalesce(j.retry_policy,
                                   (SELECT q.retry_policy FROM skiplock.queues q WHERE q.name = j.queue),
                                   %(retry_policy)s::jsonb), j.attempts)))
                      ELSE j.run_at END,
        finished_at = CASE WHEN f.outcome = 'failed' AND j.attempts < j.max_attempts AND NOT j.cancel_requested
                           THEN NULL ELSE now() END,
        cancel_requested = false, lease_expires_at = NULL, updated_at = now()
    FROM f
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = f.id AND j.attempts = f.attempt
      AND j.state::text = 'running' AND j.worker_id = %(worker_id)s
    RETURNING j.id, j.attempts, j.queue, j.type, j.state::text, j.notify_finish, j.run_at
), notified AS (
    SELECT pg_notify('skiplock_finished', id::text) FROM done WHERE notify_finish AND state <> 'retry'
    UNION ALL  -- when the soonest retry of a queue is due, for idle workers (see enqueue)
    SELECT pg_notify('skiplock_due', t.queue || ' ' || extract(epoch FROM t.due)::text)
    FROM (SELECT queue, min(run_at) AS due FROM done WHERE state = 'retry' GROUP BY queue) t
)
SELECT id, attempts, queue, type, state, (SELECT count(*) FROM notified) AS notified FROM done;

-- name: propagate
-- After parents finish in this transaction (xmin = this transaction), settle their blocked
-- children: a completed parent counts down pending_deps and releases the child at zero; a dead or
-- cancelled parent cancels it. Returns the children changed; the caller repeats for cancelled
-- children that have dependents of their own (each round is a new statement, a new snapshot).
-- The batch is read by primary key alone: with a state predicate beside the ids, stale statistics
-- (taken before the finishes) let the planner walk jobs_finished_idx, every finished job.
WITH batch AS MATERIALIZED (
    SELECT id, state, has_dependents, xmin AS row_xmin FROM skiplock.jobs WHERE id = ANY(%(ids)s::bigint[])
), parents AS (
    SELECT id, state FROM batch
    WHERE has_dependents AND state IN {{finished}} AND row_xmin = pg_current_xact_id()::xid
), hits AS (
    SELECT c.id,
           count(*) FILTER (WHERE p.state = 'completed') AS done,
           min(p.id) FILTER (WHERE p.state <> 'completed') AS failed_parent
    FROM skiplock.jobs c JOIN parents p ON c.depends_on @> ARRAY[p.id]
    WHERE c.state = 'blocked'
    GROUP BY c.id
), changed AS (
    UPDATE skiplock.jobs j
    SET pending_deps = j.pending_deps - h.done,
        state = CASE WHEN h.failed_parent IS NOT NULL THEN 'cancelled'
                     WHEN j.pending_deps - h.done > 0 THEN 'blocked'
                     WHEN j.run_at > now() THEN 'scheduled'
                     ELSE 'pending' END::skiplock.job_state,
        last_error = CASE WHEN h.failed_parent IS NOT NULL
                          THEN 'dependency ' || h.failed_parent || ' did not complete'
                          ELSE j.last_error END,
        finished_at = CASE WHEN h.failed_parent IS NOT NULL THEN now() END,
        updated_at = now()
    FROM hits h WHERE j.id = h.id AND j.state = 'blocked'
    RETURNING j.id, j.queue, j.state::text, j.has_dependents
), wake AS (
    SELECT pg_notify('skiplock_jobs', q.queue) FROM (SELECT DISTINCT queue FROM changed WHERE state = 'pending') q
)
SELECT id, queue, state, has_dependents, (SELECT count(*) FROM wake) AS woken FROM changed;

-- name: heartbeat
-- One statement per worker per interval: record the worker as seen and renew the leases of all
-- its running jobs. Returns the executions (id, attempt) it still holds and whether a cancel was
-- requested; an execution not returned lost its lease (rescued, maybe re-claimed) and must stop.
WITH seen AS (
    INSERT INTO skiplock.workers (id, queues, types, hostname, pid, concurrency, in_flight)
    VALUES (%(worker_id)s, %(queues)s::text[], %(types)s::text[], %(hostname)s, %(pid)s,
            %(concurrency)s, cardinality(%(ids)s::bigint[]))
    ON CONFLICT (id) DO UPDATE
        SET last_seen_at = now(), in_flight = excluded.in_flight, queues = excluded.queues,
            types = excluded.types, concurrency = excluded.concurrency
)
UPDATE skiplock.jobs
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
WHERE id = ANY(%(ids)s::bigint[]) AND worker_id = %(worker_id)s AND state::text = 'running'  -- by id (see finish)
RETURNING id, attempts, cancel_requested;

-- name: worker_gone
-- A worker that stops cleanly removes its row, and hands back the leadership if it held it.
WITH resigned AS (DELETE FROM skiplock.leaders WHERE holder = %(worker_id)s)
DELETE FROM skiplock.workers WHERE id = %(worker_id)s;

-- name: worker_heartbeat
-- The worker's heartbeat: `heartbeat` (worker row, lease renewal, cancel requests) plus the
-- leadership of cluster-wide work (maintenance, schedules, queue-wide metrics): renewed by its
-- holder, taken by anyone once it expired (a holder that died: after %(leader_seconds)s). Still
-- one statement per worker per interval; non-holders only read the leaders row. Returns the
-- renewed executions, and one row with a NULL id when there are none; `leader` and `peers` (live
-- workers sharing one of its queues, itself included) on every row.
WITH seen AS (
    INSERT INTO skiplock.workers (id, queues, types, hostname, pid, concurrency, in_flight)
    VALUES (%(worker_id)s, %(queues)s::text[], %(types)s::text[], %(hostname)s, %(pid)s,
            %(concurrency)s, cardinality(%(ids)s::bigint[]))
    ON CONFLICT (id) DO UPDATE
        SET last_seen_at = now(), in_flight = excluded.in_flight, queues = excluded.queues,
            types = excluded.types, concurrency = excluded.concurrency
), lead AS (
    INSERT INTO skiplock.leaders (name, holder, expires_at)
    SELECT 'maintenance', %(worker_id)s, now() + make_interval(secs => %(leader_seconds)s)
    WHERE NOT EXISTS (SELECT 1 FROM skiplock.leaders l
                      WHERE l.name = 'maintenance' AND l.holder <> %(worker_id)s AND l.expires_at > now())
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
        WHERE leaders.holder = excluded.holder OR leaders.expires_at < now()
    RETURNING holder
), renewed AS (
    UPDATE skiplock.jobs
    SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
    WHERE id = ANY(%(ids)s::bigint[]) AND worker_id = %(worker_id)s AND state::text = 'running'  -- by id (see finish)
    RETURNING id, attempts, cancel_requested
)
SELECT r.id, r.attempts, r.cancel_requested, EXISTS (SELECT 1 FROM lead) AS leader,
       (SELECT count(*) FROM skiplock.workers w  -- live workers sharing a queue: the herd's size
        WHERE w.queues && %(queues)s::text[]
          AND w.last_seen_at > now() - make_interval(secs => %(leader_seconds)s)) AS peers
FROM (SELECT 1) one LEFT JOIN renewed r ON true;

-- name: release
-- Graceful shutdown: hand back executions (id, attempt) this worker will not finish, without
-- spending the attempt. One whose lease was rescued meanwhile is not this worker's to release.
-- A job whose cancel was requested is not handed back to run again: it ends cancelled.
WITH released AS (
    UPDATE skiplock.jobs j
    SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'pending' END::skiplock.job_state,
        attempts = j.attempts - 1,
        last_error = CASE WHEN j.cancel_requested THEN 'cancelled by request (stopped at worker shutdown)'
                          ELSE j.last_error END,
        finished_at = CASE WHEN j.cancel_requested THEN now() END,
        cancel_requested = false, worker_id = NULL, lease_expires_at = NULL, updated_at = now()
    FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS r(id, attempt)
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = r.id AND j.attempts = r.attempt
      AND j.worker_id = %(worker_id)s AND j.state::text = 'running'  -- by id (see finish)
    RETURNING j.id, j.queue, j.state::text, j.notify_finish
), wake AS (
    SELECT pg_notify('skiplock_jobs', q.queue) FROM (SELECT DISTINCT queue FROM released WHERE state = 'pending') q
), notified AS (
    SELECT pg_notify('skiplock_finished', id::text) FROM released WHERE notify_finish AND state = 'cancelled'
)
SELECT id, queue, state, (SELECT count(*) FROM wake) AS woken, (SELECT count(*) FROM notified) AS notified
FROM released;

-- name: try_maintenance_lock
-- Workers (and the operator) run recovery and retention under this lock: one at a time.
SELECT pg_try_advisory_xact_lock(hashtext('skiplock.maintenance')) AS locked;

-- name: rescue
-- Recovery: running jobs whose lease expired, or whose worker is known to be gone (the operator
-- passes the worker ids of deleted pods). The execution failed: the job retries after the retry
-- policy's delay (the job's, its queue's, else the caller's), exactly as a failure recorded by finish would; dead when its attempts are spent;
-- cancelled when a cancel was requested (the request ends with its execution). Shared by the
-- workers' maintenance service and the operator.
WITH rescued AS (
    UPDATE skiplock.jobs j
    SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead'
                     WHEN j.cancel_requested THEN 'cancelled'
                     ELSE 'retry' END::skiplock.job_state,
        run_at = CASE WHEN j.attempts < j.max_attempts AND NOT j.cancel_requested
                      THEN now() + make_interval(secs => skiplock.retry_delay(coalesce(j.retry_policy,
                               (SELECT q.retry_policy FROM skiplock.queues q WHERE q.name = j.queue),
                               %(retry_policy)s::jsonb), j.attempts))
                      ELSE j.run_at END,
        last_error = CASE WHEN j.worker_id = ANY(%(gone_workers)s::text[])
                          THEN 'worker ' || j.worker_id || ' is gone'
                          ELSE 'lease expired on worker ' || j.worker_id END,
        finished_at = CASE WHEN j.attempts >= j.max_attempts OR j.cancel_requested THEN now() END,
        cancel_requested = false, worker_id = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE j.state = 'running'
      AND (j.lease_expires_at < now() OR j.worker_id = ANY(%(gone_workers)s::text[]))
    RETURNING j.id, j.queue, j.state::text, j.run_at, j.notify_finish
), wake AS (
    SELECT pg_notify('skiplock_jobs', q.queue)
    FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'retry' AND run_at <= now()) q
    UNION ALL  -- retries due later: when (see enqueue)
    SELECT pg_notify('skiplock_due', t.queue || ' ' || extract(epoch FROM t.due)::text)
    FROM (SELECT queue, min(run_at) AS due FROM rescued WHERE state = 'retry' AND run_at > now() GROUP BY queue) t
), notified AS (
    SELECT pg_notify('skiplock_finished', id::text) FROM rescued WHERE notify_finish AND state <> 'retry'
)
SELECT id, queue, state, (SELECT count(*) FROM wake) AS woken, (SELECT count(*) FROM notified) AS notified
FROM rescued;

-- name: forget_workers
-- Drop worker rows not seen for a while (they stopped without saying so).
DELETE FROM skiplock.workers WHERE last_seen_at < now() - make_interval(secs => %(older_than)s);

-- name: archive
-- Retention: move finished jobs older than the window out of the hot table, a bounded batch per
-- call, so that claim cost stays flat however long the history grows. Returns how many moved (a
-- full batch: the caller moves another, so retention keeps up with any throughput).
WITH moved AS (
    DELETE FROM skiplock.jobs WHERE id IN (
        SELECT id FROM skiplock.jobs
        WHERE state IN {{finished}}
          AND finished_at < now() - make_interval(secs => CASE WHEN state = 'dead'
                                   THEN %(dead_after)s::float8 ELSE %(finished_after)s::float8 END)
        ORDER BY finished_at LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
    RETURNING *
), kept AS (
    INSERT INTO skiplock.jobs_history SELECT * FROM moved RETURNING 1
)
SELECT count(*) AS moved FROM kept;

-- name: expire
-- Lifetimes, 1: jobs still waiting (scheduled, blocked, pending, retry) past expires_at (their ttl
-- from when they were due) end cancelled with the reason, a bounded batch per call, oldest first.
-- The claim already skips them; this records the end (and the caller settles their dependents).
WITH expired AS (
    UPDATE skiplock.jobs j
    SET state = 'cancelled', finished_at = now(), updated_at = now(),
        last_error = 'expired: not started within its ttl of ' || j.ttl_seconds || 's'
    WHERE j.id IN (
        SELECT id FROM skiplock.jobs
        WHERE expires_at IS NOT NULL AND state IN {{expirable}} AND expires_at < now()
        ORDER BY expires_at LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
    RETURNING j.id, j.queue, j.state::text, j.notify_finish
), notified AS (
    SELECT pg_notify('skiplock_finished', id::text) FROM expired WHERE notify_finish
)
SELECT id, queue, state, (SELECT count(*) FROM notified) AS notified FROM expired;

-- name: expire_finished
-- Lifetimes, 2: finished jobs whose result_ttl (completed) or failure_ttl (dead, cancelled) has
-- passed since they finished are deleted, from the hot table and the history, a bounded batch of
-- each per call (jobs_delete_after_idx: only jobs with a lifetime are looked at).
WITH hot AS (
    DELETE FROM skiplock.jobs WHERE id IN (
        SELECT id FROM skiplock.jobs
        WHERE state IN {{finished}} AND (result_ttl_seconds IS NOT NULL OR failure_ttl_seconds IS NOT NULL)
          AND skiplock.delete_after(state, finished_at, result_ttl_seconds, failure_ttl_seconds)
              < (now() AT TIME ZONE 'UTC')
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
    RETURNING 1
), hist AS (
    DELETE FROM skiplock.jobs_history WHERE id IN (
        SELECT id FROM skiplock.jobs_history
        WHERE (result_ttl_seconds IS NOT NULL OR failure_ttl_seconds IS NOT NULL)
          AND skiplock.delete_after(state, finished_at, result_ttl_seconds, failure_ttl_seconds)
              < (now() AT TIME ZONE 'UTC')
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
SELECT (SELECT count(*) FROM hot) + (SELECT count(*) FROM hist) AS deleted;

-- name: purge
-- Delete finished jobs that match %(filter)s (skiplock.job_matches; older_than counts from when they
-- finished), or only those of %(ids)s, from both tables (whatever the filter says, only finished jobs).
WITH hot AS (
    DELETE FROM skiplock.jobs
    WHERE state IN {{finished}} AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND skiplock.job_matches(%(filter)s::jsonb, queue, type, tenant, state, labels, finished_at)
    RETURNING 1
), hist AS (
    DELETE FROM skiplock.jobs_history
    WHERE state IN {{finished}} AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND skiplock.job_matches(%(filter)s::jsonb, queue, type, tenant, state, labels, finished_at)
    RETURNING 1
)
SELECT (SELECT count(*) FROM hot) + (SELECT count(*) FROM hist) AS purged;

-- name: count_matching
-- How many jobs match %(filter)s (skiplock.job_matches), in the hot table and, unless %(hot_only)s,
-- the history: what a bulk action will touch, said before it asks.
SELECT count(*) AS jobs FROM (
    SELECT queue, type, tenant, state, labels, coalesce(finished_at, created_at) AS since FROM skiplock.jobs
    UNION ALL
    SELECT queue, type, tenant, state, labels, coalesce(finished_at, created_at) FROM skiplock.jobs_history
    WHERE NOT %(hot_only)s
) j
WHERE skiplock.job_matches(%(filter)s::jsonb, j.queue, j.type, j.tenant, j.state, j.labels, j.since);

-- name: cancel
-- Cancel one job (%(id)s) or every job that matches %(filter)s: jobs that have not started never
-- run; a running job gets cancel_requested, which its handler sees through the next heartbeat
-- (cooperative). The request lives as long as that execution: finish, rescue and release clear it,
-- and end the job cancelled instead of running it again (docs/state-machine.md).
WITH c AS (
    UPDATE skiplock.jobs
    SET state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END::skiplock.job_state,
        cancel_requested = state = 'running',
        last_error = CASE WHEN state = 'running' THEN last_error ELSE %(reason)s END,
        finished_at = CASE WHEN state = 'running' THEN finished_at ELSE now() END,
        updated_at = now()
    WHERE (%(id)s::bigint IS NULL OR id = %(id)s::bigint) AND state IN {{cancellable}}
      AND skiplock.job_matches(%(filter)s::jsonb, queue, type, tenant, state, labels, created_at)
    RETURNING id, state::text, notify_finish
), notified AS (
    SELECT pg_notify('skiplock_finished', id::text) FROM c WHERE notify_finish AND state = 'cancelled'
)
SELECT id, state, (SELECT count(*) FROM notified) AS notified FROM c;

-- name: unarchive
-- Bring a job back from the history table (step 1 of retry).
WITH back AS (DELETE FROM skiplock.jobs_history WHERE id = %(id)s RETURNING *)
INSERT INTO skiplock.jobs OVERRIDING SYSTEM VALUE SELECT * FROM back RETURNING id;

-- name: retry
-- Run one job (%(id)s) or every job matching %(filter)s again now, with a fresh set of attempts (and a
-- fresh ttl): finished or waiting jobs of the hot table (`unarchive` brings one back first).
WITH r AS (
    UPDATE skiplock.jobs
    SET state = 'pending', attempts = 0, run_at = now(), finished_at = NULL, result = NULL,
        cancel_requested = false, worker_id = NULL, lease_expires_at = NULL, updated_at = now(),
        expires_at = now() + make_interval(secs => ttl_seconds)
    WHERE (%(id)s::bigint IS NULL OR id = %(id)s::bigint) AND state IN {{retryable}}
      AND skiplock.job_matches(%(filter)s::jsonb, queue, type, tenant, state, labels,
                               coalesce(finished_at, created_at))
    RETURNING id, queue
), wake AS (SELECT pg_notify('skiplock_jobs', q.queue) FROM (SELECT DISTINCT queue FROM r) q)
SELECT id, queue, (SELECT count(*) FROM wake) AS woken FROM r;

-- name: update_job
-- Reprioritise or reschedule a job that has not started: a pending job moved later becomes
-- scheduled, a scheduled one moved to now becomes pending (a retrying or blocked job keeps its
-- state). Its ttl runs again from the new time it is due.
WITH u AS (
    UPDATE skiplock.jobs
    SET priority = coalesce(%(priority)s::integer, priority),
        run_at = coalesce(%(run_at)s::timestamptz, run_at),
        state = CASE WHEN state = 'pending' OR state = 'scheduled'
                     THEN CASE WHEN coalesce(%(run_at)s::timestamptz, run_at) > now() THEN 'scheduled' ELSE 'pending' END
                     ELSE state::text END::skiplock.job_state,
        expires_at = CASE WHEN %(run_at)s::timestamptz IS NULL THEN expires_at
                          ELSE greatest(%(run_at)s::timestamptz, now()) + make_interval(secs => ttl_seconds) END,
        updated_at = now()
    WHERE id = %(id)s AND state IN {{expirable}}
    RETURNING id, queue, state::text
), wake AS (SELECT pg_notify('skiplock_jobs', queue) FROM u WHERE state = 'pending')
SELECT id, queue, state, (SELECT count(*) FROM wake) AS woken FROM u;

-- name: watch
-- A producer about to wait for a result asks for a NOTIFY when the job finishes.
UPDATE skiplock.jobs SET notify_finish = true
WHERE id = %(id)s AND state NOT IN {{finished}}
RETURNING id;

-- name: get_job
SELECT *, false AS archived FROM skiplock.jobs WHERE id = %(id)s
UNION ALL
SELECT *, true AS archived FROM skiplock.jobs_history WHERE id = %(id)s;

-- name: list_jobs
-- Newest first, from both tables, filtered by %(filter)s (skiplock.job_matches: states, queue, type,
-- tenant, labels). With %(brief)s (list pages), the payload and result stay in the database (NULL
-- here, never read from storage) and the error is cut to its first 4000 characters: a page costs
-- the same whatever the jobs hold.
SELECT j.id, j.queue, j.type, j.priority, j.state, j.run_at, j.attempts, j.max_attempts,
       j.timeout_seconds, j.tenant, j.labels, j.dedup_key, j.depends_on, j.pending_deps,
       j.cancel_requested, j.worker_id, j.lease_expires_at, j.created_at, j.updated_at, j.started_at,
       j.finished_at, j.archived, j.retry_policy, j.ttl_seconds, j.expires_at, j.result_ttl_seconds,
       j.failure_ttl_seconds,
       CASE WHEN %(brief)s THEN NULL ELSE j.payload END AS payload,
       CASE WHEN %(brief)s THEN NULL ELSE j.result END AS result,
       CASE WHEN %(brief)s THEN left(j.last_error, 4000) ELSE j.last_error END AS last_error
FROM (
    SELECT *, false AS archived FROM skiplock.jobs
    UNION ALL
    SELECT *, true AS archived FROM skiplock.jobs_history
) j
WHERE skiplock.job_matches(%(filter)s::jsonb, j.queue, j.type, j.tenant, j.state, j.labels,
                           coalesce(j.finished_at, j.created_at))
ORDER BY j.id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: stats
-- Per queue and effective state (a scheduled or retrying job whose time has come counts as
-- pending), with the age of the oldest pending job.
SELECT queue, state, count(*) AS jobs,
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE state = 'pending')), 0)::float8
           AS oldest_pending_seconds
FROM (
    SELECT queue, run_at,
           CASE WHEN state IN {{timed}} AND run_at <= now() THEN 'pending'
                ELSE state::text END AS state
    FROM skiplock.jobs
) j
GROUP BY queue, state
ORDER BY queue, state;

-- name: depth
-- What the autoscaler needs, by queue and job type: runnable and running jobs, oldest wait.
SELECT queue, type,
       count(*) FILTER (WHERE state <> 'running') AS pending,
       count(*) FILTER (WHERE state = 'running') AS running,
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE state <> 'running')), 0)::float8
           AS oldest_pending_seconds
FROM skiplock.jobs
WHERE queue = ANY(%(queues)s::text[])
  AND (state = 'running' OR (state IN {{runnable}} AND run_at <= now()))
GROUP BY queue, type;

-- name: in_flight_by_worker
-- Running jobs per worker, for the given worker ids (pod deletion cost).
SELECT worker_id, count(*) AS in_flight FROM skiplock.jobs
WHERE state = 'running' AND worker_id = ANY(%(worker_ids)s::text[])
GROUP BY worker_id;

-- name: running_workers
-- Workers that hold running jobs in the given queues (the operator compares them with live pods).
SELECT DISTINCT worker_id FROM skiplock.jobs
WHERE state = 'running' AND queue = ANY(%(queues)s::text[]);

-- name: list_workers
SELECT id, queues, types, hostname, pid, concurrency, in_flight, started_at, last_seen_at
FROM skiplock.workers ORDER BY id;

-- name: claim_limited
-- The claim when limits apply to this worker's types: step 2 of a transaction whose step 1
-- (lock_limits) locked those limit rows, so claims of limited types are serialized and this
-- statement's snapshot sees every committed claim: the running counts are exact. A job whose
-- type/tenant has no headroom is skipped during the index walk (one tenant's backlog cannot hide
-- another tenant's jobs); among the rest, each limited key gets at most its headroom, in claim
-- order. Nothing is claimed that a limit forbids. Headroom of limit l for a job of tenant t:
--   least(concurrency - running jobs of l's type [and of t unless l.tenant = ''], floor(tokens))
-- A rate limit is a token bucket refilled at `rate` per second that holds at most
-- max(1, rate x burst_seconds) tokens: a worker claiming every burst_seconds keeps up with any
-- rate, and no window of T seconds starts more than rate x (T + burst_seconds) jobs.
WITH lim AS (
    SELECT type, tenant, concurrency, rate,
           CASE WHEN rate IS NULL THEN NULL
                ELSE least(greatest(1.0, rate * %(burst_seconds)s::float8),
                           tokens + rate * extract(epoch FROM now() - refilled_at)) END AS tokens_now
    FROM skiplock.limits
    WHERE %(types)s::text[] IS NULL OR type = ANY(%(types)s::text[])
), busy AS (
    SELECT j.type, coalesce(j.tenant, '') AS tenant, count(*) AS n
    FROM skiplock.jobs j
    WHERE j.state = 'running' AND j.type IN (SELECT type FROM lim)
    GROUP BY 1, 2
), blocked AS (
    -- The keys with no headroom: a limit on the whole type ('') blocks every tenant (NULL); a
    -- limit on one tenant blocks that tenant; a per-tenant limit ('*') blocks each tenant whose
    -- running jobs reach it (a tenant with none running always has headroom: concurrency > 0).
    SELECT l.type, CASE WHEN l.tenant = '' THEN NULL ELSE l.tenant END AS tenant
    FROM lim l
    WHERE l.tenant <> '*'
      AND least(coalesce(l.concurrency - (SELECT coalesce(sum(b.n), 0) FROM busy b
                                          WHERE b.type = l.type AND (l.tenant = '' OR b.tenant = l.tenant)),
                         2147483647),
                coalesce(floor(l.tokens_now), 2147483647)) <= 0
    UNION ALL
    SELECT l.type, b.tenant FROM lim l JOIN busy b ON b.type = l.type
    WHERE l.tenant = '*' AND b.n >= l.concurrency
), cand AS (
    -- The blocked keys are two arrays computed once (InitPlans), tested as a plain filter: an
    -- anti-join here let stale statistics turn the ordered index walk into a hash join over every
    -- runnable job and a sort (114 ms per claim measured mid-drain, against ~1 ms for the walk).
    SELECT j.id, j.type, coalesce(j.tenant, '') AS tenant, j.priority, j.run_at
    FROM skiplock.jobs j
    WHERE j.state IN {{runnable}}
      AND j.queue = %(queue)s
      AND j.run_at <= now()
      AND (j.expires_at IS NULL OR j.expires_at > now())
      AND (%(types)s::text[] IS NULL OR j.type = ANY(%(types)s::text[]))
      AND NOT j.type = ANY(ARRAY(SELECT type FROM blocked WHERE tenant IS NULL))
      AND NOT jsonb_build_array(j.type, coalesce(j.tenant, ''))
              = ANY(ARRAY(SELECT jsonb_build_array(type, tenant) FROM blocked WHERE tenant IS NOT NULL))
    ORDER BY j.priority DESC, j.run_at, j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
), applies AS (
    SELECT c.id, c.priority, c.run_at, l.type, l.tenant AS limit_tenant,
           CASE WHEN l.tenant = '' THEN '' ELSE c.tenant END AS key_tenant,
           least(coalesce(l.concurrency - (SELECT coalesce(sum(b.n), 0) FROM busy b
                                           WHERE b.type = l.type AND (l.tenant = '' OR b.tenant = c.tenant)),
                          2147483647),
                 coalesce(floor(l.tokens_now), 2147483647)) AS headroom
    FROM cand c JOIN lim l ON l.type = c.type AND l.tenant IN ('', '*', c.tenant)
), over AS (
    SELECT id FROM (
        SELECT id, headroom, row_number() OVER (PARTITION BY type, limit_tenant, key_tenant
                                                ORDER BY priority DESC, run_at, id) AS rank
        FROM applies) ranked
    WHERE rank > headroom
), claimed AS (
    UPDATE skiplock.jobs j
    SET state = 'running', attempts = j.attempts + 1, worker_id = %(worker_id)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        started_at = now(), updated_at = now()
    FROM cand c WHERE j.id = c.id AND c.id NOT IN (SELECT id FROM over)
    RETURNING j.id, j.queue, j.type, j.payload, j.priority, j.attempts, j.max_attempts,
              j.timeout_seconds, j.tenant, j.labels, j.run_at, j.created_at
), spent AS (
    UPDATE skiplock.limits l
    SET tokens = x.tokens_now - x.n, refilled_at = now()
    FROM (SELECT lim.type, lim.tenant, lim.tokens_now, count(*) AS n
          FROM lim JOIN claimed c ON c.type = lim.type AND lim.tenant IN ('', coalesce(c.tenant, ''))
          WHERE lim.rate IS NOT NULL
          GROUP BY 1, 2, 3) x
    WHERE l.type = x.type AND l.tenant = x.tenant
)
SELECT * FROM claimed;

-- name: limit_refill
-- Step 3 of a limited claim: seconds until an empty rate limit of this worker's types has a token
-- again (NULL: none is empty), so the worker claims again then, not a poll later. A bucket is
-- empty only within 1/rate seconds of a claim that spent it, so idle workers poll early at most once.
SELECT min((1.0 - least(1.0, tokens + rate * extract(epoch FROM now() - refilled_at))) / rate)::float8
           AS seconds
FROM skiplock.limits
WHERE rate IS NOT NULL AND tokens + rate * extract(epoch FROM now() - refilled_at) < 1
  AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s::text[]));

-- name: lock_limits
-- Step 1 of a limited claim: take the limit rows of this worker's types (claims of limited types
-- wait for each other here, never for unlimited ones).
SELECT type, tenant FROM skiplock.limits
WHERE %(types)s::text[] IS NULL OR type = ANY(%(types)s::text[])
ORDER BY type, tenant
FOR UPDATE;

-- name: limited_types
-- Which of this worker's types have limits (checked every few seconds to choose the claim path).
SELECT DISTINCT type FROM skiplock.limits WHERE %(types)s::text[] IS NULL OR type = ANY(%(types)s::text[]);

-- name: set_limit
INSERT INTO skiplock.limits (type, tenant, concurrency, rate)
VALUES (%(type)s, %(tenant)s, %(concurrency)s, %(rate)s)
ON CONFLICT (type, tenant) DO UPDATE
    SET concurrency = excluded.concurrency, rate = excluded.rate, updated_at = now()
RETURNING type, tenant, concurrency, rate;

-- name: clear_limit
DELETE FROM skiplock.limits WHERE type = %(type)s AND tenant = %(tenant)s RETURNING type;

-- name: list_limits
SELECT l.type, l.tenant, l.concurrency, l.rate,
       (SELECT count(*) FROM skiplock.jobs j WHERE j.state = 'running' AND j.type = l.type
          AND (l.tenant IN ('', '*') OR coalesce(j.tenant, '') = l.tenant)) AS running
FROM skiplock.limits l ORDER BY l.type, l.tenant;

-- name: upsert_schedule
-- Create or redefine a schedule. A changed timing resets next_run_at; an unchanged one keeps it
-- (so every worker can declare its code schedules at start without shifting the ticks).
INSERT INTO skiplock.schedules (name, cron, every_seconds, type, payload, queue, priority, max_attempts,
                                timezone, catch_up, source, next_run_at)
VALUES (%(name)s, %(cron)s, %(every_seconds)s, %(type)s, %(payload)s, %(queue)s, %(priority)s,
        %(max_attempts)s, %(timezone)s, %(catch_up)s, %(source)s, %(next_run_at)s)
ON CONFLICT (name) DO UPDATE SET
    next_run_at = CASE WHEN skiplock.schedules.cron IS NOT DISTINCT FROM excluded.cron
                        AND skiplock.schedules.every_seconds IS NOT DISTINCT FROM excluded.every_seconds
                        AND skiplock.schedules.timezone = excluded.timezone
                       THEN skiplock.schedules.next_run_at ELSE excluded.next_run_at END,
    cron = excluded.cron, every_seconds = excluded.every_seconds, type = excluded.type,
    payload = excluded.payload, queue = excluded.queue, priority = excluded.priority,
    max_attempts = excluded.max_attempts, timezone = excluded.timezone, catch_up = excluded.catch_up,
    source = excluded.source, updated_at = now()
RETURNING name, next_run_at;

-- name: remove_schedule
DELETE FROM skiplock.schedules WHERE name = %(name)s RETURNING name;

-- name: remove_schedules_of_source
-- Sync from a declaration (a JobQueue's spec.schedules): drop what it no longer declares.
DELETE FROM skiplock.schedules WHERE source = %(source)s AND NOT (name = ANY(%(keep)s::text[])) RETURNING name;

-- name: pause_schedule
UPDATE skiplock.schedules SET paused = %(paused)s, updated_at = now() WHERE name = %(name)s RETURNING name;

-- name: list_schedules
SELECT * FROM skiplock.schedules ORDER BY name;

-- name: next_schedule
-- Seconds until the next tick of any active schedule (negative: overdue; NULL: none), so the
-- workers' scheduler sleeps until then instead of locking the table every second.
SELECT extract(epoch FROM min(next_run_at) - now())::float8 AS seconds
FROM skiplock.schedules WHERE NOT paused;

-- name: due_schedules
-- Schedules whose tick has come, locked so that one worker fires each tick.
SELECT s.*, now() AS db_now FROM skiplock.schedules s
WHERE NOT s.paused AND s.next_run_at <= now()
ORDER BY s.next_run_at
LIMIT 100
FOR UPDATE SKIP LOCKED;

-- name: advance_schedule
UPDATE skiplock.schedules
SET next_run_at = %(next_run_at)s, last_run_at = coalesce(%(last_run_at)s, last_run_at),
    last_job_id = coalesce(%(last_job_id)s, last_job_id), updated_at = now()
WHERE name = %(name)s;

-- name: overview
-- Per queue for the job browser: throughput over the last 5 minutes and workers seen.
SELECT q.queue,
       (SELECT count(*) FROM skiplock.jobs j
         WHERE j.queue = q.queue AND j.state = 'completed' AND j.finished_at > now() - interval '5 minutes')
       / 300.0 AS completed_per_second,
       (SELECT count(*) FROM skiplock.workers w
         WHERE q.queue = ANY(w.queues) AND w.last_seen_at > now() - interval '2 minutes') AS workers
FROM (SELECT DISTINCT queue FROM skiplock.jobs) q
ORDER BY q.queue;

-- name: pending_by_priority
-- Runnable jobs per queue and priority bucket (the queue-overview dashboard's depth by priority):
-- a bounded label set whatever priorities jobs use. Every bucket of a queue is returned, 0 included.
SELECT q.queue, b.bucket AS priority, count(j.id) AS jobs
FROM (SELECT DISTINCT queue FROM skiplock.jobs WHERE state IN {{runnable}} AND run_at <= now()) q
CROSS JOIN unnest(ARRAY['<0', '0', '1-9', '10-99', '>=100']) AS b(bucket)
LEFT JOIN skiplock.jobs j ON j.queue = q.queue AND j.state IN {{runnable}} AND j.run_at <= now()
     AND CASE WHEN j.priority < 0 THEN '<0' WHEN j.priority = 0 THEN '0' WHEN j.priority < 10 THEN '1-9'
              WHEN j.priority < 100 THEN '10-99' ELSE '>=100' END = b.bucket
GROUP BY q.queue, b.bucket;

-- name: dependents
-- The jobs that depend on a job (the job browser's detail page). Only a job marked has_dependents
-- has any, so the scan runs for those only; children always have larger ids than their parents.
SELECT id, queue, type, state::text AS state FROM (
    SELECT id, queue, type, state, depends_on FROM skiplock.jobs WHERE id > %(id)s
    UNION ALL
    SELECT id, queue, type, state, depends_on FROM skiplock.jobs_history WHERE id > %(id)s
) c
WHERE c.depends_on @> ARRAY[%(id)s::bigint]
  AND EXISTS (SELECT 1 FROM skiplock.jobs WHERE id = %(id)s AND has_dependents
              UNION ALL
              SELECT 1 FROM skiplock.jobs_history WHERE id = %(id)s AND has_dependents)
ORDER BY c.id
LIMIT %(limit)s;

-- name: ui_session_create
-- A job browser login: a new session, of which only a digest is stored; expired sessions go.
WITH gone AS (DELETE FROM skiplock.ui_sessions WHERE expires_at < now())
INSERT INTO skiplock.ui_sessions (digest, expires_at)
VALUES (%(digest)s, now() + make_interval(secs => %(seconds)s));

-- name: ui_session_valid
SELECT true AS valid FROM skiplock.ui_sessions WHERE digest = %(digest)s AND expires_at > now();

-- name: ui_session_revoke
-- Logout: the session ends on every UI replica at once.
DELETE FROM skiplock.ui_sessions WHERE digest = %(digest)s;

-- name: set_queue
-- Queue defaults: every value given replaces the stored one; NULL keeps it (%(clear)s names the
-- settings to remove).
INSERT INTO skiplock.queues AS q (name, max_attempts, ttl_seconds, result_ttl_seconds, failure_ttl_seconds,
                                  retry_policy, source)
VALUES (%(name)s, %(max_attempts)s, %(ttl_seconds)s, %(result_ttl_seconds)s, %(failure_ttl_seconds)s,
        %(retry_policy)s::jsonb, %(source)s)
ON CONFLICT (name) DO UPDATE SET
    max_attempts = CASE WHEN 'max_attempts' = ANY(%(clear)s::text[]) THEN NULL
                        ELSE coalesce(excluded.max_attempts, q.max_attempts) END,
    ttl_seconds = CASE WHEN 'ttl' = ANY(%(clear)s::text[]) THEN NULL
                       ELSE coalesce(excluded.ttl_seconds, q.ttl_seconds) END,
    result_ttl_seconds = CASE WHEN 'result_ttl' = ANY(%(clear)s::text[]) THEN NULL
                              ELSE coalesce(excluded.result_ttl_seconds, q.result_ttl_seconds) END,
    failure_ttl_seconds = CASE WHEN 'failure_ttl' = ANY(%(clear)s::text[]) THEN NULL
                               ELSE coalesce(excluded.failure_ttl_seconds, q.failure_ttl_seconds) END,
    retry_policy = CASE WHEN 'retry' = ANY(%(clear)s::text[]) THEN NULL
                        ELSE coalesce(excluded.retry_policy, q.retry_policy) END,
    source = excluded.source, updated_at = now()
RETURNING *;

-- name: replace_queue
-- A declaration (a JobQueue's spec.queueSettings) states the whole of a queue's settings.
INSERT INTO skiplock.queues (name, max_attempts, ttl_seconds, result_ttl_seconds, failure_ttl_seconds,
                             retry_policy, source)
VALUES (%(name)s, %(max_attempts)s, %(ttl_seconds)s, %(result_ttl_seconds)s, %(failure_ttl_seconds)s,
        %(retry_policy)s::jsonb, %(source)s)
ON CONFLICT (name) DO UPDATE SET
    max_attempts = excluded.max_attempts, ttl_seconds = excluded.ttl_seconds,
    result_ttl_seconds = excluded.result_ttl_seconds, failure_ttl_seconds = excluded.failure_ttl_seconds,
    retry_policy = excluded.retry_policy, source = excluded.source, updated_at = now()
RETURNING *;

-- name: remove_queue
DELETE FROM skiplock.queues WHERE name = %(name)s RETURNING name;

-- name: remove_queues_of_source
-- Sync from a declaration (a JobQueue's spec.queueSettings): drop what it no longer declares.
DELETE FROM skiplock.queues WHERE source = %(source)s AND NOT (name = ANY(%(keep)s::text[])) RETURNING name;

-- name: list_queues
-- Every queue that has settings or jobs, with its settings (NULL: the default).
SELECT n.name, q.max_attempts, q.ttl_seconds, q.result_ttl_seconds, q.failure_ttl_seconds, q.retry_policy,
       q.source, q.updated_at
FROM (SELECT name FROM skiplock.queues UNION SELECT DISTINCT queue FROM skiplock.jobs) n
LEFT JOIN skiplock.queues q ON q.name = n.name
ORDER BY n.name;

-- name: api_claim
-- The pull API's claim: the SQL API's (limits included), whole rows.
SELECT * FROM skiplock.claim(%(queue)s, %(worker_id)s, %(max_jobs)s, %(lease_seconds)s, %(types)s::text[]);

-- name: api_heartbeat
-- The pull API's heartbeat: every lease of this worker id.
SELECT skiplock.heartbeat(%(worker_id)s, %(lease_seconds)s) AS renewed;

-- name: api_renew
-- The pull API's renewal: every lease of this worker id, each with its cancel flag.
SELECT job_id, attempt, cancel_requested FROM skiplock.renew(%(worker_id)s, %(lease_seconds)s);
