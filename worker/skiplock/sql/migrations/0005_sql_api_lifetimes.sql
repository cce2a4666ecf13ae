-- skiplock schema, version 5: the SQL API (docs/sql-api.md), queue settings, job lifetimes and
-- retry schedules per job and per queue.

-- Per-job lifetimes and retry policy. A job's own values, or its queue's (skiplock.queues) copied at
-- enqueue; NULL: none (the retry policy falls back to the queue's, then the worker's).
--   ttl_seconds: how long the job may wait once it is due; expires_at = max(now, run_at) + ttl is
--     when a job still waiting (scheduled, blocked, pending, retry) ends cancelled ("expired").
--   result_ttl_seconds / failure_ttl_seconds: a completed / dead or cancelled job is deleted this
--     long after it finished (from the hot table or the history, wherever it is by then).
ALTER TABLE skiplock.jobs
    ADD COLUMN retry_policy        jsonb,
    ADD COLUMN ttl_seconds         double precision CHECK (ttl_seconds > 0),
    ADD COLUMN expires_at          timestamptz,
    ADD COLUMN result_ttl_seconds  double precision CHECK (result_ttl_seconds >= 0),
    ADD COLUMN failure_ttl_seconds double precision CHECK (failure_ttl_seconds >= 0);
ALTER TABLE skiplock.jobs_history  -- the same columns in the same order (archive copies rows as they are)
    ADD COLUMN retry_policy        jsonb,
    ADD COLUMN ttl_seconds         double precision,
    ADD COLUMN expires_at          timestamptz,
    ADD COLUMN result_ttl_seconds  double precision,
    ADD COLUMN failure_ttl_seconds double precision;

-- When a finished job's lifetime ends (UTC, without time zone so that an index can hold it).
CREATE FUNCTION skiplock.delete_after(state skiplock.job_state, finished_at timestamptz,
                                      result_ttl double precision, failure_ttl double precision)
RETURNS timestamp LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (finished_at AT TIME ZONE 'UTC')
           + make_interval(secs => CASE WHEN state = 'completed' THEN result_ttl ELSE failure_ttl END)
$$;

-- Only jobs that have a lifetime are indexed: expiry and deletion cost what is due, nothing more.
CREATE INDEX jobs_expires_idx ON skiplock.jobs (expires_at)
    WHERE expires_at IS NOT NULL AND state IN ('scheduled', 'blocked', 'pending', 'retry');
CREATE INDEX jobs_delete_after_idx
    ON skiplock.jobs (skiplock.delete_after(state, finished_at, result_ttl_seconds, failure_ttl_seconds))
    WHERE state IN ('completed', 'dead', 'cancelled')
      AND (result_ttl_seconds IS NOT NULL OR failure_ttl_seconds IS NOT NULL);
CREATE INDEX jobs_history_delete_after_idx
    ON skiplock.jobs_history (skiplock.delete_after(state, finished_at, result_ttl_seconds, failure_ttl_seconds))
    WHERE result_ttl_seconds IS NOT NULL OR failure_ttl_seconds IS NOT NULL;

