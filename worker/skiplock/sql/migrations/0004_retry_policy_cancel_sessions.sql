-- skiplock schema, version 4: one retry formula for every path that retries a job, cancel requests
-- that end with their execution, and the job browser's login sessions.

-- The delay before the next attempt, for a retry policy (skiplock.retry: RetryPolicy.as_json())
-- and the attempt that just failed. The one place of the formula: finish (a failed attempt) and
-- rescue (an expired lease or a gone worker) both call it. A new kind of policy is one more
-- branch here (CREATE OR REPLACE in a later migration) and one more class in skiplock.retry.
--   exponential: least(max, base * 2^(attempt - 1)) * (1 - jitter * random())
CREATE FUNCTION skiplock.retry_delay(policy jsonb, attempt integer) RETURNS double precision
LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $$
BEGIN
    CASE policy->>'kind'
    WHEN 'exponential' THEN
        -- 2^63 already exceeds any sane max: the exponent is capped so that nothing overflows.
        RETURN least((policy->>'max')::float8,
                     (policy->>'base')::float8 * power(2.0::float8, least(greatest(attempt, 1), 64) - 1))
               * (1.0 - (policy->>'jitter')::float8 * random());
    ELSE
        RAISE EXCEPTION 'unknown retry policy: %', policy USING ERRCODE = 'invalid_parameter_value';
    END CASE;
END $$;

-- A cancel request belongs to one execution: it is set on a running job only, and whatever ends
-- the execution (finish, rescue, release) clears it. Before this version retry and retry_dead could
-- leave it behind (a retried job was then cancelled by its first heartbeat); those are cleared.
UPDATE skiplock.jobs SET cancel_requested = false WHERE cancel_requested AND state <> 'running';
UPDATE skiplock.jobs_history SET cancel_requested = false WHERE cancel_requested;
ALTER TABLE skiplock.jobs ADD CONSTRAINT jobs_cancel_request_while_running
    CHECK (NOT cancel_requested OR state = 'running');

-- Job browser logins: one random session per login, revoked at logout, shared by every UI replica.
-- Only a digest is stored (of the cookie and a key derived from the UI's credentials, so a changed
-- credential ends every session).
CREATE TABLE skiplock.ui_sessions (
    digest     bytea       PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX ui_sessions_expires_idx ON skiplock.ui_sessions (expires_at);
