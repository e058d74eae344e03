// Checked by `tsc --noEmit` in .ci/run: escrow.d.ts and testing.d.ts say
// what escrow.js and testing.js do, as a TypeScript author uses them.
import {
  CircuitOpen,
  Failed,
  type Json,
  Refused,
  breaker,
  defer,
  lock,
  pending,
  plugin,
  query,
  scope,
} from './escrow.js';
import { HandlerFailed, type Recording, Sandbox } from './testing.js';

export const run = plugin((order: { id: number; email?: string }) => {
  const price: Json = query('prices.get', { sku: 'tea' });
  const seq: number = defer('orders.save', { id: order.id, price });
  scope({ block: ['email.*'] }, () => defer('email.send', order.email));
  const guard = lock(['account:a'], 1000);
  const token: bigint = guard.fencingToken();
  guard.release();
  try {
    breaker('upstream').invoke('upstream.call');
  } catch (error) {
    if (error instanceof CircuitOpen) return { retryMs: error.retryMs };
    if (error instanceof Failed) return { failed: error.reason };
    if (error instanceof Refused) return { kind: error.kind, reason: error.reason };
    throw error;
  }
  return { seq, token: token.toString(), pending: pending().map((i) => i.effect) };
});

const recording: Recording = new Sandbox()
  .grant('orders.*')
  .grantLock('account:*')
  .policy('commit', ['email.*'])
  .limits({ maxIntents: 10 })
  .query('prices.get', (request) => {
    if (request === null) throw new HandlerFailed('no request');
    return { cents: 250 };
  })
  .breaker('upstream', 2)
  .run(run, { id: 7 });
const effects: string[] = recording.committedEffects();
const status: 'committed' | 'dropped' | 'failed' = recording.status;
export const checked = [effects, status, recording.intents[0]?.fate];
export const later: Promise<Recording> = Sandbox.fromConfig(new URL('file:///escrow.toml')).runAsync(run);
