import type { EnqueueOptions, JobInput, Queryable } from "./types.js";

/** One call of skiplock.enqueue per job, all in one statement: one round trip, all or nothing, ids
 * in input order. The values come from a JSON array, so the statement's text never changes. */
const ENQUEUE_MANY = `
SELECT skiplock.enqueue(
    type => j->>'type', payload => coalesce(j->'payload', '{}'), queue => coalesce(j->>'queue', 'default'),
    priority => coalesce((j->>'priority')::integer, 0),
    run_at => coalesce((j->>'run_at')::timestamptz, now() + make_interval(secs => coalesce((j->>'delay')::float8, 0))),
    max_attempts => (j->>'max_attempts')::integer, dedup_key => j->>'dedup_key', tenant => j->>'tenant',
    labels => coalesce(j->'labels', '{}'), timeout_seconds => (j->>'timeout_seconds')::float8,
    ttl_seconds => (j->>'ttl_seconds')::float8, result_ttl_seconds => (j->>'result_ttl_seconds')::float8,
    failure_ttl_seconds => (j->>'failure_ttl_seconds')::float8, retry_policy => j->'retry_policy'
) AS id
FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(j, n)
ORDER BY n`;

function row(job: JobInput): Record<string, unknown> {
  if (typeof job.type !== "string") {
    throw new TypeError("skiplock: a job needs a type (a string)");
  }
  if (job.runAt !== undefined && job.delaySeconds !== undefined) {
    throw new TypeError("skiplock: give runAt or delaySeconds, not both");
  }
  return {
    type: job.type,
    payload: job.payload === undefined ? {} : job.payload,
    queue: job.queue,
    priority: job.priority,
    run_at: job.runAt?.toISOString(),
    delay: job.delaySeconds,
    max_attempts: job.maxAttempts,
    dedup_key: job.dedupKey,
    tenant: job.tenant,
    labels: job.labels,
    timeout_seconds: job.timeoutSeconds,
    ttl_seconds: job.ttlSeconds,
    result_ttl_seconds: job.resultTtlSeconds,
    failure_ttl_seconds: job.failureTtlSeconds,
    retry_policy: job.retry,
  };
}

/** Enqueue many jobs in one statement; returns their ids in input order. Pass a client inside
 * your transaction to enqueue at your commit (workers are woken then, not before). */
export async function enqueueMany(db: Queryable, jobs: JobInput[]): Promise<number[]> {
  if (jobs.length === 0) {
    return [];
  }
  const { rows } = await db.query<{ id: string }>(ENQUEUE_MANY, [JSON.stringify(jobs.map(row))]);
  return rows.map((r) => Number(r.id));
}

/** Enqueue one job; returns its id. */
export async function enqueue(
  db: Queryable,
  type: string,
  payload: unknown = {},
  options: EnqueueOptions = {},
): Promise<number> {
  const [id] = await enqueueMany(db, [{ ...options, type, payload }]);
  return id;
}
