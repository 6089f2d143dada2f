/**
 * `polyglot_order`: the demo workflow, written twice with the same semantics,
 * here for the Node worker and in polyglot_order.py for the Python client.
 * Either language's worker can start a workflow, crash, and leave the rest to
 * the other: the steps' outputs are plain JSON, so each replays the other's
 * checkpoints.
 *
 * Input: `{"order_id": int}` plus optional test knobs (same meaning in both):
 *   - `delay_ms`: each step body waits this long;
 *   - `hold_step`, `hold_file`: the body of step `hold_step` waits until
 *     `hold_file` exists (a barrier a test controls);
 *   - `trace_file`: each step body appends `<language> <idempotency key> <step>`
 *     when it starts, so a test can count executions (replays append nothing).
 *
 * Steps, in order:
 *   0 `reserve` -> `{"reserved": order_id, "by": language}`
 *   1 `charge`  -> `"charge-<order_id>"`
 *   2 `ship`    -> `{"shipped": true, "by": language}`
 * Result: `{"order_id", "charge", "by"}` where `by` lists the languages that
 * ran the steps, in step order, repeats merged (`["node"]`, or `["node",
 * "python"]` when a Node worker reserved and a Python worker shipped).
 * `charge`'s output is a bare string, so its language is not in the result;
 * `ratchet.steps.run_id` tells which run recorded it.
 *
 * @module polyglot_order
 */

'use strict';

const fs = require('node:fs');
const { setTimeout: delay } = require('node:timers/promises');

const LANGUAGE = 'node';

/**
 * @typedef {object} OrderInput
 * @property {number} order_id
 * @property {number} [delay_ms]
 * @property {string} [hold_step]
 * @property {string} [hold_file]
 * @property {string} [trace_file]
 */

/**
 * The test knobs, run at the start of each step body.
 * @param {import('./ratchet-worker').WorkflowContext} ctx
 * @param {OrderInput} input
 * @param {string} step
 */
async function knobs(ctx, input, step) {
  if (input.trace_file) {
    fs.appendFileSync(input.trace_file, `${LANGUAGE} ${ctx.stepIdempotencyKey} ${step}\n`);
  }
  if (input.hold_file && input.hold_step === step) {
    while (!fs.existsSync(input.hold_file)) await delay(20, undefined, { signal: ctx.signal });
  }
  if (input.delay_ms) await delay(input.delay_ms, undefined, { signal: ctx.signal });
}

/**
 * Languages in order, adjacent repeats merged.
 * @param {Array<string | undefined>} seen
 * @returns {string[]}
 */
function mergeRuns(seen) {
  return seen.filter((lang, i) => lang && lang !== seen[i - 1]);
}

/**
 * @param {import('./ratchet-worker').WorkflowContext} ctx
 * @param {OrderInput} input
 */
async function polyglotOrder(ctx, input) {
  const orderId = input.order_id;
  const reserved = await ctx.step('reserve', async () => {
    await knobs(ctx, input, 'reserve');
    return { reserved: orderId, by: LANGUAGE };
  });
  const charge = await ctx.step('charge', async () => {
    await knobs(ctx, input, 'charge');
    return `charge-${orderId}`;
  });
  const shipped = await ctx.step('ship', async () => {
    await knobs(ctx, input, 'ship');
    return { shipped: true, by: LANGUAGE };
  });
  return { order_id: orderId, charge, by: mergeRuns([reserved.by, shipped.by]) };
}

/** @param {import('./ratchet-worker').Worker} worker */
function register(worker) {
  worker.workflow('polyglot_order', polyglotOrder);
}

module.exports = { register, polyglotOrder, LANGUAGE };
