#!/usr/bin/env node
/**
 * A Ratchet worker for Node.js, built on the SQL API alone.
 *
 * Everything that decides what runs when (queueing, leases, crash recovery,
 * retries' timing, fencing) lives in the `ratchet` schema's PL/pgSQL
 * functions. This file only:
 *
 *  - claims batches with `ratchet.claim(queues, worker_id, max_count, lease, names)`
 *    (only the workflow names it registered),
 *    waking on `LISTEN "ratchet.queue.<queue>"` and polling as a fallback;
 *  - renews leases with `ratchet.heartbeat(worker_id, lease, workflow_ids)` every lease/3;
 *  - runs the workflow's JavaScript, numbering steps 0, 1, 2... in call order,
 *    replaying recorded steps from the claimed `steps` array and
 *    checkpointing new ones with `ratchet.record_step` (one round trip each);
 *  - ends the run with `ratchet.finish` / `ratchet.fail`, or gives it back with
 *    `ratchet.suspend` (durable sleep, graceful shutdown);
 *  - stops a run silently when the database fences it off (SQLSTATE RT002:
 *    stale run, RT006: cancelled).
 *
 * Library use:
 *
 *     const { Worker } = require('./ratchet-worker');
 *     const worker = new Worker({ connection: 'postgres://localhost/app', concurrency: 8 });
 *     worker.workflow('checkout', async (ctx, input) => {
 *       const receipt = await ctx.step('charge', async () =>
 *         payments.charge(input.order_id, { idempotencyKey: ctx.stepIdempotencyKey }));
 *       await ctx.sleep(60);            // durable: holds no worker while it waits
 *       return { receipt };
 *     });
 *     await worker.run();              // until worker.stop() or SIGTERM (CLI)
 *
 * Command line (registers the workflows of each --workflows module, by default
 * ./polyglot_order.js):
 *
 *     node ratchet-worker.js --dsn postgres://localhost/app --queue default \
 *       --worker-id node-1 --concurrency 4 --lease 10 --exit-when-idle 30
 *
 * Step outputs, workflow inputs and results are plain JSON, so a workflow
 * started or partly run by a worker in another language (the Python client,
 * say) replays here, and the other way round.
 *
 * @module ratchet-worker
 */

'use strict';

const { AsyncLocalStorage } = require('node:async_hooks');
const { EventEmitter } = require('node:events');
const crypto = require('node:crypto');
const os = require('node:os');
const path = require('node:path');
const { setTimeout: delay } = require('node:timers/promises');
const { parseArgs } = require('node:util');

const pg = require('pg');

// ---------------------------------------------------------------- SQL

/** Every statement this worker sends. Named notation, static text, so plans stay cached. */
const SQL = Object.freeze({
  // input and steps as JSON text, parsed per row in #claim: a row that cannot
  // be parsed fails alone instead of rejecting the whole claimed batch
  claim: `select workflow_id, name, input::text as input, run_id, attempt, steps::text as steps
            from ratchet.claim(queues => $1::text[], worker_id => $2::text,
                               max_count => $3::int, lease => $4::float8 * interval '1 second',
                               names => $5::text[])`,
  heartbeat: `select ratchet.heartbeat(worker_id => $1::text,
                                       lease => $2::float8 * interval '1 second',
                                       workflow_ids => $3::text[]) as renewed`,
  recordStep: `select ratchet.record_step(workflow_id => $1::text, run_id => $2::bigint,
                                          step_id => $3::int, name => $4::text,
                                          output => $5::jsonb, error => $6::jsonb)`,
  finish: `select ratchet.finish(workflow_id => $1::text, run_id => $2::bigint, output => $3::jsonb)`,
  // The database decides whether and when a failed run is retried: from the
  // workflow's stored retry policy, else this worker's policy for the name ($5).
  fail: `select ratchet.fail(workflow_id => $1::text, run_id => $2::bigint, error => $3::jsonb,
                             retryable => $4::boolean, retry_policy => $5::jsonb) as status`,
  failRetryIn: `select ratchet.fail(workflow_id => $1::text, run_id => $2::bigint, error => $3::jsonb,
                                    retry_in => $4::float8 * interval '1 second') as status`,
  suspend: `select ratchet.suspend(workflow_id => $1::text, run_id => $2::bigint,
                                   until => coalesce($3::timestamptz, ratchet.now()))`,
  durableSleep: `select wake_at::text as wake_at, remaining_seconds
                   from ratchet.durable_sleep(workflow_id => $1::text, run_id => $2::bigint,
                                              step_id => $3::int, seconds => $4::float8)`,
  tick: 'select ratchet.tick() as started',
});

/**
 * The SQL retry policy for a workflow's options, as JSON text; null for none.
 * @param {Required<WorkflowOptions>} o
 * @returns {string | null}
 */
function retryPolicy(o) {
  if (!(Number.isInteger(o.retries) && o.retries >= 0)) throw new Error('retries must be an integer >= 0');
  if (o.retries === 0) return null;
  return JSON.stringify({ max_attempts: o.retries + 1, initial_delay: o.retryInterval,
                          backoff_factor: o.retryBackoff, max_delay: o.retryMaxDelay });
}

/** SQLSTATEs that mean "this run is over, stop without writing anything". */
const FENCED = new Set(['RT002', 'RT006']);

// ---------------------------------------------------------------- errors

/** Base class of the errors this module raises. */
class RatchetError extends Error {
  get name() {
    return this.constructor.name;
  }
}

