-- skiplock schema, version 1: jobs, their history, and the workers that run them.
-- States and transitions are documented in docs/state-machine.md.

CREATE TYPE skiplock.job_state AS ENUM (
    'scheduled',  -- run_at in the future
    'blocked',    -- waiting on dependencies (pending_deps > 0)
    'pending',    -- runnable now
    'running',    -- claimed by worker_id until lease_expires_at
    'completed',  -- handler returned; result stored
    'retry',      -- failed, waiting for its backoff (run_at)
    'dead',       -- attempts spent: the dead-letter list
    'cancelled'   -- cancelled by a user or by a dependency that ended dead/cancelled
);

CREATE TABLE skiplock.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            text               NOT NULL DEFAULT 'default',
    type             text               NOT NULL,
    payload          jsonb              NOT NULL DEFAULT '{}',
    priority         integer            NOT NULL DEFAULT 0,
    state            skiplock.job_state NOT NULL DEFAULT 'pending',
    run_at           timestamptz        NOT NULL DEFAULT now(),
    attempts         integer            NOT NULL DEFAULT 0,
    max_attempts     integer            NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    timeout_seconds  double precision   CHECK (timeout_seconds > 0),
    tenant           text,
    labels           jsonb              NOT NULL DEFAULT '{}',
    dedup_key        text,
    depends_on       bigint[]           NOT NULL DEFAULT '{}',
    pending_deps     integer            NOT NULL DEFAULT 0,
    has_dependents   boolean            NOT NULL DEFAULT false,
    notify_finish    boolean            NOT NULL DEFAULT false,
    cancel_requested boolean            NOT NULL DEFAULT false,
    result           jsonb,
    last_error       text,
    worker_id        text,
    lease_expires_at timestamptz,
    created_at       timestamptz        NOT NULL DEFAULT now(),
    updated_at       timestamptz        NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

-- The claim statement walks this index in order: queue, then priority, run_at, id.
CREATE INDEX jobs_claim_idx ON skiplock.jobs (queue, priority DESC, run_at, id)
    WHERE state IN ('pending', 'scheduled', 'retry');
CREATE INDEX jobs_lease_idx ON skiplock.jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_worker_idx ON skiplock.jobs (worker_id) WHERE state = 'running';
CREATE INDEX jobs_blocked_idx ON skiplock.jobs USING gin (depends_on) WHERE state = 'blocked';
CREATE INDEX jobs_finished_idx ON skiplock.jobs (finished_at)
    WHERE state IN ('completed', 'dead', 'cancelled');
CREATE UNIQUE INDEX jobs_dedup_idx ON skiplock.jobs (queue, dedup_key)
    WHERE dedup_key IS NOT NULL AND state NOT IN ('completed', 'dead', 'cancelled');

-- Finished jobs leave the hot table after the retention window (same columns, same order).
CREATE TABLE skiplock.jobs_history (LIKE skiplock.jobs INCLUDING DEFAULTS);
ALTER TABLE skiplock.jobs_history ADD PRIMARY KEY (id);
CREATE INDEX jobs_history_finished_idx ON skiplock.jobs_history (finished_at);
CREATE INDEX jobs_history_queue_state_idx ON skiplock.jobs_history (queue, state);

CREATE TABLE skiplock.workers (
    id           text        PRIMARY KEY,
    queues       text[]      NOT NULL,
    types        text[],
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    concurrency  integer     NOT NULL,
    in_flight    integer     NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
