-- skiplock schema, version 2: periodic schedules and per-type rate/concurrency limits.

CREATE TABLE skiplock.schedules (
    name          text             PRIMARY KEY,
    cron          text,                               -- 5 fields, or 6 with seconds first
    every_seconds double precision CHECK (every_seconds > 0),
    type          text             NOT NULL,
    payload       jsonb            NOT NULL DEFAULT '{}',
    queue         text             NOT NULL DEFAULT 'default',
    priority      integer          NOT NULL DEFAULT 0,
    max_attempts  integer          NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    timezone      text             NOT NULL DEFAULT 'UTC',
    catch_up      text             NOT NULL DEFAULT 'latest' CHECK (catch_up IN ('skip', 'latest', 'all')),
    paused        boolean          NOT NULL DEFAULT false,
    source        text             NOT NULL DEFAULT 'cli', -- cli | code | crd:<namespace>/<name>
    next_run_at   timestamptz      NOT NULL,
    last_run_at   timestamptz,
    last_job_id   bigint,
    created_at    timestamptz      NOT NULL DEFAULT now(),
    updated_at    timestamptz      NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (every_seconds IS NULL))
);
CREATE INDEX schedules_due_idx ON skiplock.schedules (next_run_at) WHERE NOT paused;

-- tenant '' limits the type as a whole; '*' limits each tenant separately; any other value, that
-- tenant. Rate limits are token buckets (capacity 1) refilled at `rate` starts per second.
CREATE TABLE skiplock.limits (
    type        text             NOT NULL,
    tenant      text             NOT NULL DEFAULT '',
    concurrency integer          CHECK (concurrency > 0),
    rate        double precision CHECK (rate > 0),
    tokens      double precision NOT NULL DEFAULT 1,
    refilled_at timestamptz      NOT NULL DEFAULT now(),
    updated_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (type, tenant),
    CHECK (concurrency IS NOT NULL OR rate IS NOT NULL),
    CHECK (tenant <> '*' OR rate IS NULL)
);

-- Live running counts per type and tenant, for concurrency limits.
CREATE INDEX jobs_running_type_idx ON skiplock.jobs (type, tenant) WHERE state = 'running';
