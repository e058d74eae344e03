// The native sandbox of testing.js, under node's own test runner: plugin
// logic imported and run without a component build, with the host's rules
// (tests/all/languages.rs runs the same plugin natively and on the host and
// compares what each did). Run with:
//
//     node --import ./register.js --test test/

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import {
  CircuitOpen,
  Failed,
  Refused,
  breaker,
  defer,
  invoke,
  invokeReversible,
  lock,
  pending,
  plugin,
  query,
  scope,
} from '../escrow.js';
import { HandlerFailed, Sandbox } from '../testing.js';

class OnHold extends Error {}

const checkout = plugin((order) => {
  const price = query('prices.get', { sku: order.sku ?? 'tea' });
  defer('payments.charge', { order: order.id, cents: price.cents });
  defer('email.send', { to: 'ada@example.com' });
  if (order.fail) throw new OnHold('the order is on hold');
  return { charged: price.cents };
});

const shop = () =>
  new Sandbox().grant('payments.*').grant('email.*').grant('prices.get').query('prices.get', { cents: 250 });

test('nothing is granted by default and a refusal fails the run with its reason', () => {
  const recording = new Sandbox().run(checkout, { id: 7 });

  assert.equal(recording.status, 'failed');
  assert.equal(recording.error, "refused: not granted: `prices.get` is not covered by the plugin's grants");
  assert.equal(recording.invocations[0].refusal, 'not-granted');
});

test('a successful run commits its intents in order with their payloads', () => {
  const recording = shop().run(checkout, { id: 7 });

  assert.equal(recording.status, 'committed');
  assert.deepEqual(recording.output, { charged: 250 });
  assert.deepEqual(recording.committedEffects(), ['payments.charge', 'email.send']);
  assert.deepEqual(
    recording.intents.map((i) => i.seq),
    [2, 3],
  );
  assert.deepEqual(recording.intents[0].json(), { order: 7, cents: 250 });
  assert.deepEqual(recording.invocations[0].answer, { cents: 250 });
});

test('a failed run discards its intents and keeps where the error was thrown', () => {
  const recording = shop().run(checkout, { id: 7, fail: true });

  assert.equal(recording.status, 'failed');
  assert.equal(recording.error, 'OnHold: the order is on hold');
  assert.deepEqual(
    recording.intents.map((i) => i.fate),
    ['discarded', 'discarded'],
  );
  assert.match(recording.stack, /^OnHold: the order is on hold\n/);
  assert.match(recording.stack, /sandbox\.test\.js:\d+/);
});

test('a thrown value that is not an Error fails the run as JSON', () => {
  const recording = new Sandbox().run(
    plugin(() => {
      throw { code: 42 };
    }),
  );

  assert.equal(recording.error, '{"code":42}');
  assert.equal(recording.stack, 'uncaught: {"code":42}');
});

test('a scripted answer sees the request and a failure reaches the plugin', () => {
  const prices = plugin(() => {
    const tea = query('prices.get', { sku: 'tea' });
    try {
      query('prices.get', { sku: 'cup' });
    } catch (failure) {
      assert.ok(failure instanceof Failed);
      return { tea, cup: failure.reason };
    }
  });
  const price = (request) => {
    if (request.sku !== 'tea') throw new HandlerFailed(`no price for ${request.sku}`);
    return { cents: 250 };
  };

  const recording = new Sandbox().grant('prices.get').query('prices.get', price).run(prices);

  assert.deepEqual(recording.output, { tea: { cents: 250 }, cup: 'no price for cup' });
  assert.equal(recording.invocations[1].failed, 'no price for cup');
});

