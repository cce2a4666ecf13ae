export { enqueue, enqueueMany } from "./enqueue.js";
export { JobCancelled, PermanentFailure, Worker } from "./worker.js";
export type { Handler, WorkerOptions } from "./worker.js";
export type { EnqueueOptions, Job, JobInput, Queryable, RetryPolicy } from "./types.js";
