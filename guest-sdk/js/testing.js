// Unit tests of plugin logic without a host: a sandbox that applies the
// host's rules natively, the counterpart of Rust's
// `escrow_guest::testing::Sandbox` and Python's `escrow_guest.testing`.
//
//     // checkout.test.js, run with: node --import ./guest-sdk/js/register.js --test
//     import { test } from 'node:test';
//     import assert from 'node:assert/strict';
//     import { Sandbox } from './guest-sdk/js/testing.js';
//     import { run } from './checkout.js';
//
//     test('a checkout charges and mails', () => {
//       const recording = Sandbox.fromConfig('escrow.toml')
//         .query('prices.get', { cents: 250 })
//         .run(run, { id: 7 });
//       assert.equal(recording.status, 'committed');
//       assert.deepEqual(recording.committedEffects(), ['payments.charge', 'email.send']);
//     });
//
// As on the host, nothing is granted by default; the policy commits; no
// handler exists until one is faked; effect names, payload and request
// limits, policies, scopes, action kinds, compensations, locks and breakers
// behave as the host has them. A run ends as a host ends it: scopes left
// open roll back, and a failed run discards its intents and runs its
// compensations, newest first.

import { readFileSync } from 'node:fs';

import { parse as parseToml } from 'smol-toml';

import { PLUGIN } from './escrow.js';
import {
  DEFAULT_LIMITS,
  HandlerFailed,
  State,
  checkEffectName,
  checkLockKey,
  install,
} from './native.js';

export { HandlerFailed };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const POLICIES = {
  commit: { tag: 'inherit' },
  drop: { tag: 'drop' },
  'assert-none': { tag: 'assert-none' },
};

/** The config's limit names, as the sandbox's. */
const LIMITS = {
  max_intents: 'maxIntents',
  max_payload_bytes: 'maxPayloadBytes',
  max_total_payload_bytes: 'maxTotalPayloadBytes',
  max_scope_depth: 'maxScopeDepth',
};

function must(invalid) {
  if (invalid) throw new TypeError(invalid);
}

function decoded(bytes) {
  if (bytes === undefined || bytes.length === 0) return null;
  const text = decoder.decode(bytes);
  try {
    return JSON.parse(text);
  } catch {
    return bytes;
  }
}

/** A host stand-in; each method returns the sandbox, so they chain. */
export class Sandbox {
  #grants = [];
  #lockGrants = [];
  #policy = POLICIES.commit;
  #limits = { ...DEFAULT_LIMITS };
  #handlers = new Map();
  #breakers = new Map();

  /**
   * A sandbox with the grants, policy, block patterns, limits and breakers
   * of an `escrow.toml`, so that tests see what production runs get.
   * Handlers are not taken: fake them.
   */
  static fromConfig(path) {
    const config = parseToml(readFileSync(path, 'utf8'));
    const sandbox = new Sandbox();
    for (const pattern of config.grants?.effects ?? []) sandbox.grant(pattern);
    for (const pattern of config.grants?.locks ?? []) sandbox.grantLock(pattern);
    const block = config.block ?? [];
    sandbox.policy(config.policy ?? 'commit', block.length > 0 ? block : undefined);
    const limits = {};
    for (const [name, key] of Object.entries(LIMITS)) {
      if (config.limits?.[name] !== undefined) limits[key] = Number(config.limits[name]);
    }
    sandbox.limits(limits);
    for (const [name, table] of Object.entries(config.breakers ?? {})) {
      sandbox.breaker(name, Number(table.failure_threshold ?? 5));
    }
    return sandbox;
  }

  /** Grants effects matching `pattern` (`email.*`; `*` for all). */
  grant(pattern) {
    must(checkEffectName(pattern, true));
    this.#grants.push(pattern);
    return this;
  }

  /** Grants locks on keys matching `pattern` (`account:*`). */
  grantLock(pattern) {
    must(checkLockKey(pattern, true));
    this.#lockGrants.push(pattern);
    return this;
  }

  /**
   * The run's policy: 'commit', 'drop', 'assert-none', or with `block`,
   * commit all but the effects matching those patterns.
   */
  policy(policy = 'commit', block = undefined) {
    if (block !== undefined) {
      block.forEach((pattern) => must(checkEffectName(pattern, true)));
      this.#policy = { tag: 'block', val: [...block] };
    } else if (policy in POLICIES) {
      this.#policy = POLICIES[policy];
    } else {
      throw new TypeError(`unknown policy ${JSON.stringify(policy)}: use 'commit', 'drop' or 'assert-none'`);
    }
    return this;
  }

  /** Limits other than the host's: `{ maxIntents, maxPayloadBytes, maxTotalPayloadBytes, maxScopeDepth }`. */
  limits(limits) {
    for (const [name, value] of Object.entries(limits)) {
      if (!(name in DEFAULT_LIMITS)) throw new TypeError(`unknown limit ${JSON.stringify(name)}`);
      this.#limits[name] = Number(value);
    }
    return this;
  }

