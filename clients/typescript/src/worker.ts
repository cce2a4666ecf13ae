import { randomBytes } from "node:crypto";
import { hostname } from "node:os";

import pg from "pg";

import type { Job } from "./types.js";

/** A handler: its return value (JSON) is stored as the job's result; a throw fails the attempt
 * (retried per the job's retry policy, then dead); `PermanentFailure` dead-letters at once. The
 * signal aborts when the job's cancel was requested (a throw then ends it `cancelled`), when its
 * lease was lost (another worker may run it: its outcome will change nothing), both learnt by the
 * heartbeat, and when the worker gives the job up at shutdown (it is then released, not failed).
 * `signal.reason` says which: a `JobCancelled` error, or an `Error` naming the cause. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Handler = (job: Job<any>, signal: AbortSignal) => unknown;

/** The abort reason of a handler's signal when the job's cancel was requested. */
export class JobCancelled extends Error {
  override name = "JobCancelled";
}

/** Throw it from a handler to dead-letter the job without further attempts. */
export class PermanentFailure extends Error {
  override name = "PermanentFailure";
}

export interface WorkerOptions {
  /** Handlers by job type; the worker claims only these types. */
  handlers: Record<string, Handler>;
  /** The database (or `pool`, or DATABASE_URL / libpq's PG* variables). */
  connectionString?: string;
  pool?: pg.Pool;
  /** Queues to serve, claimed in this order (default ["default"]). */
  queues?: string[];
  /** Jobs at once (default 10). */
  concurrency?: number;
  /** Lease per claim, renewed by the heartbeat (default 30). */
  leaseSeconds?: number;
  /** Heartbeat interval (default a third of the lease). */
  heartbeatSeconds?: number;
  /** Poll when idle and no notification came (default 2). */
  pollSeconds?: number;
  /** At stop, how long running jobs may take before they are released (default 30). */
  shutdownGraceSeconds?: number;
  /** Who holds the leases (default hostname-pid-random). */
  workerId?: string;
  /** Database errors the worker carried on after (default: console.error). */
  onError?: (error: unknown) => void;
}

interface Running {
  attempt: number;
  controller: AbortController;
  done: Promise<void>;
}

const RECORD_TRIES = 3;

function positive(name: string, value: number, integer = false): number {
  if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new RangeError(`skiplock: ${name} must be a positive ${integer ? "integer" : "number"}, not ${value}`);
  }
  return value;
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    return (error.stack ?? `${error.name}: ${error.message}`).slice(0, 4000);
  }
  return String(error).slice(0, 4000);
}

function toJob(row: Record<string, unknown>): Job {
  return {
    id: Number(row.id),
    type: String(row.type),
    queue: String(row.queue),
    payload: row.payload,
    attempt: Number(row.attempts),
    maxAttempts: Number(row.max_attempts),
    priority: Number(row.priority),
    tenant: (row.tenant as string | null) ?? null,
    labels: (row.labels as Record<string, string>) ?? {},
    runAt: row.run_at as Date,
    createdAt: row.created_at as Date,
  };
}

/** Claims jobs through the SQL API (`skiplock.claim`) into free slots, runs their handlers,
 * records outcomes (`skiplock.complete`, `skiplock.fail`), renews leases (`skiplock.heartbeat`), and
 * at `stop()` drains: running jobs get the grace period, then are released without spending their
 * attempt. A NOTIFY on `skiplock_jobs` wakes it at once; a poll covers a lost one. */
export class Worker {
  readonly id: string;
  /** Jobs whose outcome was recorded. */
  processed = 0;
  private readonly handlers: Record<string, Handler>;
  private readonly types: string[];
  private readonly queues: string[];
  private readonly concurrency: number;
  private readonly leaseSeconds: number;
  private readonly heartbeatMs: number;
  private readonly pollMs: number;
  private readonly graceMs: number;
  private readonly pool: pg.Pool;
  private readonly ownPool: boolean;
  private readonly connectionString?: string;
  private readonly onError: (error: unknown) => void;
  private readonly running = new Map<number, Running>();
  private readonly abandoned = new Set<number>();
  private stopping = false;
  private wake: (() => void) | null = null;
  private loop: Promise<void> | null = null;
  private heartbeat: NodeJS.Timeout | null = null;
  private listener: pg.Client | null = null;

  constructor(options: WorkerOptions) {
    this.handlers = { ...options.handlers };
    this.types = Object.keys(this.handlers).sort();
    if (this.types.length === 0) {
      throw new TypeError("skiplock: a worker needs at least one handler");
    }
    this.queues = options.queues ?? ["default"];
    if (this.queues.length === 0) {
      throw new TypeError("skiplock: a worker needs at least one queue");
    }
    this.concurrency = positive("concurrency", options.concurrency ?? 10, true);
    this.leaseSeconds = positive("leaseSeconds", options.leaseSeconds ?? 30);
    this.heartbeatMs = positive("heartbeatSeconds", options.heartbeatSeconds ?? this.leaseSeconds / 3) * 1000;
    this.pollMs = positive("pollSeconds", options.pollSeconds ?? 2) * 1000;
    this.graceMs = (options.shutdownGraceSeconds ?? 30) * 1000;
    if (!(this.graceMs >= 0)) {
      throw new RangeError("skiplock: shutdownGraceSeconds must not be negative");
    }
    this.id = options.workerId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
    this.connectionString = options.connectionString ?? process.env.DATABASE_URL;
    this.ownPool = options.pool === undefined;
    this.pool = options.pool ?? new pg.Pool({ connectionString: this.connectionString, max: 4 });
    this.onError = options.onError ?? ((error) => console.error("skiplock worker:", describe(error)));
    if (this.ownPool) {
      this.pool.on("error", (error) => this.onError(error));
    }
  }

