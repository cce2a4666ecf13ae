import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import pg from "pg";

import { enqueue, enqueueMany } from "../src/index.js";
import { databaseUrl, sql } from "./helpers.js";

let pool: pg.Pool;
before(() => {
  pool = new pg.Pool({ connectionString: databaseUrl() });
});
after(async () => {
  await pool.end();
});

test("enqueue stores the job with its options", async () => {
  const id = await enqueue(pool, "resize", { url: "s3://b/k.png" }, {
    queue: "ts-options", priority: 7, maxAttempts: 3, tenant: "acme", labels: { env: "prod" },
    dedupKey: "k1", ttlSeconds: 60, resultTtlSeconds: 3600, retry: { kind: "intervals", intervals: [60, 180, 600] },
  });
  const [row] = await sql("SELECT * FROM skiplock.jobs WHERE id = $1", [id]);
  assert.equal(row.type, "resize");
  assert.deepEqual(row.payload, { url: "s3://b/k.png" });
  assert.equal(row.state, "pending");
  assert.deepEqual([row.queue, row.priority, row.max_attempts, row.tenant], ["ts-options", 7, 3, "acme"]);
  assert.deepEqual(row.labels, { env: "prod" });
  assert.deepEqual(row.retry_policy, { kind: "intervals", intervals: [60, 180, 600] });
  assert.equal(row.result_ttl_seconds, 3600);
  assert.ok(row.expires_at instanceof Date);
  assert.equal(await enqueue(pool, "resize", {}, { queue: "ts-options", dedupKey: "k1" }), id, "dedup answers");
});

test("enqueueMany returns ids in input order, in one statement", async () => {
  const jobs = Array.from({ length: 50 }, (_, i) => ({ type: "n", payload: { i }, queue: "ts-many" }));
  const ids = await enqueueMany(pool, jobs);
  assert.equal(ids.length, 50);
  const rows = await sql<{ id: string; i: number }>(
    "SELECT id, (payload->>'i')::int AS i FROM skiplock.jobs WHERE id = ANY($1) ORDER BY id", [ids]);
  assert.deepEqual(rows.map((r) => r.i), [...Array(50).keys()]);
  assert.deepEqual(rows.map((r) => Number(r.id)), ids);
  assert.deepEqual(await enqueueMany(pool, []), []);
});

test("a delay or a run time schedules the job", async () => {
  const later = await enqueue(pool, "t", {}, { queue: "ts-when", delaySeconds: 3600 });
  const at = await enqueue(pool, "t", {}, { queue: "ts-when", runAt: new Date(Date.now() + 7200_000) });
  const rows = await sql("SELECT state::text AS state FROM skiplock.jobs WHERE id = ANY($1)", [[later, at]]);
  assert.deepEqual(rows.map((r) => r.state), ["scheduled", "scheduled"]);
});

test("enqueue joins the caller's transaction", async () => {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    const gone = await enqueue(client, "t", { n: 1 }, { queue: "ts-tx" });
    await client.query("ROLLBACK");
    await client.query("BEGIN");
    const [kept] = await enqueueMany(client, [{ type: "t", queue: "ts-tx" }]);
    await client.query("COMMIT");
    const rows = await sql<{ id: string }>("SELECT id FROM skiplock.jobs WHERE queue = 'ts-tx'");
    assert.deepEqual(rows.map((r) => Number(r.id)), [kept]);
    assert.notEqual(gone, kept);
  } finally {
    client.release();
  }
});

test("bad input is refused with one line and nothing is enqueued", async () => {
  await assert.rejects(enqueue(pool, "", {}, { queue: "ts-bad" }), /skiplock\.enqueue: type must be 1-200 characters/);
  await assert.rejects(enqueue(pool, "t", {}, { queue: "ts-bad", maxAttempts: 0 }), /max_attempts must be between/);
  await assert.rejects(
    enqueueMany(pool, [{ type: "t", queue: "ts-bad" }, { type: "t", queue: "ts-bad", retry: { kind: "fixed", every: -1 } }]),
    /retry policy: every must be a finite, non-negative number of seconds/);
  await assert.rejects(enqueue(pool, "t", {}, { runAt: new Date(), delaySeconds: 1 }), /runAt or delaySeconds/);
  const rows = await sql("SELECT count(*)::int AS n FROM skiplock.jobs WHERE queue = 'ts-bad'");
  assert.equal(rows[0].n, 0, "all or nothing");
});
