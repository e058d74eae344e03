// The host's imports, natively: what `escrow.js` calls when node runs it
// (a unit test) instead of a component. `register.js` resolves every
// `escrow:host/...` import to this module.
//
// Each export stands for the binding componentize-js makes from escrow's WIT
// (an `err` thrown as an error whose `payload` is the WIT value, variants as
// `{ tag, val }`), and each call goes to the sandbox of the run in progress:
// the one `Sandbox.run` (testing.js) installs, or, outside it, one that
// grants nothing. The sandbox applies the host's rules: effect names,
// grants, limits, policies, scopes, handler kinds, compensations, locks and
// breakers (docs/guests/javascript.md, "Testing").

/** Longest effect name the host accepts, in bytes (as escrow-host). */
export const MAX_EFFECT_NAME_BYTES = 128;
/** Longest lock key the host accepts, in bytes (as escrow-host). */
export const MAX_LOCK_KEY_BYTES = 256;

/** The host's limits on what a run may request (escrow-host's defaults). */
export const DEFAULT_LIMITS = Object.freeze({
  maxIntents: 1000,
  maxPayloadBytes: 1 << 20,
  maxTotalPayloadBytes: 16 << 20,
  maxScopeDepth: 32,
});

/** Thrown by a fake handler: the effect failed with this message. */
export class HandlerFailed extends Error {
  constructor(message) {
    super(message);
    this.name = 'HandlerFailed';
  }
}

/** An import's `err`, as componentize-js throws it. */
class ComponentError extends Error {
  constructor(payload) {
    super('an escrow import returned err');
    this.payload = payload;
  }
}

const refusal = (tag, val) => ({ tag, val });

function checkText(name, pattern, what, maxBytes, extra) {
  if (name.length === 0) return `${what} is empty`;
  const size = new TextEncoder().encode(name).length;
  if (size > maxBytes) return `${what} is ${size} bytes long; the limit is ${maxBytes}`;
  for (const ch of name) {
    const ok = /[A-Za-z0-9._-]/.test(ch) || extra.includes(ch) || (pattern && ch === '*');
    if (!ok) return `${what} \`${name}\` has ${JSON.stringify(ch)}`;
  }
  return null;
}

/** Why `name` is not an effect name (or pattern) the host accepts, or null. */
export function checkEffectName(name, pattern = false) {
  return checkText(name, pattern, 'effect name', MAX_EFFECT_NAME_BYTES, '');
}

/** Why `key` is not a lock key (or pattern) the host accepts, or null. */
export function checkLockKey(key, pattern = false) {
  return checkText(key, pattern, 'lock key', MAX_LOCK_KEY_BYTES, ':/@');
}

/** Whether `name` matches one of `patterns`, `*` matching any run of characters. */
export function matches(patterns, name) {
  return patterns.some((pattern) => {
    const parts = pattern.split('*').map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    return new RegExp(`^${parts.join('.*')}$`, 's').test(name);
  });
}

/** One sandboxed run. */
export class State {
  constructor({
    grants = [],
    lockGrants = [],
    policy = { tag: 'inherit' },
    limits = DEFAULT_LIMITS,
    handlers = new Map(),
    breakers = new Map(),
  } = {}) {
    Object.assign(this, { grants, lockGrants, policy, limits, handlers, breakers });
    this.seq = 0;
    this.payloadBytes = 0;
    this.records = [];
    this.calls = [];
    this.pendingUndos = [];
    this.compensations = [];
    this.frames = [];
    this.nextFrame = 1;
    this.held = [];
    this.nextGuard = 1;
    this.lastToken = 0n;
    this.locks = [];
    this.breakerCalls = [];
    this.violation = null;
  }

  violate(why) {
    if (this.violation === null) this.violation = why;
  }

  /** The next request's number, or its refusal past the limit. */
  nextSeq() {
    this.seq += 1;
    const limit = this.limits.maxIntents;
    if (this.seq > limit) {
      const why = `max_intents: at most ${limit} requests per run`;
      this.violate(why);
      return [null, refusal('limit', why)];
    }
    return [this.seq, null];
  }

  /** The checks every request passes: its name, the payload limits, a grant. */
  check(effect, held) {
    const invalid = checkEffectName(effect);
    if (invalid) return [refusal('invalid', invalid), false];
    let exceeded = null;
    if (held > this.limits.maxPayloadBytes) {
      exceeded = ['max_payload_bytes', this.limits.maxPayloadBytes];
    } else if (this.payloadBytes + held > this.limits.maxTotalPayloadBytes) {
      exceeded = ['max_total_payload_bytes', this.limits.maxTotalPayloadBytes];
    }
    if (exceeded) {
      const why = `${exceeded[0]}: ${held} bytes of payload, at most ${exceeded[1]}`;
      this.violate(why);
      return [refusal('limit', why), false];
    }
    if (!matches(this.grants, effect)) {
      return [refusal('not-granted', `\`${effect}\` is not covered by the plugin's grants`), true];
    }
    return [null, true];
  }