/**
 * The workflow code called a different step than the one recorded at that
 * position: replaying it would not reproduce the recorded run. The run fails
 * for good (no retry), even if the workflow code catches this error.
 */
class NonDeterminismError extends RatchetError {}

/** A value that must be stored (input, step output, result) is not JSON. */
class SerializationError extends RatchetError {}

/**
 * A step failed (now, or in an earlier run: the recorded error is raised
 * again on replay). `error` is the stored JSON `{type, message, ...}`.
 */
class StepError extends RatchetError {
  /**
   * @param {{type?: string, message?: string}} error the recorded error
   * @param {number} stepId
   * @param {string} stepName
   */
  constructor(error, stepId, stepName) {
    super(`step ${stepId} (${stepName}) failed: ${error?.type ?? 'Error'}: ${error?.message ?? ''}`);
    this.error = error;
    this.stepId = stepId;
    this.stepName = stepName;
  }
}

/**
 * Control flow, not a failure: this run has ended without finishing (the
 * database fenced it off, it suspended, or the worker released it). Thrown
 * into workflow code from `ctx.step` so it stops; do not swallow it (if you
 * do, the worker still drops the run).
 */
class RunEnded extends RatchetError {
  /**
   * @param {'lost'|'suspended'|'released'|'release'} kind `release` means the
   *   worker still has to give the workflow back
   * @param {string} reason
   */
  constructor(kind, reason) {
    super(reason);
    this.kind = kind;
  }
}

// ---------------------------------------------------------------- helpers

/**
 * JSON text for a value to store (`undefined` is stored as JSON null).
 * @param {unknown} value
 * @param {string} what names the value in the error message
 * @returns {string}
 */
function toJson(value, what) {
  let text;
  try {
    text = JSON.stringify(value === undefined ? null : value);
  } catch (err) {
    throw new SerializationError(`${what} must be JSON-serializable: ${err.message}`);
  }
  if (text === undefined) {
    throw new SerializationError(`${what} must be JSON-serializable (got a ${typeof value})`);
  }
  return text;
}

/**
 * The stored form of an error: `{type, message, traceback}` (the shape the
 * Python client writes too). A StepError keeps the step's original error.
 * @param {unknown} err
 * @returns {Record<string, unknown>}
 */
function errorPayload(err) {
  if (err instanceof StepError) {
    return { ...err.error, step_id: err.stepId, step: err.stepName };
  }
  if (err instanceof Error) {
    return { type: err.name || 'Error', message: err.message, traceback: err.stack ?? null };
  }
  return { type: 'Error', message: String(err), traceback: null };
}

/** @param {unknown} err @returns {boolean} whether it is a lost connection, not a bad statement */
function isConnectionError(err) {
  const code = /** @type {{code?: string}} */ (err)?.code;
  if (typeof code !== 'string') return true; // socket errors, "Connection terminated", pool ended
  if (!/^[0-9A-Z]{5}$/.test(code)) return true; // ECONNREFUSED, ECONNRESET...: not a SQLSTATE
  return code.startsWith('08') || code.startsWith('57P') || code.startsWith('53');
}

/**
 * One fenced write (checkpoint, finish, fail, heartbeat) on a pooled
 * connection, retried on a new connection with backoff while the connection
 * is lost and the lease still holds (`leaseUntil`, a `performance.now()` in
 * ms). The write is fenced by run_id: a retry of one that did commit before
 * the connection broke is recognised by the database as this run's own; one
 * that lost the race to a reclaim gets RT002. Past the lease, or once
 * `signal` aborts, the last error is thrown and the run is given up.
 * @param {import('pg').Pool} pool @param {string} text @param {unknown[]} params
 * @param {number} leaseUntil @param {{warn: (msg: string) => void}} log
 * @param {AbortSignal} [signal]
 * @returns {Promise<import('pg').QueryResult>}
 */
async function fencedQuery(pool, text, params, leaseUntil, log, signal) {
  let wait = 50;
  for (;;) {
    try {
      return await pool.query(text, params);
    } catch (err) {
      const left = leaseUntil - performance.now();
      if (!isConnectionError(err) || left <= wait || signal?.aborted) throw err;
      log.warn(`connection lost during a fenced write (${err.message}); retrying in ` +
        `${wait} ms, ${(left / 1000).toFixed(1)} s of lease left`);
      await delay(wait);
      wait = Math.min(wait * 2, 1000);
    }
  }
}

/**
 * pg client configuration from a DSN: a `postgres://` URL, or a libpq keyword
 * string (`host=... port=... user=... dbname=...`) as psql and psycopg take.
 * Without one, pg reads the PG* environment variables.
 * @param {string|undefined} dsn
 * @returns {import('pg').ClientConfig}
 */
function parseDsn(dsn) {
  if (!dsn) return {};
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(dsn)) return { connectionString: dsn };
  const keywords = {
    host: 'host', hostaddr: 'host', port: 'port', user: 'user', password: 'password',
    dbname: 'database', application_name: 'application_name',
    connect_timeout: 'connectionTimeoutMillis',
  };
  /** @type {Record<string, unknown>} */
  const config = {};
  const re = /\s*([a-z_]+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))/gy;
  let match;
  let end = 0;
  while ((match = re.exec(dsn)) !== null) {
    const [, key, quoted, bare] = match;
    const value = quoted !== undefined ? quoted.replace(/\\(.)/g, '$1') : bare;
    end = re.lastIndex;
    if (key === 'sslmode') {
      if (value !== 'disable' && value !== 'allow' && value !== 'prefer') {
        config.ssl = value.startsWith('verify') ? true : { rejectUnauthorized: false };
      }
    } else if (key in keywords) {
      config[keywords[key]] = key === 'port' ? Number(value)
        : key === 'connect_timeout' ? Number(value) * 1000 : value;
    }
  }
  if (dsn.slice(end).trim() !== '') throw new Error(`cannot parse the connection string ${JSON.stringify(dsn)}`);
  return config;
}

