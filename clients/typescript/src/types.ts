/** The shapes the skiplock SQL API (docs/sql-api.md) reads and returns. */

/** Anything that runs a query: a `pg.Pool`, a `pg.Client`, or a pool client inside your transaction. */
export interface Queryable {
  query<R extends Record<string, unknown> = Record<string, unknown>>(
    text: string,
    values?: unknown[],
  ): Promise<{ rows: R[]; rowCount: number | null }>;
}

/** How long a job waits after a failed attempt: exponential, a fixed interval, or a list. */
export type RetryPolicy =
  | { kind: "exponential"; base?: number; max?: number; jitter?: number }
  | { kind: "fixed"; every: number; jitter?: number }
  | { kind: "intervals"; intervals: number[]; jitter?: number };

export interface EnqueueOptions {
  /** Default "default". */
  queue?: string;
  /** Higher runs first (default 0). */
  priority?: number;
  /** When it may first run (default: now). */
  runAt?: Date;
  /** Or: seconds from now before it may run. */
  delaySeconds?: number;
  /** Attempts, the first run included (default: the queue's setting, else 5). */
  maxAttempts?: number;
  /** An unfinished job of the same queue and key answers for this one. */
  dedupKey?: string;
  tenant?: string;
  labels?: Record<string, string>;
  /** Handler time limit, for workers that honour it. */
  timeoutSeconds?: number;
  /** How long it may wait once due; then it ends cancelled ("expired"). */
  ttlSeconds?: number;
  /** A completed job is deleted this long after it finished. */
  resultTtlSeconds?: number;
  /** A dead or cancelled job is deleted this long after it finished. */
  failureTtlSeconds?: number;
  retry?: RetryPolicy;
}

/** A job to enqueue with others. */
export interface JobInput extends EnqueueOptions {
  type: string;
  payload?: unknown;
}

/** A claimed job, as a handler sees it. */
export interface Job<P = unknown> {
  id: number;
  type: string;
  queue: string;
  payload: P;
  /** This attempt's number (1 for the first run). */
  attempt: number;
  maxAttempts: number;
  priority: number;
  tenant: string | null;
  labels: Record<string, string>;
  runAt: Date;
  createdAt: Date;
}