-- Queue defaults (`skiplock queues set`, a JobQueue's spec.queueSettings). max_attempts and the
-- lifetimes are copied into a job when it is enqueued; the retry policy is read when an attempt
-- fails, so a change applies to the jobs already queued.
CREATE TABLE skiplock.queues (
    name                text             PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
    max_attempts        integer          CHECK (max_attempts BETWEEN 1 AND 1000),
    ttl_seconds         double precision CHECK (ttl_seconds > 0 AND ttl_seconds < 'infinity'),
    result_ttl_seconds  double precision CHECK (result_ttl_seconds >= 0 AND result_ttl_seconds < 'infinity'),
    failure_ttl_seconds double precision CHECK (failure_ttl_seconds >= 0 AND failure_ttl_seconds < 'infinity'),
    retry_policy        jsonb,
    source              text             NOT NULL DEFAULT 'cli',  -- cli | code | crd:<namespace>/<name>
    updated_at          timestamptz      NOT NULL DEFAULT now()
);

-- The filter of the bulk actions and the job lists (`jobs list/cancel/purge/retry` and the UI), one
-- definition: a JSON object whose keys narrow the match, each optional: queue, type, tenant,
-- states (a list), labels (an object the job's labels contain), older_than (seconds since `since`:
-- when the job finished, or else when it was enqueued). Inlined into the statements that use it.
CREATE FUNCTION skiplock.job_matches(filter jsonb, queue text, type text, tenant text, state skiplock.job_state,
                                     labels jsonb, since timestamptz)
RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (filter->>'queue' IS NULL OR queue = filter->>'queue')
       AND (filter->>'type' IS NULL OR type = filter->>'type')
       AND (filter->>'tenant' IS NULL OR tenant = filter->>'tenant')
       AND (filter->'states' IS NULL OR state::text IN (SELECT jsonb_array_elements_text(filter->'states')))
       AND (filter->'labels' IS NULL OR labels @> (filter->'labels'))
       AND (filter->>'older_than' IS NULL
            OR since < now() - make_interval(secs => (filter->>'older_than')::float8))
$$;

-- A retry policy as JSON (skiplock.retry: RetryPolicy.as_json()), checked: NULL if it is valid,
-- else the reason. The SQL API and the queue settings refuse what this refuses.
CREATE FUNCTION skiplock.retry_policy_problem(policy jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    seconds CONSTANT text := ' must be a finite, non-negative number of seconds';
    key text;
    item jsonb;
BEGIN
    IF policy IS NULL THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(policy) <> 'object' THEN
        RETURN 'a retry policy is a JSON object with a "kind"';
    END IF;
    IF policy ? 'jitter' AND (jsonb_typeof(policy->'jitter') <> 'number'
                              OR (policy->>'jitter')::float8 NOT BETWEEN 0 AND 1) THEN
        RETURN 'retry policy: jitter must be between 0 and 1';
    END IF;
    CASE policy->>'kind'
    WHEN 'exponential' THEN
        FOREACH key IN ARRAY ARRAY['base', 'max'] LOOP
            IF policy ? key AND (jsonb_typeof(policy->key) <> 'number' OR (policy->>key)::float8 < 0) THEN
                RETURN 'retry policy: ' || key || seconds;
            END IF;
        END LOOP;
    WHEN 'fixed' THEN
        IF jsonb_typeof(policy->'every') IS DISTINCT FROM 'number' OR (policy->>'every')::float8 < 0 THEN
            RETURN 'retry policy: every' || seconds;
        END IF;
    WHEN 'intervals' THEN
        IF jsonb_typeof(policy->'intervals') IS DISTINCT FROM 'array' OR jsonb_array_length(policy->'intervals') = 0 THEN
            RETURN 'retry policy: intervals must be a non-empty list of seconds';
        END IF;
        FOR item IN SELECT jsonb_array_elements(policy->'intervals') LOOP
            IF jsonb_typeof(item) <> 'number' OR item::text::float8 < 0 THEN
                RETURN 'retry policy: each interval' || seconds;
            END IF;
        END LOOP;
    ELSE
        RETURN 'unknown retry policy kind ' || coalesce(quote_literal(policy->>'kind'), 'NULL')
               || ' (one of exponential, fixed, intervals)';
    END CASE;
    RETURN NULL;
END $$;

ALTER TABLE skiplock.queues ADD CONSTRAINT queues_retry_policy_valid
    CHECK (skiplock.retry_policy_problem(retry_policy) IS NULL);

-- The delay before the next attempt: version 4's formula plus two kinds, and NULL (no policy
-- anywhere) meaning the default, exponential from 1 s to 1 h with jitter 0.5.
--   exponential: least(max, base * 2^(attempt - 1)) * (1 - jitter * random())
--   fixed:       every * (1 - jitter * random())
--   intervals:   intervals[attempt] (the last one for every attempt past the list) * (1 - jitter * random())
CREATE OR REPLACE FUNCTION skiplock.retry_delay(policy jsonb, attempt integer) RETURNS double precision
LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $$
DECLARE
    jitter float8 := coalesce((policy->>'jitter')::float8, 0);
    n integer;
BEGIN
    IF policy IS NULL THEN
        policy := '{"kind": "exponential", "base": 1, "max": 3600, "jitter": 0.5}';
        jitter := 0.5;
    END IF;
    CASE policy->>'kind'
    WHEN 'exponential' THEN
        -- 2^63 already exceeds any sane max: the exponent is capped so that nothing overflows.
        RETURN least(coalesce((policy->>'max')::float8, 3600),
                     coalesce((policy->>'base')::float8, 1)
                     * power(2.0::float8, least(greatest(attempt, 1), 64) - 1))
               * (1.0 - jitter * random());
    WHEN 'fixed' THEN
        RETURN (policy->>'every')::float8 * (1.0 - jitter * random());
    WHEN 'intervals' THEN
        n := jsonb_array_length(policy->'intervals');
        RETURN (policy->'intervals'->>(least(greatest(attempt, 1), n) - 1))::float8 * (1.0 - jitter * random());
    ELSE
        RAISE EXCEPTION 'unknown retry policy: %', policy USING ERRCODE = 'invalid_parameter_value';
    END CASE;
END $$;

-- The statements the SQL API runs: the very text of worker/skiplock/sql/queries.sql that the Python
-- worker runs, with its named parameters numbered in the order `params` gives. `skiplock migrate`
-- (re)writes these rows from the code it ships, after the numbered migrations; the API functions
-- below EXECUTE them, so a state change has one implementation whichever language drives it.
CREATE TABLE skiplock.statements (
    name   text   PRIMARY KEY,
    params text[] NOT NULL,
    body   text   NOT NULL
);

-- The text of statement `name`, whose parameters must be `params` (in that order), or a clear error.
CREATE FUNCTION skiplock.statement(name text, params text[]) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    stored skiplock.statements;
BEGIN
    SELECT * INTO stored FROM skiplock.statements s WHERE s.name = statement.name;
    IF NOT FOUND OR stored.params IS DISTINCT FROM statement.params THEN
        RAISE EXCEPTION 'skiplock: the statement % is missing or out of date: run `skiplock migrate`', name
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN stored.body;
END $$;

-- Bad input to an API function: one clear line, nothing changed.
CREATE FUNCTION skiplock.refuse(fn text, problem text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'skiplock.%: %', fn, problem USING ERRCODE = 'invalid_parameter_value';
END $$;

CREATE FUNCTION skiplock.name_problem(value text, what text, required boolean) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN value IS NULL THEN CASE WHEN required THEN what || ' must not be NULL' END
                WHEN length(value) NOT BETWEEN 1 AND 200 THEN what || ' must be 1-200 characters' END
$$;

CREATE FUNCTION skiplock.seconds_problem(value double precision, what text, positive boolean) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN value IS NULL THEN NULL
                WHEN value = 'NaN' OR value >= 'infinity' OR value < 0 OR (positive AND value = 0)
                THEN what || ' must be a finite number of seconds' || CASE WHEN positive THEN ' above 0' ELSE ', 0 or more' END
           END
$$;

-- Dependents of jobs that ended in this transaction: propagate, then again for the children it
-- cancelled that have dependents of their own (plans.cascade, in SQL).
CREATE FUNCTION skiplock.settle(ids bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    todo bigint[] := ids;
    further bigint[];
    r record;
BEGIN
    WHILE cardinality(todo) > 0 LOOP
        further := '{}';
        FOR r IN EXECUTE skiplock.statement('propagate', ARRAY['ids']) USING todo LOOP
            IF r.state = 'cancelled' AND r.has_dependents THEN
                further := further || r.id;
            END IF;
        END LOOP;
        todo := further;
    END LOOP;
END $$;

-- ---------------------------------------------------------------------------------------------
-- The SQL API, version 1 (docs/sql-api.md). Names and parameters are a contract: later versions
-- only add optional parameters or new functions.

CREATE FUNCTION skiplock.api_version() RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT 1';

CREATE FUNCTION skiplock.enqueue(
    type text, payload jsonb DEFAULT '{}', queue text DEFAULT 'default', priority integer DEFAULT 0,
    run_at timestamptz DEFAULT now(), max_attempts integer DEFAULT NULL, dedup_key text DEFAULT NULL,
    tenant text DEFAULT NULL, labels jsonb DEFAULT '{}', timeout_seconds double precision DEFAULT NULL,
    ttl_seconds double precision DEFAULT NULL, result_ttl_seconds double precision DEFAULT NULL,
    failure_ttl_seconds double precision DEFAULT NULL, retry_policy jsonb DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    problem text;
    job_id bigint;
BEGIN
    problem := coalesce(
        skiplock.name_problem(enqueue.type, 'type', true), skiplock.name_problem(enqueue.queue, 'queue', true),
        skiplock.name_problem(enqueue.tenant, 'tenant', false),
        skiplock.name_problem(enqueue.dedup_key, 'dedup_key', false),
        CASE WHEN enqueue.payload IS NULL OR jsonb_typeof(enqueue.payload) = 'null'
             THEN 'payload must be a JSON value other than null (''{}'' for none)' END,
        CASE WHEN enqueue.priority IS NULL THEN 'priority must not be NULL' END,
        CASE WHEN enqueue.max_attempts NOT BETWEEN 1 AND 1000 THEN 'max_attempts must be between 1 and 1000' END,
        CASE WHEN enqueue.labels IS NULL OR jsonb_typeof(enqueue.labels) <> 'object'
                  OR EXISTS (SELECT 1 FROM jsonb_each(enqueue.labels) e WHERE jsonb_typeof(e.value) <> 'string')
             THEN 'labels must be a JSON object of strings' END,
        skiplock.seconds_problem(enqueue.timeout_seconds, 'timeout_seconds', true),
        skiplock.seconds_problem(enqueue.ttl_seconds, 'ttl_seconds', true),
        skiplock.seconds_problem(enqueue.result_ttl_seconds, 'result_ttl_seconds', false),
        skiplock.seconds_problem(enqueue.failure_ttl_seconds, 'failure_ttl_seconds', false),
        skiplock.retry_policy_problem(enqueue.retry_policy));
    IF problem IS NOT NULL THEN
        PERFORM skiplock.refuse('enqueue', problem);
    END IF;
    EXECUTE skiplock.statement('enqueue', ARRAY['jobs']) INTO job_id USING jsonb_build_array(jsonb_build_object(
        'ord', 0, 'queue', enqueue.queue, 'type', enqueue.type, 'payload', enqueue.payload,
        'priority', enqueue.priority, 'run_at', coalesce(enqueue.run_at, now()),
        'max_attempts', enqueue.max_attempts, 'timeout_seconds', enqueue.timeout_seconds,
        'tenant', enqueue.tenant, 'labels', enqueue.labels, 'dedup_key', enqueue.dedup_key,
        'depends_on', '[]'::jsonb, 'pending_deps', 0, 'dep_error', NULL,
        'ttl_seconds', enqueue.ttl_seconds, 'result_ttl_seconds', enqueue.result_ttl_seconds,
        'failure_ttl_seconds', enqueue.failure_ttl_seconds, 'retry_policy', enqueue.retry_policy))::text;
    IF job_id IS NULL THEN  -- an unfinished job of this queue holds the dedup_key: it answers
        EXECUTE skiplock.statement('find_dedup', ARRAY['queues', 'keys']) INTO job_id
            USING ARRAY[enqueue.queue], ARRAY[enqueue.dedup_key];
    END IF;
    IF job_id IS NULL THEN
        RAISE EXCEPTION 'skiplock.enqueue: the job holding this dedup_key finished meanwhile: enqueue again'
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN job_id;
END $$;

CREATE FUNCTION skiplock.claim(queue text, worker_id text, max_jobs integer DEFAULT 1,
                               lease_seconds double precision DEFAULT 30, types text[] DEFAULT NULL)
RETURNS SETOF skiplock.jobs LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    problem text;
    ids bigint[] := '{}';
    r record;
BEGIN
    problem := coalesce(
        skiplock.name_problem(claim.queue, 'queue', true), skiplock.name_problem(claim.worker_id, 'worker_id', true),
        CASE WHEN claim.max_jobs IS NULL OR claim.max_jobs < 1 THEN 'max_jobs must be at least 1' END,
        CASE WHEN claim.lease_seconds IS NULL THEN 'lease_seconds must not be NULL' END,
        skiplock.seconds_problem(claim.lease_seconds, 'lease_seconds', true));
    IF problem IS NOT NULL THEN
        PERFORM skiplock.refuse('claim', problem);
    END IF;
    -- As the worker does: the plain claim leaves limited types alone; where limits apply, the
    -- limit-aware claim runs after their rows are locked (one transaction: this statement's).
    IF EXISTS (SELECT 1 FROM skiplock.limits l WHERE claim.types IS NULL OR l.type = ANY(claim.types)) THEN
        EXECUTE skiplock.statement('lock_limits', ARRAY['types']) USING claim.types;
        FOR r IN EXECUTE skiplock.statement('claim_limited',
                         ARRAY['queue', 'types', 'limit', 'worker_id', 'lease_seconds', 'burst_seconds'])
                 USING claim.queue, claim.types, claim.max_jobs, claim.worker_id, claim.lease_seconds, 0.1::float8 LOOP
            ids := ids || r.id;
        END LOOP;
    ELSE
        FOR r IN EXECUTE skiplock.statement('claim', ARRAY['queue', 'types', 'limit', 'worker_id', 'lease_seconds'])
                 USING claim.queue, claim.types, claim.max_jobs, claim.worker_id, claim.lease_seconds LOOP
            ids := ids || r.id;
        END LOOP;
    END IF;
    RETURN QUERY SELECT j.* FROM skiplock.jobs j WHERE j.id = ANY(ids) ORDER BY j.priority DESC, j.run_at, j.id;
END $$;

-- The lease holder records an outcome (finish, then the dependents): the new state, or NULL when
-- worker_id does not hold the job's lease (nothing changed).
CREATE FUNCTION skiplock.finish_one(job_id bigint, worker_id text, outcome text, result jsonb, error text,
                                    retry_in double precision)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    attempt integer;
    r record;
BEGIN
    SELECT j.attempts INTO attempt FROM skiplock.jobs j
    WHERE j.id = finish_one.job_id AND j.worker_id = finish_one.worker_id AND j.state = 'running';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    EXECUTE skiplock.statement('finish', ARRAY['batch', 'ids', 'worker_id', 'retry_policy']) INTO r
        USING jsonb_build_array(jsonb_build_object('id', job_id, 'attempt', attempt, 'outcome', outcome,
                                                   'result', result, 'error', error, 'retry_in', retry_in))::text,
              ARRAY[job_id], finish_one.worker_id, NULL::text;
    IF r IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM skiplock.settle(ARRAY[job_id]);
    RETURN r.state;
END $$;

CREATE FUNCTION skiplock.complete(job_id bigint, worker_id text, result jsonb DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN skiplock.finish_one(job_id, worker_id, 'completed', result, NULL, NULL) IS NOT NULL;
END $$;

-- permanent: dead at once, no further attempts (the worker's PermanentFailure).
CREATE FUNCTION skiplock.fail(job_id bigint, worker_id text, error text,
                              retry_in_seconds double precision DEFAULT NULL, permanent boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    problem text := skiplock.seconds_problem(retry_in_seconds, 'retry_in_seconds', false);
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM skiplock.refuse('fail', problem);
    END IF;
    RETURN skiplock.finish_one(job_id, worker_id, CASE WHEN permanent THEN 'dead' ELSE 'failed' END, NULL,
                               coalesce(error, 'failed'), retry_in_seconds);
END $$;

CREATE FUNCTION skiplock.release(job_id bigint, worker_id text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    attempt integer;
    r record;
BEGIN
    SELECT j.attempts INTO attempt FROM skiplock.jobs j
    WHERE j.id = release.job_id AND j.worker_id = release.worker_id AND j.state = 'running';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE skiplock.statement('release', ARRAY['ids', 'attempts', 'worker_id']) INTO r
        USING ARRAY[job_id], ARRAY[attempt], release.worker_id;
    IF r IS NULL THEN
        RETURN false;
    END IF;
    PERFORM skiplock.settle(ARRAY[job_id]);
    RETURN true;
END $$;

CREATE FUNCTION skiplock.heartbeat(worker_id text, lease_seconds double precision DEFAULT 30)
RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    problem text := coalesce(skiplock.name_problem(heartbeat.worker_id, 'worker_id', true),
                             CASE WHEN heartbeat.lease_seconds IS NULL THEN 'lease_seconds must not be NULL' END,
                             skiplock.seconds_problem(heartbeat.lease_seconds, 'lease_seconds', true));
    ids bigint[];
    queues text[];
    renewed integer;
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM skiplock.refuse('heartbeat', problem);
    END IF;
    SELECT coalesce(array_agg(j.id), '{}'), coalesce(array_agg(DISTINCT j.queue), '{}') INTO ids, queues
    FROM skiplock.jobs j WHERE j.state = 'running' AND j.worker_id = heartbeat.worker_id;
    EXECUTE skiplock.statement('heartbeat', ARRAY['worker_id', 'queues', 'types', 'hostname', 'pid', 'concurrency',
                                                  'ids', 'lease_seconds'])
        USING heartbeat.worker_id, queues, NULL::text[], coalesce(host(inet_client_addr()), 'local'),
              pg_backend_pid(), cardinality(ids), ids, heartbeat.lease_seconds;
    GET DIAGNOSTICS renewed = ROW_COUNT;
    RETURN renewed;
END $$;