/**
 * Something to await: resolves at once if woken since the last wait,
 * otherwise on the next wake() or after a timeout. Lets the claim loop sleep
 * without busy-looping and without missing a notification that arrived
 * while it was claiming.
 */
class Waker {
  #pending = false;
  /** @type {(() => void) | null} */
  #resolve = null;

  wake() {
    this.#pending = true;
    const resolve = this.#resolve;
    this.#resolve = null;
    resolve?.();
  }

  clear() {
    this.#pending = false;
  }

  /** @param {number} ms */
  async wait(ms) {
    if (!this.#pending && ms > 0) {
      let timer;
      await new Promise((resolve) => {
        this.#resolve = resolve;
        timer = setTimeout(resolve, ms);
      });
      clearTimeout(timer);
      this.#resolve = null;
    }
    this.#pending = false;
  }
}

/** @typedef {{debug: Function, info: Function, warn: Function, error: Function}} Logger */

/**
 * A logger writing `time level message` lines to stderr.
 * @param {'debug'|'info'|'warn'|'error'} [level]
 * @returns {Logger}
 */
function consoleLogger(level = 'info') {
  const order = ['debug', 'info', 'warn', 'error'];
  const min = Math.max(0, order.indexOf(level));
  /** @type {any} */
  const logger = {};
  for (const [i, name] of order.entries()) {
    logger[name] = i < min ? () => {} : (/** @type {string} */ msg) =>
      process.stderr.write(`${new Date().toISOString()} ${name.toUpperCase()} ratchet-node: ${msg}\n`);
  }
  return logger;
}

/** Which step (if any) the current async call chain is executing. */
const currentStep = new AsyncLocalStorage();

// ---------------------------------------------------------------- one run

/**
 * One run of one workflow: the row `claim` returned and what happened since.
 * Internal; workflow code sees it through {@link WorkflowContext}.
 */
class Run {
  /**
   * @param {Worker} worker
   * @param {{workflow_id: string, name: string, input: unknown, run_id: string,
   *          attempt: number, steps: Array<{step_id: number, name: string,
   *          output: unknown, error: unknown}> | null}} row
   */
  constructor(worker, row) {
    this.worker = worker;
    this.workflowId = row.workflow_id;
    this.name = row.name;
    this.input = row.input;
    this.runId = String(row.run_id); // bigint: kept as text, sent back as is
    this.attempt = Number(row.attempt ?? 1);
    /** @type {Map<number, {step_id: number, name: string, output: unknown, error: unknown}>} */
    this.recorded = new Map((row.steps ?? []).map((s) => [Number(s.step_id), s]));
    this.nextStep = 0;
    /** @type {RunEnded | null} set once the run has ended without finishing */
    this.ended = null;
    /** @type {NonDeterminismError | null} fails the run even if user code caught it */
    this.fatal = null;
    this.abortController = new AbortController();
    this.context = new WorkflowContext(this);
    /** performance.now() (ms) by which the lease expires: the claim, then each heartbeat */
    this.leaseUntil = performance.now() + worker.lease * 1000;
  }

  /** Throw if the run has ended (user code may have swallowed the first RunEnded). */
  check() {
    if (this.ended) throw this.ended;
  }

  /**
   * Mark the run as ended (first reason wins) and abort `ctx.signal`.
   * @param {RunEnded['kind']} kind @param {string} reason @returns {RunEnded}
   */
  end(kind, reason) {
    if (!this.ended) {
      this.ended = new RunEnded(kind, reason);
      this.abortController.abort(this.ended);
    }
    return this.ended;
  }

  /** The next step number, in call order. */
  takeStep() {
    this.check();
    return this.nextStep++;
  }

  /**
   * The recorded step at `stepId`, or undefined. A recorded step of another
   * name means the code is not deterministic: the run fails.
   * @param {number} stepId @param {string} name
   */
  lookup(stepId, name) {
    const rec = this.recorded.get(stepId);
    if (rec && rec.name !== name) {
      this.fatal = new NonDeterminismError(
        `workflow ${JSON.stringify(this.workflowId)} (${this.name}) is not deterministic: step ` +
        `#${stepId} was recorded as ${JSON.stringify(rec.name)} but the code now calls ` +
        `${JSON.stringify(name)} at that position`);
      throw this.fatal;
    }
    return rec;
  }