  /**
   * The run's policy, then each open scope's from the outermost in: a
   * forbidding rule wins, otherwise the outermost that withholds. Returns
   * the fate and the rule that decided it (null to commit).
   */
  decide(effect) {
    let decided = ['committed', null];
    const rules = [['', this.policy], ...this.frames.map((f) => [`scope ${f.id} `, f.policy])];
    for (const [prefix, policy] of rules) {
      if (policy.tag === 'assert-none') return ['refused', `${prefix}policy assert-none`];
      if (decided[1] !== null) continue;
      if (policy.tag === 'drop') {
        decided = ['dropped', `${prefix}policy drop`];
      } else if (policy.tag === 'block') {
        const pattern = policy.val.find((p) => matches([p], effect));
        if (pattern !== undefined) decided = ['blocked', `${prefix}block ${pattern}`];
      }
    }
    return decided;
  }

  enqueue(effect, payload) {
    const [seq, limited] = this.nextSeq();
    if (limited) throw new ComponentError(limited);
    let [refused, keep] = this.check(effect, payload.length);
    let fate = 'refused';
    if (refused === null) {
      const [decided, rule] = this.decide(effect);
      fate = decided;
      if (fate === 'refused') {
        refused = refusal('forbidden', `\`${effect}\`: ${rule} forbids effects here`);
        this.violate(refused.val);
      }
    }
    if (refused === null) this.payloadBytes += payload.length;
    this.records.push({ seq, effect, payload: keep ? payload.slice() : new Uint8Array(), fate, refusal: refused });
    if (refused) throw new ComponentError(refused);
    return BigInt(seq);
  }

  handler(effect, compensation = false) {
    const found = this.handlers.get(effect);
    if (found === undefined) {
      const what = compensation ? 'the compensation ' : '';
      return [
        null,
        refusal(
          'not-granted',
          `\`${effect}\` is granted, but no handler performs ${what}it: give the sandbox one (Sandbox#query or Sandbox#action)`,
        ),
      ];
    }
    return [found, null];
  }

  /** The checks before a fake handler is called. */
  admit(effect, payload, undo) {
    const held = payload.length + (undo ? undo[1].length : 0);
    let [refused, keep] = this.check(effect, held);
    if (refused) return { refused, keep };
    let undoHandler = null;
    if (undo) {
      [refused] = this.check(undo[0], 0);
      if (refused) return { refused, keep: true };
      let found;
      [found, refused] = this.handler(undo[0], true);
      if (refused) return { refused, keep: true };
      undoHandler = found.call;
    }
    const [found, noHandler] = this.handler(effect);
    if (noHandler) return { refused: noHandler, keep: true };
    if (found.kind === 'action') {
      const [fate, rule] = this.decide(effect);
      if (fate !== 'committed') {
        const forbidden = refusal('forbidden', `\`${effect}\` is an action; ${rule} does not let it through`);
        this.violate(forbidden.val);
        return { refused: forbidden, keep: true };
      }
    }
    return { call: found.call, undoHandler, keep: true };
  }

  invoke(effect, payload, undo = null) {
    const [seq, limited] = this.nextSeq();
    if (limited) throw new ComponentError({ tag: 'refused', val: limited });
    const { call, undoHandler, refused, keep } = this.admit(effect, payload, undo);
    const record = { seq, effect, payload: keep ? payload.slice() : new Uint8Array() };
    this.calls.push(record);
    if (refused) {
      record.refusal = refused;
      throw new ComponentError({ tag: 'refused', val: refused });
    }
    let answer;
    try {
      answer = call(payload.slice());
    } catch (error) {
      if (!(error instanceof HandlerFailed)) throw error;
      record.failed = error.message;
    }
    // The handler ran: whatever it answered, it may have acted, so its
    // undo is registered.
    this.payloadBytes += payload.length;
    if (undo) {
      this.payloadBytes += undo[1].length;
      this.pendingUndos.push({ seq, effect: undo[0], payload: undo[1].slice(), handler: undoHandler });
    }
    if (record.failed !== undefined) throw new ComponentError({ tag: 'failed', val: record.failed });
    record.answer = answer;
    return answer;
  }

  openScope(policy) {
    const limit = this.limits.maxScopeDepth;
    if (this.frames.length >= limit) {
      const why = `max_scope_depth: scopes nest at most ${limit} deep`;
      this.violate(why);
      throw new ComponentError(refusal('limit', why));
    }
    if (policy.tag === 'block') {
      for (const pattern of policy.val) {
        const invalid = checkEffectName(pattern, true);
        if (invalid) throw new ComponentError(refusal('invalid', invalid));
      }
    }
    const frame = { id: this.nextFrame, start: this.records.length, undoStart: this.pendingUndos.length, policy };
    this.nextFrame += 1;
    this.frames.push(frame);
    return frame.id;
  }