  /**
   * A fake handler for the query `effect`: it answers `answer` (a JSON
   * value, a Uint8Array as it is, or a function of the request that returns
   * one or throws `HandlerFailed`), or fails with `{ fail }`.
   */
  query(effect, answer = null, { fail } = {}) {
    return this.#handler(effect, 'query', answer, fail);
  }

  /** A fake handler for the action `effect`, performed only where the policy commits it. */
  action(effect, answer = null, { fail } = {}) {
    return this.#handler(effect, 'action', answer, fail);
  }

  /** A breaker that opens after `failureThreshold` failures in a row and stays open (no clock). */
  breaker(name, failureThreshold = 5) {
    this.#breakers.set(name, failureThreshold);
    return this;
  }

  /** A breaker that is open from the start. */
  openBreaker(name) {
    return this.breaker(name, 0);
  }

  /**
   * Runs `run`, the plugin's export made by `plugin()`, on `input` (a JSON
   * value; undefined reads as `{}`) and returns what it did. An async
   * plugin is run by `runAsync`.
   */
  run(run, input = undefined) {
    const { state, bytes, report, stack } = this.#start(run, input);
    const previous = install(state);
    let output;
    try {
      output = run[PLUGIN](bytes, report);
    } catch (error) {
      return finish(state, { thrown: error, stack: stack(), previous });
    }
    if (output instanceof Promise) {
      install(previous);
      output.catch(() => {});
      throw new TypeError('the plugin is async: run it with `await sandbox.runAsync(run, input)`');
    }
    return finish(state, { output, previous });
  }

  /** `run` for an async plugin (or any): a promise of what it did. One run at a time. */
  async runAsync(run, input = undefined) {
    const { state, bytes, report, stack } = this.#start(run, input);
    const previous = install(state);
    try {
      const output = await run[PLUGIN](bytes, report);
      return finish(state, { output, previous });
    } catch (error) {
      return finish(state, { thrown: error, stack: stack(), previous });
    }
  }

  #start(run, input) {
    if (typeof run !== 'function' || typeof run[PLUGIN] !== 'function') {
      throw new TypeError(
        'Sandbox#run takes the plugin\'s `run` export as plugin() makes it: `export const run = plugin(body);`',
      );
    }
    const state = new State({
      grants: [...this.#grants],
      lockGrants: [...this.#lockGrants],
      policy: this.#policy,
      limits: { ...this.#limits },
      handlers: new Map(this.#handlers),
      breakers: new Map([...this.#breakers].map(([name, threshold]) => [name, { threshold, failures: 0 }])),
    });
    const bytes = input === undefined ? new Uint8Array() : encoder.encode(JSON.stringify(input));
    let where = null;
    return {
      state,
      bytes,
      report: (stack) => {
        where = stack;
      },
      stack: () => where,
    };
  }

  #handler(effect, kind, answer, fail) {
    must(checkEffectName(effect));
    const call = (payload) => {
      if (fail !== undefined) throw new HandlerFailed(fail);
      const request = payload.length === 0 ? null : JSON.parse(decoder.decode(payload));
      const value = typeof answer === 'function' ? answer(request) : answer;
      if (value instanceof Uint8Array) return value;
      return value === null || value === undefined ? new Uint8Array() : encoder.encode(JSON.stringify(value));
    };
    this.#handlers.set(effect, { kind, call });
    return this;
  }
}

/** What a run returned and requested, as a host would report it. */
function finish(state, { output, thrown, stack = null, previous }) {
  install(previous);
  // plugin() throws the run's error as a string.
  const error = thrown === undefined ? state.violation : String(thrown);
  const failed = thrown !== undefined || state.violation !== null;
  state.end(failed);
  const fates = new Set(state.records.map((r) => r.fate));
  const status = failed
    ? 'failed'
    : fates.has('dropped') && !fates.has('committed')
      ? 'dropped'
      : 'committed';
  const intents = state.records.map((r) => ({
    seq: r.seq,
    effect: r.effect,
    payload: r.payload,
    fate: r.fate,
    refusal: r.refusal?.tag ?? null,
    json: () => decoded(r.payload),
  }));
  return {
    status,
    output: failed ? null : decoded(output),
    error: error ?? null,
    // Where the plugin's error was thrown, as plugin() writes it to stderr.
    stack,
    intents,
    invocations: state.calls.map((c) => ({
      seq: c.seq,
      effect: c.effect,
      payload: c.payload,
      answer: decoded(c.answer),
      failed: c.failed ?? null,
      refusal: c.refusal?.tag ?? null,
    })),
    compensations: state.compensations.map((u) => ({
      seq: u.seq,
      effect: u.effect,
      payload: u.payload,
      failed: u.failed ?? null,
    })),
    locks: state.locks,
    breakerCalls: state.breakerCalls,
    committed: () => intents.filter((i) => i.fate === 'committed'),
    committedEffects: () => intents.filter((i) => i.fate === 'committed').map((i) => i.effect),
  };
}