  /**
   * One fenced statement for this run. RT002/RT006 end the run quietly (the
   * workflow was reclaimed by another run or cancelled); RT003 and lost
   * connections end it so that the worker gives the workflow back. A lost
   * connection is first retried while the lease holds (fencedQuery).
   * @param {string} text @param {unknown[]} params
   * @returns {Promise<import('pg').QueryResult>}
   */
  async query(text, params) {
    this.check();
    try {
      return await fencedQuery(this.worker.pool, text, params, this.leaseUntil, this.worker.log,
        this.abortController.signal);
    } catch (err) {
      const code = /** @type {{code?: string}} */ (err).code;
      if (code && FENCED.has(code)) {
        throw this.end('lost', `${code === 'RT002' ? 'stale run' : 'cancelled'} (${code}): ${err.message}`);
      }
      if (code === 'RT003') throw this.end('release', `duplicate step (RT003): ${err.message}`);
      if (isConnectionError(err)) throw this.end('release', `database connection problem: ${err.message}`);
      // Only the workflow's code may fail a step or a workflow. An RT error
      // about the data (RT005: an output over 1 MiB) is the workflow's; any
      // other database error of this call (serialization failure, duplicate
      // prepared statement behind a pooler, admin shutdown, RT007) is
      // plumbing: log it and release the run, recording nothing.
      if (typeof code === 'string' && (!code.startsWith('RT') || code === 'RT007' || code === 'RT009')) {
        this.worker.log.warn(`workflow ${this.workflowId}: database error in Ratchet's own call ` +
          `(SQLSTATE ${code}): ${err.message}; releasing the run, nothing is recorded`);
        throw this.end('release', `database error (${code}): ${err.message}`);
      }
      throw err;
    }
  }

  /**
   * Give the workflow back to its queue at once, costing no attempt
   * (`suspend(until => now())`). Quiet if the run is no longer current.
   * @param {string} why @returns {Promise<boolean>} whether it was released
   */
  async release(why) {
    this.end('released', `released: ${why}`);
    try {
      await this.worker.pool.query(SQL.suspend, [this.workflowId, this.runId, null]);
    } catch (err) {
      if (!FENCED.has(err.code)) {
        this.worker.log.warn(`could not release workflow ${this.workflowId} (${err.message}); ` +
          'its lease will expire instead');
      }
      return false;
    }
    this.worker.log.info(`released workflow ${this.workflowId} (${why})`);
    return true;
  }
}

// ---------------------------------------------------------------- workflow context

/**
 * What a workflow function receives: its identity and the durable operations.
 * Step results are JSON: what a step returns is what a replay returns (after
 * a JSON round trip, so a Date comes back as a string either way).
 */
class WorkflowContext {
  /** @type {Run} */
  #run;

  /** @param {Run} run */
  constructor(run) {
    this.#run = run;
  }

