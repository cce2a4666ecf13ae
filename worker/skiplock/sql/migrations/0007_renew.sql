-- skiplock schema, version 7: renewing the leases tells their holder of cancel requests.
--
-- skiplock.heartbeat answers only how many leases it renewed, so a worker outside Python learned
-- that one of its jobs was cancelled (or that a lease was lost) only by reading skiplock.jobs.
-- skiplock.renew renews the same way, in the same statement the Python worker runs, and returns
-- every execution it renewed with its cancel flag: one not returned lost its lease. heartbeat is
-- now the count of what renew returns.
CREATE FUNCTION skiplock.renew(worker_id text, lease_seconds double precision DEFAULT 30)
RETURNS TABLE (job_id bigint, attempt integer, cancel_requested boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    problem text := coalesce(skiplock.name_problem(renew.worker_id, 'worker_id', true),
                             CASE WHEN renew.lease_seconds IS NULL THEN 'lease_seconds must not be NULL' END,
                             skiplock.seconds_problem(renew.lease_seconds, 'lease_seconds', true));
    ids bigint[];
    queues text[];
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM skiplock.refuse('renew', problem);
    END IF;
    SELECT coalesce(array_agg(j.id), '{}'), coalesce(array_agg(DISTINCT j.queue), '{}') INTO ids, queues
    FROM skiplock.jobs j WHERE j.state = 'running' AND j.worker_id = renew.worker_id;
    RETURN QUERY EXECUTE skiplock.statement('heartbeat', ARRAY['worker_id', 'queues', 'types', 'hostname', 'pid',
                                                               'concurrency', 'ids', 'lease_seconds'])
        USING renew.worker_id, queues, NULL::text[], coalesce(host(inet_client_addr()), 'local'),
              pg_backend_pid(), cardinality(ids), ids, renew.lease_seconds;
END $$;

CREATE OR REPLACE FUNCTION skiplock.heartbeat(worker_id text, lease_seconds double precision DEFAULT 30)
RETURNS integer LANGUAGE sql VOLATILE AS $$
    SELECT count(*)::integer FROM skiplock.renew(worker_id, lease_seconds)
$$;