  rollBack(frame) {
    for (const record of this.records.slice(frame.start)) {
      if (record.fate !== 'refused') record.fate = 'discarded';
    }
    const undos = this.pendingUndos.splice(frame.undoStart);
    this.runUndos(undos.reverse());
  }

  closeScope(id, commit) {
    const position = this.frames.map((f) => f.id).lastIndexOf(id);
    if (position < 0) return;
    while (this.frames.length > position + (commit ? 1 : 0)) this.rollBack(this.frames.pop());
    this.frames.length = position;
  }

  runUndos(undos) {
    for (const undo of undos) {
      try {
        undo.answer = undo.handler(undo.payload);
      } catch (error) {
        if (!(error instanceof HandlerFailed)) throw error;
        undo.failed = error.message;
      }
      this.compensations.push(undo);
    }
  }

  acquire(keys) {
    const refused = (tag, val) => new ComponentError({ tag: 'refused', val: refusal(tag, val) });
    if (keys.length === 0) throw refused('invalid', 'no lock keys given');
    for (const key of keys) {
      const invalid = checkLockKey(key);
      if (invalid) throw refused('invalid', invalid);
      if (!matches(this.lockGrants, key)) {
        throw refused('not-granted', `lock \`${key}\` is not covered by the plugin's grants`);
      }
    }
    const sorted = [...new Set(keys)].sort();
    const highest = this.held.map((g) => g.keys[g.keys.length - 1]).sort().pop();
    if (highest !== undefined && sorted[0] <= highest) {
      throw new ComponentError({
        tag: 'would-deadlock',
        val: `this run holds \`${highest}\` and asks for \`${sorted[0]}\``,
      });
    }
    this.lastToken += 1n;
    const guard = { id: this.nextGuard, keys: sorted, token: this.lastToken };
    this.nextGuard += 1;
    this.held.push(guard);
    this.locks.push({ keys: sorted, token: Number(this.lastToken) });
    return guard;
  }

  release(id) {
    this.held = this.held.filter((g) => g.id !== id);
  }

  /**
   * Ends the run as a host would: scopes left open roll back; on failure
   * every intent not refused is discarded and the compensations still
   * registered run, newest first.
   */
  end(failed) {
    while (this.frames.length > 0) this.rollBack(this.frames.pop());
    if (failed) {
      for (const record of this.records) {
        if (record.fate !== 'refused') record.fate = 'discarded';
      }
      const undos = this.pendingUndos.splice(0);
      this.runUndos(undos.reverse());
    }
  }
}

let current = new State();

/** Makes `state` the run in progress and returns the one it replaces. */
export function install(state) {
  const previous = current;
  current = state;
  return previous;
}

// escrow:host/intents

export function enqueue(effect, payload) {
  return current.enqueue(effect, payload);
}

export function pending() {
  return current.records
    .filter((r) => r.fate !== 'refused' && r.fate !== 'discarded')
    .map((r) => ({ seq: BigInt(r.seq), effect: r.effect, payload: r.payload }));
}

// escrow:host/effects

export function invoke(effect, payload) {
  return current.invoke(effect, payload);
}

export function invokeReversible(effect, payload, compensate, compensatePayload) {
  return current.invoke(effect, payload, [compensate, compensatePayload]);
}

// escrow:host/scopes

export class Scope {
  #id;

  constructor(id) {
    this.#id = id;
  }

  static open(policy) {
    return new Scope(current.openScope(policy));
  }

  static commit(scope) {
    current.closeScope(scope.#id, true);
  }

  static rollback(scope) {
    current.closeScope(scope.#id, false);
  }
}

// escrow:host/locks

export function acquire(keys, _timeoutMs) {
  const guard = current.acquire([...keys]);
  return {
    keys: () => [...guard.keys],
    fencingToken: () => guard.token,
    [Symbol.dispose]: () => current.release(guard.id),
  };
}

// escrow:host/breakers

export class Breaker {
  #name;

  constructor(name) {
    this.#name = name;
  }

  static open(name) {
    if (!current.breakers.has(name)) {
      throw new ComponentError(refusal('not-granted', `no breaker \`${name}\` is defined`));
    }
    return new Breaker(name);
  }

  state() {
    const breaker = current.breakers.get(this.#name);
    return breaker.failures >= breaker.threshold ? 'open' : 'closed';
  }

  invoke(effect, payload) {
    const state = current;
    const breaker = state.breakers.get(this.#name);
    if (breaker.failures >= breaker.threshold) {
      state.breakerCalls.push([this.#name, effect, true]);
      throw new ComponentError({ tag: 'circuit-open', val: 0n });
    }
    state.breakerCalls.push([this.#name, effect, false]);
    try {
      const answer = state.invoke(effect, payload);
      breaker.failures = 0;
      return answer;
    } catch (error) {
      if (!(error instanceof ComponentError)) throw error;
      if (error.payload.tag === 'failed') breaker.failures += 1;
      throw new ComponentError({ tag: 'effect', val: error.payload });
    }
  }
}