  /** @returns {string} */
  get workflowId() { return this.#run.workflowId; }

  /** @returns {string} the current run's id (bigint, as text) */
  get runId() { return this.#run.runId; }

  /** @returns {number} 1 on the first claim, +1 per retry or crash recovery */
  get attempt() { return this.#run.attempt; }

  /** @returns {string} the workflow's registered name */
  get name() { return this.#run.name; }

  /** @returns {string} the id of the worker running it */
  get workerId() { return this.#run.worker.workerId; }

  /** @returns {AbortSignal} aborted when this run ends early (lost, cancelled, released) */
  get signal() { return this.#run.abortController.signal; }

  /**
   * `"<workflow_id>:<step_id>"` of the step executing in this async context:
   * stable across retries, crashes and replays, so pass it to outside
   * systems (payment APIs...) as their idempotency key. Only inside a step.
   * @returns {string}
   */
  get stepIdempotencyKey() {
    const step = currentStep.getStore();
    if (!step || step.run !== this.#run) {
      throw new RatchetError('ctx.stepIdempotencyKey is only available inside a step');
    }
    return `${this.#run.workflowId}:${step.stepId}`;
  }

  /**
   * Run `fn` as the next step, or return its recorded result on replay.
   *
   * The result is checkpointed with one `record_step` call before this
   * returns, so a crash after that never runs the step again. If `fn` throws,
   * the error is recorded (and raised again on every replay) as a
   * {@link StepError}. A step calling the outside world may run more than
   * once if the worker dies between the call and the checkpoint: use
   * {@link stepIdempotencyKey}. Inside a step, `ctx.step` just calls `fn`.
   *
   * @template T
   * @param {string} name stable across deployments: replay checks it
   * @param {() => Promise<T> | T} fn
   * @returns {Promise<T>}
   */
  async step(name, fn) {
    const run = this.#run;
    const outer = currentStep.getStore();
    if (outer && outer.run === run) return fn(); // nested: plain code inside the outer step
    const stepId = run.takeStep();
    const rec = run.lookup(stepId, name);
    if (rec) {
      if (rec.error != null) throw new StepError(/** @type {any} */ (rec.error), stepId, name);
      return /** @type {T} */ (rec.output);
    }
    let output;
    try {
      const value = await currentStep.run({ run, stepId }, fn);
      run.check(); // lost while the step ran: record nothing
      output = toJson(value, `the result of step ${JSON.stringify(name)}`);
    } catch (err) {
      if (err instanceof RunEnded) throw err;
      run.check();
      const error = errorPayload(err);
      await run.query(SQL.recordStep,
        [run.workflowId, run.runId, stepId, name, null, toJson(error, 'the step error')]);
      throw new StepError(error, stepId, name);
    }
    await run.query(SQL.recordStep, [run.workflowId, run.runId, stepId, name, output, null]);
    return JSON.parse(output);
  }

  /**
   * Sleep durably. The wake-up time is recorded as a `sleep` step from the
   * database clock (`ratchet.durable_sleep`); a sleep longer than the worker's
   * `suspendThreshold` gives the workflow back with `ratchet.suspend(until =>
   * wake_at)` and any worker resumes it then, holding no slot meanwhile.
   * @param {number} seconds
   * @returns {Promise<void>}
   */
  async sleep(seconds) {
    const run = this.#run;
    const stepId = run.takeStep();
    const rec = run.lookup(stepId, 'sleep');
    if (rec && [...run.recorded.keys()].some((k) => k > stepId)) return; // long over
    const { rows: [row] } = await run.query(SQL.durableSleep,
      [run.workflowId, run.runId, stepId, Number(seconds)]);
    const remaining = Number(row.remaining_seconds);
    if (remaining <= 0) return;
    if (remaining > run.worker.suspendThreshold) {
      await run.query(SQL.suspend, [run.workflowId, run.runId, row.wake_at]);
      throw run.end('suspended', `suspended until ${row.wake_at}`);
    }
    try {
      await delay(remaining * 1000, undefined, { signal: this.signal });
    } catch {
      // aborted: the run ended; check() below says how
    }
    run.check();
  }
}

// ---------------------------------------------------------------- the worker

/**
 * @typedef {object} WorkerOptions
 * @property {string | import('pg').PoolConfig} [connection] DSN (URL or libpq
 *   keywords) or pg config; default: RATCHET_DATABASE_URL, DATABASE_URL, then PG*
 * @property {string | import('pg').ClientConfig} [listenConnection] direct connection
 *   (not through a pooler) to LISTEN on for wake-ups; default: RATCHET_LISTEN_DSN,
 *   else `connection` itself unless `pooled`
 * @property {boolean} [pooled] `connection` is a transaction pooler (pgbouncer): never
 *   LISTEN on it; without `listenConnection` the worker polls every 0.2 s by default
 *   (default: RATCHET_POOLED=1)
 * @property {import('pg').Pool} [pool] use this pool (not closed by the worker)
 * @property {string[]} [queues] queues to serve (default `['default']`)
 * @property {string} [workerId] default `host:pid:node-xxxxxxxx`
 * @property {number} [concurrency] workflows run at once (default 4)
 * @property {number} [lease] seconds a claim stays valid without heartbeat (default 30)
 * @property {number} [pollInterval] longest wait between claims, seconds (default 1)
 * @property {number} [gracePeriod] seconds to let runs finish on stop() (default 10)
 * @property {number} [suspendThreshold] sleeps longer than this suspend (default 2)
 * @property {number | null} [exitWhenIdle] stop after this many seconds with nothing to do
 * @property {number} [tickInterval] seconds between `ratchet.tick()` calls; 0: never (default 5)
 * @property {Logger} [logger]
 */

/**
 * @typedef {object} WorkflowOptions
 * @property {number} [retries] how many times a run that threw is retried (default 0)
 * @property {number} [retryInterval] seconds before the first retry (default 1)
 * @property {number} [retryBackoff] multiplier per further retry (default 2)
 * @property {number} [retryMaxDelay] cap on the delay between retries, seconds (default 300)
 *
 * These become the SQL retry policy (`ratchet.retry_delay`); the database
 * computes every delay. `retries: n` means at most n + 1 attempts.
 */

/**
 * @callback WorkflowFn
 * @param {WorkflowContext} ctx
 * @param {any} input the workflow's JSON input
 * @returns {Promise<unknown>} the result (JSON)
 */

/**
 * Claims workflows from queues and runs the registered ones.
 *
 * Emits `claimed` (ctx) and `ended` ({workflowId, runId, outcome}) where the
 * outcome is `succeeded`, `failed`, the status `fail` returned (`enqueued`
 * for a retry, `dead`), `suspended`, `released` or `lost`.
 */
class Worker extends EventEmitter {
  /** @type {Map<string, {fn: WorkflowFn, options: Required<WorkflowOptions>}>} */
  #workflows = new Map();
  /** @type {Map<string, Run>} running workflows by id */
  #active = new Map();
  /** @type {Set<Promise<void>>} */
  #tasks = new Set();
  #waker = new Waker();
  #stopping = false;
  #force = false;
  /** @type {pg.Client | null} */
  #listener = null;
  #listenerRetryAt = 0;
  #ownsPool = false;
  #running = false;
  /** @type {import('pg').ClientConfig} */
  #clientConfig;
  /** @type {import('pg').ClientConfig | null} where LISTEN goes (null: nowhere, poll) */
  #listenConfig = null;

  /** @param {WorkerOptions} [options] */
  constructor(options = {}) {
    super();
    const connection = options.connection ??
      process.env.RATCHET_DATABASE_URL ?? process.env.DATABASE_URL;
    this.queues = options.queues?.length ? [...options.queues] : ['default'];
    this.workerId = options.workerId ??
      `${os.hostname()}:${process.pid}:node-${crypto.randomBytes(4).toString('hex')}`;
    this.concurrency = options.concurrency ?? 4;
    this.lease = options.lease ?? 30;
    const listen = options.listenConnection ?? process.env.RATCHET_LISTEN_DSN ?? null;
    this.pooled = options.pooled ?? ['1', 'true', 'yes'].includes(
      (process.env.RATCHET_POOLED ?? '').toLowerCase());
    this.pollInterval = options.pollInterval ?? (this.pooled && !listen ? 0.2 : 1);
    this.gracePeriod = options.gracePeriod ?? 10;
    this.suspendThreshold = options.suspendThreshold ?? 2;
    this.exitWhenIdle = options.exitWhenIdle ?? null;
    this.tickInterval = options.tickInterval ?? 5;
    this.log = options.logger ?? consoleLogger();
    if (!(this.concurrency >= 1)) throw new RangeError('concurrency must be >= 1');
    if (!(this.lease > 0)) throw new RangeError('lease must be > 0 seconds');
    this.#clientConfig = typeof connection === 'string' || connection === undefined
      ? parseDsn(connection) : { ...connection };
    if (listen) {
      this.#listenConfig = typeof listen === 'string' ? parseDsn(listen) : { ...listen };
    } else if (!this.pooled) {
      this.#listenConfig = this.#clientConfig;
    }
    if (options.pool) {
      this.pool = options.pool;
      this.#clientConfig = { ...options.pool.options, ...this.#clientConfig };
    } else {
      this.pool = new pg.Pool({ ...this.#clientConfig, max: this.concurrency + 2 });
      this.#ownsPool = true;
    }
    // An idle pooled connection that dies must not crash the process.
    this.pool.on('error', (err) => this.log.warn(`idle connection error: ${err.message}`));
  }

  /**
   * Register a workflow. `fn(ctx, input)` must be deterministic in the order
   * and names of the steps it calls, given the input and the steps' results.
   * @param {string} name the name workflows are started with
   * @param {WorkflowFn} fn
   * @param {WorkflowOptions} [options]
   * @returns {this}
   */
  workflow(name, fn, options = {}) {
    if (this.#workflows.has(name)) throw new Error(`workflow ${JSON.stringify(name)} is already registered`);
    this.#workflows.set(name, {
      fn,
      retryPolicy: retryPolicy({ retries: 0, retryInterval: 1, retryBackoff: 2,
                                 retryMaxDelay: 300, ...options }),
    });
    return this;
  }

  /** @returns {number} how many workflows this worker is running now */
  get activeCount() {
    return this.#active.size;
  }

  /**
   * Ask the worker to shut down: stop claiming, let running workflows finish
   * for up to `gracePeriod` seconds, then release the rest back to their
   * queue (no attempt is counted). A second call skips the grace period.
   */
  stop() {
    if (this.#stopping) this.#force = true;
    this.#stopping = true;
    this.#waker.wake();
  }

  /**
   * Run until {@link stop} (or `exitWhenIdle`); resolves once shut down.
   * @returns {Promise<void>}
   */
  async run() {
    if (this.#running) throw new Error('this worker is already running');
    this.#running = true;
    const heartbeat = setInterval(() => void this.#heartbeat(), (this.lease * 1000) / 3);
    try {
      if (this.#listenConfig) await this.#connectListener(this.#listenConfig);
      this.log.info(`worker ${this.workerId} serving ${this.queues.join(', ')} ` +
        `(concurrency ${this.concurrency}, lease ${this.lease} s)`);
      this.emit('started');
      await this.#loop();
      await this.#shutdown();
    } finally {
      clearInterval(heartbeat);
      const listener = this.#listener;
      this.#listener = null;
      await listener?.end().catch(() => {});
      if (this.#ownsPool) await this.pool.end().catch(() => {});
      this.log.info(`worker ${this.workerId} stopped`);
      this.emit('stopped');
    }
  }

  // -- claim loop ----------------------------------------------------------

  async #loop() {
    let idleSince = Date.now();
    let nextTick = 0;
    while (!this.#stopping) {
      if (!this.#listener && this.#listenConfig && Date.now() >= this.#listenerRetryAt) {
        await this.#connectListener(this.#listenConfig);
      }
      if (this.tickInterval > 0 && Date.now() >= nextTick) {
        nextTick = Date.now() + this.tickInterval * 1000;
        await this.#tick();
      }
      this.#waker.clear();
      const free = this.concurrency - this.#active.size;
      const claimed = free > 0 ? await this.#claim(free) : 0;
      if (claimed > 0 || this.#active.size > 0) idleSince = Date.now();
      if (claimed > 0) continue; // maybe more: claim again at once (or once a slot frees)
      let wait = this.pollInterval * 1000;
      if (this.exitWhenIdle != null && this.#active.size === 0) {
        const left = idleSince + this.exitWhenIdle * 1000 - Date.now();
        if (left <= 0) {
          this.log.info(`idle for ${this.exitWhenIdle} s, exiting`);
          break;
        }
        wait = Math.min(wait, left);
      }
      // A notification, a finished run or stop() ends the wait early.
      this.log.debug(`waiting up to ${Math.round(wait)} ms for work`);
      await this.#waker.wait(wait);
    }
    this.#stopping = true;
  }

  /** @param {number} count @returns {Promise<number>} how many were claimed */
  async #claim(count) {
    let rows;
    try {
      ({ rows } = await this.pool.query(SQL.claim,
        // only the names registered here: a workflow no worker knows waits
        [this.queues, this.workerId, count, this.lease, [...this.#workflows.keys()]]));
    } catch (err) {
      this.log.warn(`claim failed: ${err.message}`);
      await this.#waker.wait(this.pollInterval * 1000);
      return 0;
    }
    for (const row of rows) {
      try {
        row.input = JSON.parse(row.input);
        row.steps = JSON.parse(row.steps);
      } catch (err) {
        await this.#failUndecodable(row, err);
        continue;
      }
      const run = new Run(this, row);
      this.#active.set(run.workflowId, run);
      const task = this.#execute(run).finally(() => {
        this.#tasks.delete(task);
        if (this.#active.get(run.workflowId) === run) this.#active.delete(run.workflowId);
        this.#waker.wake(); // a slot is free
      });
      this.#tasks.add(task);
    }
    return rows.length;
  }

  /**
   * A claimed row whose input or recorded steps cannot be parsed (nested too
   * deep for the parser, data of an old version) fails alone with a stored
   * error; its batch neighbours run. If even that fails, its lease expires.
   * @param {{workflow_id: string, run_id: string}} row @param {unknown} err
   */
  async #failUndecodable(row, err) {
    const reason = String(/** @type {any} */ (err)?.message ?? err).slice(0, 1000);
    this.log.error(`workflow ${row.workflow_id} has an input or recorded step this worker ` +
      `cannot decode (${reason}); failing it`);
    const error = { type: 'UndecodableInput', traceback: null,
      message: `the workflow's input or recorded steps cannot be decoded as JSON by the worker (${reason})` };
    try {
      await this.pool.query(SQL.fail, [row.workflow_id, String(row.run_id), JSON.stringify(error), null]);
    } catch (failErr) {
      this.log.warn(`could not record the failure of ${row.workflow_id}: ${failErr.message}`);
    }
    this.emit('ended', { workflowId: row.workflow_id, runId: String(row.run_id), outcome: 'undecodable' });
  }

  // -- running one workflow -------------------------------------------------

  /** @param {Run} run */
  async #execute(run) {
    const { workflowId } = run;
    this.emit('claimed', run.context);
    this.log.debug(`running ${workflowId} (${run.name}), attempt ${run.attempt}, ` +
      `${run.recorded.size} recorded step(s)`);
    let outcome = 'lost';
    try {
      outcome = await this.#runToEnd(run);
    } catch (err) {
      if (err instanceof RunEnded) {
        outcome = await this.#dropped(run, err);
      } else {
        this.log.error(`unexpected error running ${workflowId}: ${err.stack ?? err}`);
        outcome = (await run.release('unexpected error in the worker')) ? 'released' : 'lost';
      }
    }
    this.emit('ended', { workflowId, runId: run.runId, outcome });
  }

  /** @param {Run} run @returns {Promise<string>} the outcome */
  async #runToEnd(run) {
    const def = this.#workflows.get(run.name);
    if (!def) {
      this.log.error(`no workflow named ${JSON.stringify(run.name)} is registered ` +
        `(workflow ${run.workflowId}); failing this attempt`);
      const error = { type: 'UnknownWorkflow', traceback: null,
        message: `no workflow named ${JSON.stringify(run.name)} is registered with the worker` };
      const { rows } = await run.query(SQL.failRetryIn,
        [run.workflowId, run.runId, toJson(error, 'error'), 30]);
      return rows[0].status;
    }
    /** @type {unknown} */
    let result;
    /** @type {unknown} */
    let raised = null;
    let threw = false;
    try {
      result = await def.fn(run.context, run.input);
    } catch (err) {
      raised = err;
      threw = true;
    }
    // The run may have ended even if the workflow code swallowed the signal.
    if (run.ended) return this.#dropped(run, run.ended);
    if (run.fatal) [raised, threw] = [run.fatal, true];
    if (!threw) {
      try {
        const output = toJson(result, `the result of workflow ${JSON.stringify(run.name)}`);
        await run.query(SQL.finish, [run.workflowId, run.runId, output]);
        this.log.info(`workflow ${run.workflowId} succeeded`);
        return 'succeeded';
      } catch (err) {
        // Lost or released: not a failure. Anything else (a result that is not
        // JSON, RT005 for one over 1 MiB) fails the workflow.
        if (err instanceof RunEnded) throw err;
        raised = err;
      }
    }
    const error = errorPayload(raised);
    const { rows } = await run.query(SQL.fail,
      [run.workflowId, run.runId, toJson(error, 'the workflow error'),
       !(raised instanceof NonDeterminismError), def.retryPolicy]);
    this.log.info(`workflow ${run.workflowId} failed (${error.type}: ${error.message}) -> ${rows[0].status}`);
    return rows[0].status;
  }

  /** @param {Run} run @param {RunEnded} ended @returns {Promise<string>} */
  async #dropped(run, ended) {
    if (ended.kind === 'release') {
      return (await run.release(ended.message)) ? 'released' : 'lost';
    }
    if (ended.kind === 'lost') this.log.info(`workflow ${run.workflowId}: ${ended.message}; dropping this run`);
    return ended.kind;
  }

  // -- background chores ------------------------------------------------------

  #heartbeating = false;

  async #heartbeat() {
    if (this.#heartbeating || this.#active.size === 0) return;
    this.#heartbeating = true;
    const runs = [...this.#active.values()];
    const sent = performance.now();
    try {
      // only the runs this worker knows: a claim whose reply was lost must expire;
      // a lost connection is retried on a new one while the leases hold
      await fencedQuery(this.pool, SQL.heartbeat,
        [this.workerId, this.lease, runs.map((run) => run.workflowId)],
        Math.min(...runs.map((run) => run.leaseUntil)), this.log);
      for (const run of runs) run.leaseUntil = Math.max(run.leaseUntil, sent + this.lease * 1000);
    } catch (err) {
      this.log.warn(`heartbeat failed: ${err.message}`);
    } finally {
      this.#heartbeating = false;
    }
  }

  async #tick() {
    try {
      const { rows } = await this.pool.query(SQL.tick);
      if (rows[0]?.started) this.log.info(`started ${rows[0].started} scheduled workflow(s)`);
    } catch (err) {
      this.log.warn(`tick() failed: ${err.message}`);
    }
  }

  /** LISTEN on each queue's channel; on failure, polling carries on and we retry later. */
  /** @param {import('pg').ClientConfig} config */
  async #connectListener(config) {
    const client = new pg.Client(config);
    const lost = (/** @type {Error} */ err) => {
      if (this.#listener !== client) return;
      this.#listener = null;
      this.#listenerRetryAt = Date.now() + 5000;
      if (!this.#stopping) this.log.warn(`notification connection lost (${err?.message ?? 'closed'}); polling`);
      client.end().catch(() => {});
    };
    client.on('notification', () => this.#waker.wake());
    client.on('error', lost);
    client.on('end', () => lost(new Error('connection ended')));
    try {
      await client.connect();
      for (const queue of this.queues) {
        await client.query(`LISTEN ${client.escapeIdentifier(`ratchet.queue.${queue}`)}`);
      }
      this.#listener = client;
    } catch (err) {
      this.#listenerRetryAt = Date.now() + 5000;
      this.log.warn(`cannot LISTEN (${err.message}); polling every ${this.pollInterval} s`);
      client.end().catch(() => {});
    }
  }

  // -- shutdown ---------------------------------------------------------------

  async #shutdown() {
    const deadline = Date.now() + this.gracePeriod * 1000;
    if (this.#active.size) {
      this.log.info(`waiting up to ${this.gracePeriod} s for ${this.#active.size} running workflow(s)`);
    }
    while (this.#active.size && !this.#force && Date.now() < deadline) {
      await this.#waker.wait(deadline - Date.now());
    }
    // Whatever is still running goes back to its queue now, for any worker.
    await Promise.all([...this.#active.values()].map((run) => run.release('worker shutting down')));
    // Let runs that are between statements notice (bounded: user code may hang).
    await Promise.race([Promise.allSettled([...this.#tasks]), delay(500)]);
  }
}

// ---------------------------------------------------------------- command line

const USAGE = `usage: node ratchet-worker.js [options]

  --dsn DSN              postgres:// URL or libpq "host=... dbname=..." string
                         (default: RATCHET_DATABASE_URL, DATABASE_URL, then PG* variables)
  --listen-dsn DSN       direct connection for LISTEN wake-ups, bypassing a pooler
                         (default: RATCHET_LISTEN_DSN)
  --pooled               --dsn is a transaction pooler: never LISTEN on it
  --queue NAME           queue to serve, repeatable (default: default)
  --worker-id ID         worker id (default: host:pid:node-xxxxxxxx)
  --concurrency N        workflows run at once (default 4)
  --lease SECONDS        lease; heartbeats every lease/3 (default 30)
  --poll-interval S      longest wait between claims (default 1)
  --grace-period S       on SIGTERM, time running workflows get to finish (default 10)
  --exit-when-idle S     exit 0 after S seconds with nothing to run
  --workflows FILE       module exporting register(worker), repeatable
                         (default: ./polyglot_order.js next to this file)
  --log-level LEVEL      debug, info, warn or error (default info)
  -h, --help`;

/**
 * The command line: run a worker until SIGTERM/SIGINT (twice: skip the grace
 * period) or until idle. Resolves with the exit status.
 * @param {string[]} argv
 * @returns {Promise<number>}
 */
async function main(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      dsn: { type: 'string' },
      'listen-dsn': { type: 'string' },
      pooled: { type: 'boolean' },
      queue: { type: 'string', multiple: true },
      'worker-id': { type: 'string' },
      concurrency: { type: 'string' },
      lease: { type: 'string' },
      'poll-interval': { type: 'string' },
      'grace-period': { type: 'string' },
      'exit-when-idle': { type: 'string' },
      workflows: { type: 'string', multiple: true },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const num = (/** @type {string|undefined} */ v, /** @type {string} */ flag) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${flag} must be a non-negative number, got ${v}`);
    return n;
  };
  const worker = new Worker({
    connection: values.dsn,
    listenConnection: values['listen-dsn'],
    pooled: values.pooled,
    queues: values.queue,
    workerId: values['worker-id'],
    concurrency: num(values.concurrency, '--concurrency'),
    lease: num(values.lease, '--lease'),
    pollInterval: num(values['poll-interval'], '--poll-interval'),
    gracePeriod: num(values['grace-period'], '--grace-period'),
    exitWhenIdle: num(values['exit-when-idle'], '--exit-when-idle') ?? null,
    logger: consoleLogger(/** @type {any} */ (values['log-level'] ?? 'info')),
  });
  const modules = values.workflows ?? [path.join(__dirname, 'polyglot_order.js')];
  for (const file of modules) {
    const mod = require(path.resolve(file));
    const register = typeof mod === 'function' ? mod : mod.register;
    if (typeof register !== 'function') throw new Error(`${file} does not export register(worker)`);
    register(worker);
  }
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      worker.log.warn(`got ${signal}, shutting down${worker.activeCount ? ' gracefully' : ''}`);
      worker.stop();
    });
  }
  await worker.run();
  return 0;
}

module.exports = {
  Worker,
  WorkflowContext,
  RatchetError,
  NonDeterminismError,
  SerializationError,
  StepError,
  RunEnded,
  parseDsn,
  consoleLogger,
  SQL,
};

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (status) => process.exit(status),
    (err) => {
      process.stderr.write(`ratchet-node: ${err.stack ?? err}\n`);
      process.exit(2);
    },
  );
}
