// The checkout's logic, natively, under the grants of the example's
// escrow.toml: node --import ./guest-sdk/js/register.js --test examples/checkout/javascript/
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Sandbox } from '../../../guest-sdk/js/testing.js';
import { run } from './checkout.js';

const config = new URL('../escrow.toml', import.meta.url);

test('a checkout charges, saves and sends the receipt, in that order', () => {
  const recording = Sandbox.fromConfig(config).run(run, { id: 7, amount: 500 });

  assert.equal(recording.status, 'committed');
  assert.deepEqual(recording.output, { order: 7, intents: 3 });
  assert.deepEqual(recording.committedEffects(), ['payments.charge', 'orders.save', 'email.send']);
  assert.deepEqual(recording.intents[0].json(), { amount: 500, order: 7 });
});

test('a failed checkout dispatches nothing, not even the charge', () => {
  const recording = Sandbox.fromConfig(config).run(run, { fail: true });

  assert.equal(recording.status, 'failed');
  assert.equal(recording.error, 'saving order 42 failed: the orders table is read-only');
  assert.deepEqual(
    recording.intents.map((i) => i.fate),
    ['discarded'],
  );
});

test('under drop the checkout runs and dispatches nothing', () => {
  const recording = Sandbox.fromConfig(config).policy('drop').run(run, {});

  assert.equal(recording.status, 'dropped');
  assert.deepEqual(new Set(recording.intents.map((i) => i.fate)), new Set(['dropped']));
});