  /** Start working (returns at once; `stop()` ends it). */
  async start(): Promise<void> {
    if (this.loop !== null) {
      throw new Error("skiplock: this worker was started already");
    }
    await this.listen();
    this.heartbeat = setInterval(() => void this.renew(), this.heartbeatMs);
    this.loop = this.run();
  }

  /** Stop claiming; running jobs get the grace period, then are released (attempt refunded). */
  async stop(): Promise<void> {
    this.stopping = true;
    this.wake?.();
    await this.loop;
    const grace = new Promise<void>((resolve) => setTimeout(resolve, this.graceMs).unref());
    await Promise.race([Promise.all([...this.running.values()].map((r) => r.done)), grace]);
    for (const [jobId, entry] of this.running) {
      this.abandoned.add(jobId);
      entry.controller.abort(new Error("the worker stopped: the job is released"));
      await this.record("SELECT skiplock.release($1, $2)", [jobId, this.id]);
    }
    this.running.clear();
    if (this.heartbeat !== null) {
      clearInterval(this.heartbeat);
    }
    if (this.listener !== null) {
      await this.listener.end().catch(() => undefined);
    }
    if (this.ownPool) {
      await this.pool.end();
    }
  }

  private async listen(): Promise<void> {
    const client = new pg.Client({ connectionString: this.connectionString });
    client.on("error", (error) => this.onError(error)); // polling carries on without it
    client.on("notification", (note) => {
      if (note.payload !== undefined && this.queues.includes(note.payload)) {
        this.wake?.();
      }
    });
    try {
      await client.connect();
      await client.query("LISTEN skiplock_jobs");
      this.listener = client;
    } catch (error) {
      this.onError(error);
    }
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      const free = this.concurrency - this.running.size;
      if (free <= 0) {
        await this.sleep(null);
        continue;
      }
      let claimed = 0;
      try {
        claimed = await this.claim(free);
      } catch (error) {
        this.onError(error);
      }
      if (claimed < free && !this.stopping) {
        await this.sleep(this.pollMs * (0.5 + Math.random()));
      }
    }
  }

  /** Until woken (a notification, a freed slot, stop) or `ms` pass (null: until woken). */
  private sleep(ms: number | null): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === null ? null : setTimeout(done, ms);
      const self = this;
      function done(): void {
        if (timer !== null) clearTimeout(timer);
        self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }

  private async claim(limit: number): Promise<number> {
    let claimed = 0;
    for (const queue of this.queues) {
      const { rows } = await this.pool.query("SELECT * FROM skiplock.claim($1, $2, $3, $4, $5)", [
        queue,
        this.id,
        limit - claimed,
        this.leaseSeconds,
        this.types,
      ]);
      for (const row of rows) {
        this.execute(toJob(row));
      }
      claimed += rows.length;
      if (claimed >= limit || this.stopping) {
        break;
      }
    }
    return claimed;
  }

  private execute(job: Job): void {
    const controller = new AbortController();
    const done = this.perform(job, controller.signal).finally(() => {
      this.running.delete(job.id);
      this.wake?.();
    });
    this.running.set(job.id, { attempt: job.attempt, controller, done });
  }

  private async perform(job: Job, signal: AbortSignal): Promise<void> {
    let query: string;
    let params: unknown[];
    try {
      const value = await this.handlers[job.type](job, signal);
      let result: string | null;
      try {
        result = value === undefined ? null : JSON.stringify(value);
      } catch (error) {
        throw new PermanentFailure(`handler returned a value that cannot be stored as JSON: ${describe(error)}`);
      }
      query = "SELECT skiplock.complete($1, $2, $3::jsonb)";
      params = [job.id, this.id, result];
    } catch (error) {
      query = "SELECT skiplock.fail($1, $2, $3, NULL, $4)";
      params = [job.id, this.id, describe(error), error instanceof PermanentFailure];
    }
    if (this.abandoned.has(job.id)) {
      return; // released at shutdown: not this execution's to finish any more
    }
    if (await this.record(query, params)) {
      this.processed += 1;
    }
  }

  /** Run an outcome's statement, a few tries if the database is away (the lease covers the gap). */
  private async record(query: string, params: unknown[]): Promise<boolean> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        await this.pool.query(query, params);
        return true;
      } catch (error) {
        this.onError(error);
        if (attempt >= RECORD_TRIES) {
          return false; // the job is rescued when its lease expires
        }
        await new Promise((resolve) => setTimeout(resolve, 1000 * attempt));
      }
    }
  }

  /** Renew every lease (`skiplock.renew`); abort the handlers of jobs whose cancel was requested or
   * whose lease was lost. Only jobs running before the statement are judged (one claimed meanwhile
   * may not be in its answer). */
  private async renew(): Promise<void> {
    if (this.running.size === 0) {
      return;
    }
    const before = new Map(this.running);
    let rows: { job_id: string; attempt: number; cancel_requested: boolean }[];
    try {
      ({ rows } = await this.pool.query("SELECT job_id, attempt, cancel_requested FROM skiplock.renew($1, $2)",
        [this.id, this.leaseSeconds]));
    } catch (error) {
      this.onError(error);
      return;
    }
    const renewed = new Map(rows.map((r) => [Number(r.job_id), r]));
    for (const [jobId, entry] of before) {
      const row = renewed.get(jobId);
      if (this.running.get(jobId) !== entry || entry.controller.signal.aborted) {
        continue; // finished meanwhile, or told already
      }
      if (row === undefined || row.attempt !== entry.attempt) {
        entry.controller.abort(new Error(`job ${jobId}: the lease was lost (the job may run elsewhere)`));
      } else if (row.cancel_requested) {
        entry.controller.abort(new JobCancelled(`job ${jobId}: cancel requested`));
      }
    }
  }
}
