import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import pg from "pg";

import { enqueue, enqueueMany, JobCancelled, PermanentFailure, Worker } from "../src/index.js";
import type { Job } from "../src/index.js";
import { databaseUrl, eventually, sleep, sql } from "./helpers.js";

let pool: pg.Pool;
before(() => {
  pool = new pg.Pool({ connectionString: databaseUrl() });
});
after(async () => {
  await pool.end();
});

async function states(queue: string): Promise<string[]> {
  const rows = await sql<{ state: string }>("SELECT state::text AS state FROM skiplock.jobs WHERE queue = $1 ORDER BY id",
    [queue]);
  return rows.map((r) => r.state);
}

test("the worker runs handlers, at most `concurrency` at once, and stores results", async () => {
  const ids = await enqueueMany(pool, Array.from({ length: 20 }, (_, n) => ({ type: "double", payload: { n }, queue: "ts-run" })));
  let now = 0;
  let most = 0;
  const worker = new Worker({
    connectionString: databaseUrl(), queues: ["ts-run"], concurrency: 4, pollSeconds: 0.2,
    handlers: {
      double: async (job: Job<{ n: number }>) => {
        now += 1;
        most = Math.max(most, now);
        await sleep(30);
        now -= 1;
        return { double: job.payload.n * 2, attempt: job.attempt };
      },
    },
  });
  await worker.start();
  await eventually(async () => (await states("ts-run")).every((s) => s === "completed"));
  await worker.stop();
  assert.ok(most <= 4 && most >= 2, `at most 4 at once (saw ${most})`);
  const rows = await sql<{ id: string; result: { double: number; attempt: number } }>(
    "SELECT id, result FROM skiplock.jobs WHERE id = ANY($1) ORDER BY id", [ids]);
  assert.deepEqual(rows.map((r) => r.result), ids.map((_, n) => ({ double: n * 2, attempt: 1 })));
  assert.equal(worker.processed, 20);
});

test("a failure retries on the job's schedule, then dead-letters; PermanentFailure at once", async () => {
  const flaky = await enqueue(pool, "flaky", {}, { queue: "ts-fail", maxAttempts: 3, retry: { kind: "fixed", every: 0 } });
  const doomed = await enqueue(pool, "doomed", {}, { queue: "ts-fail", maxAttempts: 5 });
  const unknown = await enqueue(pool, "nobody-handles-this", {}, { queue: "ts-fail" });
  const worker = new Worker({
    connectionString: databaseUrl(), queues: ["ts-fail"], pollSeconds: 0.1,
    handlers: {
      flaky: (job: Job) => {
        if (job.attempt < 3) throw new Error(`attempt ${job.attempt} failed`);
        return "third time";
      },
      doomed: () => {
        throw new PermanentFailure("no point retrying");
      },
    },
  });
  await worker.start();
  await eventually(async () => {
    const rows = await sql("SELECT state::text AS state FROM skiplock.jobs WHERE id = ANY($1)", [[flaky, doomed]]);
    return rows.every((r) => r.state === "completed" || r.state === "dead");
  });
  await worker.stop();
  const rows = await sql<{ id: string; state: string; attempts: number; last_error: string; result: unknown }>(
    "SELECT id, state::text AS state, attempts, last_error, result FROM skiplock.jobs WHERE id = ANY($1) ORDER BY id",
    [[flaky, doomed, unknown]]);
  assert.deepEqual(rows.map((r) => [r.state, r.attempts]), [["completed", 3], ["dead", 1], ["pending", 0]]);
  assert.equal(rows[0].result, "third time");
  assert.match(rows[0].last_error, /attempt 2 failed/);
  assert.match(rows[1].last_error, /PermanentFailure: no point retrying/);
});

test("the heartbeat keeps a long job's lease", async () => {
  const id = await enqueue(pool, "slow", {}, { queue: "ts-lease" });
  const worker = new Worker({
    connectionString: databaseUrl(), queues: ["ts-lease"], leaseSeconds: 1, pollSeconds: 0.1,
    handlers: { slow: async () => { await sleep(2500); return "done"; } },
  });
  await worker.start();
  await sleep(2000); // twice the lease: only the heartbeat keeps it
  const [mid] = await sql("SELECT state::text AS state, lease_expires_at > now() AS alive FROM skiplock.jobs WHERE id = $1",
    [id]);
  assert.deepEqual(mid, { state: "running", alive: true });
  await eventually(async () => (await states("ts-lease"))[0] === "completed");
  await worker.stop();
  const [row] = await sql("SELECT attempts FROM skiplock.jobs WHERE id = $1", [id]);
  assert.equal(row.attempts, 1);
});

test("stop waits for running jobs within the grace, then releases the rest unspent", async () => {
  const quick = await enqueue(pool, "quick", {}, { queue: "ts-stop" });
  const stuck = await enqueue(pool, "stuck", {}, { queue: "ts-stop" });
  let aborted = false;
  const worker = new Worker({
    connectionString: databaseUrl(), queues: ["ts-stop"], pollSeconds: 0.1, shutdownGraceSeconds: 1,
    handlers: {
      quick: async () => { await sleep(300); return "finished in the grace"; },
      stuck: (_job: Job, signal: AbortSignal) => new Promise((resolve) => {
        signal.addEventListener("abort", () => { aborted = true; setTimeout(() => resolve("too late"), 50); });
      }),
    },
  });
  await worker.start();
  await eventually(async () => (await states("ts-stop")).every((s) => s === "running"));
  await worker.stop();
  await sleep(200); // the stuck handler returns after its abort: its late result must change nothing
  const rows = await sql<{ state: string; attempts: number; worker_id: string | null }>(
    "SELECT state::text AS state, attempts, worker_id FROM skiplock.jobs WHERE id = ANY($1) ORDER BY id", [[quick, stuck]]);
  assert.deepEqual(rows.map((r) => [r.state, r.attempts]), [["completed", 1], ["pending", 0]]);
  assert.ok(aborted, "the handler was told");
});

test("the heartbeat tells a handler its job was cancelled, and the job ends cancelled", async () => {
  const id = await enqueue(pool, "long", {}, { queue: "ts-cancel" });
  let reason: unknown = null;
  const worker = new Worker({
    connectionString: databaseUrl(), queues: ["ts-cancel"], pollSeconds: 0.1, heartbeatSeconds: 0.2,
    handlers: {
      long: (_job: Job, signal: AbortSignal) => new Promise((_resolve, reject) => {
        signal.addEventListener("abort", () => { reason = signal.reason; reject(signal.reason); });
      }),
    },
  });
  await worker.start();
  await eventually(async () => (await states("ts-cancel"))[0] === "running");
  await sql("UPDATE skiplock.jobs SET cancel_requested = true WHERE id = $1", [id]); // as `skiplock jobs cancel` does
  await eventually(async () => (await states("ts-cancel"))[0] === "cancelled");
  await worker.stop();
  assert.ok(reason instanceof JobCancelled, `the signal's reason: ${String(reason)}`);
});

test("options are checked", () => {
  assert.throws(() => new Worker({ handlers: {} }), /at least one handler/);
  assert.throws(() => new Worker({ handlers: { t: () => 1 }, concurrency: 0 }), /concurrency must be a positive integer/);
  assert.throws(() => new Worker({ handlers: { t: () => 1 }, leaseSeconds: Number.NaN }), /leaseSeconds/);
});