test('a granted effect without a fake handler is refused saying what to add', () => {
  const ask = plugin(() => {
    try {
      query('prices.get');
    } catch (refusal) {
      return [refusal.kind, refusal.reason];
    }
  });

  const [kind, reason] = new Sandbox().grant('*').run(ask).output;

  assert.equal(kind, 'not-granted');
  assert.match(reason, /no handler performs it.*Sandbox#query/);
});

test('under assert-none an effect is forbidden and the run fails even when handled', () => {
  const careful = plugin(() =>
    scope('assert-none', () => {
      try {
        defer('email.send', {});
      } catch (refusal) {
        assert.ok(refusal instanceof Refused);
        return refusal.kind;
      }
    }),
  );

  const recording = new Sandbox().grant('*').run(careful);

  assert.equal(recording.status, 'failed');
  assert.equal(recording.error, '`email.send`: scope 1 policy assert-none forbids effects here');
  assert.equal(recording.intents[0].fate, 'refused');
});

test('a scope that throws rolls back its intents and runs its compensations newest first', () => {
  const booking = plugin(() => {
    defer('email.send', { kept: true });
    try {
      scope(() => {
        defer('email.send', { kept: false });
        invokeReversible('flight.book', { n: 1 }, 'flight.cancel', { n: 1 });
        invokeReversible('hotel.book', { n: 2 }, 'hotel.cancel', { n: 2 });
        throw new OnHold('the car is gone');
      });
    } catch (error) {
      if (!(error instanceof OnHold)) throw error;
    }
    return pending().map((i) => i.effect);
  });
  const sandbox = new Sandbox().grant('*');
  for (const effect of ['flight.book', 'flight.cancel', 'hotel.book', 'hotel.cancel']) {
    sandbox.action(effect, { ok: true });
  }

  const recording = sandbox.run(booking);

  assert.deepEqual(recording.output, ['email.send']);
  assert.deepEqual(
    recording.intents.map((i) => i.fate),
    ['committed', 'discarded'],
  );
  assert.deepEqual(
    recording.compensations.map((c) => c.effect),
    ['hotel.cancel', 'flight.cancel'],
  );
});

test('an action is forbidden where the policy withholds it and a query is not', () => {
  const both = plugin(() => {
    query('prices.get');
    try {
      invoke('payments.charge');
    } catch (refusal) {
      return refusal.reason;
    }
  });

  const recording = new Sandbox()
    .grant('*')
    .query('prices.get', 1)
    .action('payments.charge', 2)
    .policy('drop')
    .run(both);

  assert.equal(recording.output, null, 'a failed run has no output');
  assert.equal(recording.status, 'failed');
  assert.equal(recording.error, '`payments.charge` is an action; policy drop does not let it through');
  assert.equal(recording.invocations[0].answer, 1);
});

test('past max_intents a request is refused limit and the run fails', () => {
  const many = plugin(() => {
    for (let n = 0; n < 3; n += 1) defer('email.send', n);
  });

  const recording = new Sandbox().grant('*').limits({ maxIntents: 2 }).run(many);

  assert.equal(recording.status, 'failed');
  assert.equal(recording.error, 'refused: limit: max_intents: at most 2 requests per run');
  assert.equal(recording.intents.length, 2);
});

test('a block policy keeps matching intents visible and undispatched', () => {
  const mail = plugin(() => {
    defer('email.send', 1);
    defer('payments.charge', 2);
  });

  const recording = new Sandbox().grant('*').policy('commit', ['email.*']).run(mail);

  assert.deepEqual(
    recording.intents.map((i) => i.fate),
    ['blocked', 'committed'],
  );
});

test('locks need grants and come in order with rising fencing tokens', () => {
  const locks = plugin(() => {
    const first = lock(['account:b', 'account:a']);
    const tokens = [Number(first.fencingToken())];
    first.release();
    const second = lock(['account:a']);
    tokens.push(Number(second.fencingToken()));
    second.release();
    try {
      lock(['vault:1']);
    } catch (refusal) {
      return [...tokens, refusal.kind];
    }
  });

  const recording = new Sandbox().grantLock('account:*').run(locks);

  assert.deepEqual(recording.output, [1, 2, 'not-granted']);
  assert.deepEqual(recording.locks[0], { keys: ['account:a', 'account:b'], token: 1 });
});

test('a breaker opens after its threshold and then fails fast', () => {
  const calls = plugin(() => {
    const upstream = breaker('upstream');
    const seen = [];
    for (let n = 0; n < 3; n += 1) {
      try {
        upstream.invoke('upstream.call');
      } catch (error) {
        if (error instanceof CircuitOpen) seen.push('open');
        else if (error instanceof Failed) seen.push('failed');
        else throw error;
      }
    }
    return seen;
  });

  const recording = new Sandbox()
    .grant('*')
    .query('upstream.call', null, { fail: 'down' })
    .breaker('upstream', 2)
    .run(calls);

  assert.deepEqual(recording.output, ['failed', 'failed', 'open']);
  assert.deepEqual(recording.breakerCalls.at(-1), ['upstream', 'upstream.call', true]);
});

test('fromConfig takes the grants, policy, limits and breakers of an escrow.toml', () => {
  const dir = mkdtempSync(join(tmpdir(), 'escrow-sandbox-'));
  const config = join(dir, 'escrow.toml');
  writeFileSync(
    config,
    [
      'policy = "drop"',
      '[grants]',
      'effects = ["email.*"]',
      'locks = ["account:*"]',
      '[limits]',
      'max_intents = 2',
      '[breakers.upstream]',
      'failure_threshold = 3',
    ].join('\n'),
  );
  const mail = plugin((request) => {
    defer('email.send', 1);
    let kind;
    try {
      defer('payments.charge', 2);
    } catch (refusal) {
      kind = refusal.kind;
    }
    if (request.more) defer('email.send', 3);
    lock(['account:a']).release();
    return [kind, breaker('upstream').state()];
  });
  const sandbox = Sandbox.fromConfig(config);

  const recording = sandbox.run(mail);
  const tooMany = sandbox.run(mail, { more: true });

  assert.deepEqual(recording.output, ['not-granted', 'closed']);
  assert.deepEqual(
    recording.intents.map((i) => i.fate),
    ['dropped', 'refused'],
  );
  assert.equal(tooMany.status, 'failed');
  assert.equal(tooMany.error, 'refused: limit: max_intents: at most 2 requests per run');
});

test('a handler answer that is not JSON names the effect', () => {
  const ask = plugin(() => query('prices.get'));

  const recording = new Sandbox().grant('*').query('prices.get', new TextEncoder().encode('<html>')).run(ask);

  assert.match(recording.error, /^SyntaxError: the answer of `prices.get` is not JSON/);
});

test('an export that plugin() did not make is refused, naming the wrapper', () => {
  const raw = () => ({ ok: true });

  assert.throws(() => new Sandbox().run(raw), /export const run = plugin\(body\);/);
});

test('an async plugin is run to its end', async () => {
  const later = plugin(async () => {
    await Promise.resolve();
    defer('email.send', 1);
    return 'sent';
  });

  const recording = await new Sandbox().grant('*').runAsync(later);

  assert.equal(recording.output, 'sent');
  assert.deepEqual(recording.committedEffects(), ['email.send']);
  assert.throws(() => new Sandbox().grant('*').run(later), /runAsync/);
});

test('outside a sandbox run nothing is granted', () => {
  assert.throws(
    () => defer('email.send', {}),
    (error) => error instanceof Refused && error.kind === 'not-granted',
  );
});
