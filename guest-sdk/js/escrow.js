// escrow's guest helpers for JavaScript plugins (componentize-js).
//
// The plugin's logic requests effects through these functions; the host
// records, grants and dispatches them as it does for a Rust plugin. Payloads
// and answers are JSON. Every refusal is thrown as an error of a class named
// after it, so that a plugin can handle it, and an uncaught one fails the
// run with the refusal in its error.
//
//     import { defer, plugin } from './escrow.js';
//
//     export const run = plugin((order) => {
//       defer('payments.charge', { amount: 1999, order: order.id });
//       return { ok: true };
//     });
//
// Build with `componentize-js app.js -w wit -n plugin -o app.wasm`
// (docs/guests/javascript.md).

import { enqueue, pending as pendingIntents } from 'escrow:host/intents@0.1.0';
import { invoke as invokeEffect, invokeReversible as invokeReversibleEffect } from 'escrow:host/effects@0.1.0';
import { Scope } from 'escrow:host/scopes@0.1.0';
import { acquire } from 'escrow:host/locks@0.1.0';
import { Breaker as BreakerHandle } from 'escrow:host/breakers@0.1.0';

/** How long `lock` waits for its keys unless told otherwise. */
export const DEFAULT_LOCK_TIMEOUT_MS = 5000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Anything an escrow call can fail with. */
export class EscrowError extends Error {}

/**
 * The host refused the request; nothing was done. `kind` is the refusal's
 * case: 'not-granted', 'forbidden', 'limit' or 'invalid'. A 'forbidden' or
 * 'limit' refusal fails the run even when the plugin handles it.
 */
export class Refused extends EscrowError {
  constructor(kind, message) {
    super(`refused: ${kind.replace('-', ' ')}: ${message}`);
    this.name = 'Refused';
    this.kind = kind;
    this.reason = message;
  }
}

/** The handler of an immediate effect ran and failed; it may have partly applied. */
export class Failed extends EscrowError {
  constructor(message) {
    super(`failed: ${message}`);
    this.name = 'Failed';
    this.reason = message;
  }
}

/** The breaker was open: the handler was not called. A trial is let through after `retryMs`. */
export class CircuitOpen extends EscrowError {
  constructor(retryMs) {
    super(`the circuit is open; a trial in ${retryMs} ms`);
    this.name = 'CircuitOpen';
    this.retryMs = Number(retryMs);
  }
}

/** No lock was taken. `kind` is 'timeout', 'would-deadlock' or 'unavailable'. */
export class LockError extends EscrowError {
  constructor(kind, message) {
    super(message);
    this.name = 'LockError';
    this.kind = kind;
  }
}

// An import's `err` arrives as a thrown error whose `payload` is the WIT
// value; anything else thrown is not the host's answer and goes on as it is.
function hostError(error) {
  if (error === null || typeof error !== 'object' || !('payload' in error)) {
    throw error;
  }
  return error.payload;
}

function refused(refusal) {
  return new Refused(refusal.tag, refusal.val);
}

function effectError(error) {
  return error.tag === 'refused' ? refused(error.val) : new Failed(error.val);
}

function encode(value) {
  return encoder.encode(JSON.stringify(value === undefined ? null : value));
}

/** How much of an answer that is not JSON an error quotes. */
const SHOWN_ANSWER_CHARS = 80;

function decode(answer, effect) {
  if (answer.length === 0) return null;
  const text = decoder.decode(answer);
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new SyntaxError(
      `the answer of \`${effect}\` is not JSON (${error.message}): ${JSON.stringify(text.slice(0, SHOWN_ANSWER_CHARS))}`,
    );
  }
}

// Deferred effects.

/**
 * Records an intent to perform `effect` with `value` (as JSON) once the run
 * has succeeded, and returns its sequence number.
 */
export function defer(effect, value) {
  return deferBytes(effect, encode(value));
}

/** `defer` with a raw payload (a Uint8Array). */
export function deferBytes(effect, payload) {
  try {
    return Number(enqueue(effect, payload));
  } catch (error) {
    throw refused(hostError(error));
  }
}

/**
 * The intents recorded so far and not discarded, in order: `{ seq, effect,
 * payload, json() }`.
 */
export function pending() {
  return pendingIntents().map((info) => ({
    seq: Number(info.seq),
    effect: info.effect,
    payload: info.payload,
    json() {
      return decode(info.payload, info.effect);
    },
  }));
}

// Immediate effects.

/**
 * Performs `effect` now with `value` (as JSON) and returns the handler's
 * answer, parsed (an empty answer is null).
 */
export function invoke(effect, value) {
  return decode(invokeBytes(effect, encode(value)), effect);
}

/** `invoke` for reading: the same call, named for what it does. */
export function query(effect, value) {
  return invoke(effect, value);
}

/** `invoke` with raw bytes in and out. */
export function invokeBytes(effect, payload) {
  try {
    return invokeEffect(effect, payload);
  } catch (error) {
    throw effectError(hostError(error));
  }
}

/**
 * Performs `effect` now and registers `compensate` with `compensateValue` as
 * its undo, performed if the run (or the scope open now) later fails or
 * rolls back.
 */
export function invokeReversible(effect, value, compensate, compensateValue) {
  try {
    return decode(invokeReversibleEffect(effect, encode(value), compensate, encode(compensateValue)), effect);
  } catch (error) {
    throw effectError(hostError(error));
  }
}

// Scopes.

function scopePolicy(policy) {
  if (policy === undefined || policy === 'inherit') return { tag: 'inherit' };
  if (policy === 'drop') return { tag: 'drop' };
  if (policy === 'assert-none') return { tag: 'assert-none' };
  if (policy !== null && typeof policy === 'object' && Array.isArray(policy.block)) {
    return { tag: 'block', val: policy.block.map(String) };
  }
  throw new TypeError(
    `unknown scope policy ${JSON.stringify(policy)}: use 'inherit', 'drop', 'assert-none' or { block: [...] }`,
  );
}

/**
 * Runs `body` in a nested scope that commits when it returns and rolls back
 * (discarding its intents, running its compensations) when it throws; the
 * error goes on.
 *
 *     scope(() => { ... });                          // the enclosing rules
 *     scope('drop', () => { ... });                  // keep, never dispatch
 *     scope('assert-none', () => { ... });           // any effect fails the run
 *     scope({ block: ['email.*'] }, () => { ... });  // never dispatch these
 */
export function scope(policy, body) {
  if (body === undefined) {
    body = policy;
    policy = undefined;
  }
  const wit = scopePolicy(policy);
  let opened;
  try {
    opened = Scope.open(wit);
  } catch (error) {
    throw refused(hostError(error));
  }
  let value;
  try {
    value = body();
  } catch (error) {
    Scope.rollback(opened);
    throw error;
  }
  Scope.commit(opened);
  return value;
}

// Locks.

const LOCK_ERRORS = {
  timeout: () => 'the locks were not all free in time',
  'would-deadlock': (detail) => `would deadlock: ${detail}`,
  unavailable: (detail) => `the lock service is unavailable: ${detail}`,
};

/** Locks held together; `release()` frees them, or they are held until the run ends. */
export class Guard {
  #guard;

  constructor(guard) {
    this.#guard = guard;
  }

  /** The keys held, sorted and deduplicated. */
  keys() {
    return this.#guard.keys();
  }

  /** Strictly greater than the token of every earlier acquisition of each key. */
  fencingToken() {
    return this.#guard.fencingToken();
  }

  /** Releases the locks now. */
  release() {
    if (this.#guard !== undefined) {
      this.#guard[Symbol.dispose]();
      this.#guard = undefined;
    }
  }
}

/**
 * Takes every key (all or none, in the host's global order), waiting at most
 * `timeoutMs`, and returns their `Guard`.
 */
export function lock(keys, timeoutMs = DEFAULT_LOCK_TIMEOUT_MS) {
  try {
    return new Guard(acquire(keys, timeoutMs));
  } catch (error) {
    const wit = hostError(error);
    if (wit.tag === 'refused') throw refused(wit.val);
    throw new LockError(wit.tag, LOCK_ERRORS[wit.tag](wit.val));
  }
}

// Breakers.

/** A granted circuit breaker in front of immediate effects. */
export class Breaker {
  #breaker;

  constructor(handle) {
    this.#breaker = handle;
  }

  /** 'closed', 'open' or 'half-open'. */
  state() {
    return this.#breaker.state();
  }

  /** `invoke` through the breaker; throws `CircuitOpen` while it is open. */
  invoke(effect, value) {
    try {
      return decode(this.#breaker.invoke(effect, encode(value)), effect);
    } catch (error) {
      const wit = hostError(error);
      if (wit.tag === 'circuit-open') throw new CircuitOpen(wit.val);
      throw effectError(wit.val);
    }
  }
}

/** The breaker `name`, refused unless granted and defined by the host. */
export function breaker(name) {
  try {
    return new Breaker(BreakerHandle.open(name));
  } catch (error) {
    throw refused(hostError(error));
  }
}

// The plugin.

function message(error) {
  if (error instanceof EscrowError) return error.message;
  if (error instanceof Error) {
    const name = errorName(error);
    return name === 'Error' ? error.message : `${name}: ${error.message}`;
  }
  // A thrown value that is not an Error: as JSON, so `{ code: 42 }` stays
  // readable.
  if (typeof error === 'object' && error !== null) {
    try {
      return JSON.stringify(error);
    } catch {
      // Not JSON either (a cycle, a BigInt): as the language prints it.
    }
  }
  return String(error);
}

/** An error's class name: its `name`, or its constructor's where it left `name` alone. */
function errorName(error) {
  return error.name !== 'Error' ? error.name : (error.constructor?.name ?? 'Error');
}

/** Where an error was thrown, for the run's guest_stderr. */
function where(error) {
  if (error instanceof Error && typeof error.stack === 'string' && error.stack !== '') {
    return `${errorName(error)}: ${error.message}\n${error.stack.trimEnd()}`;
  }
  return `uncaught: ${message(error)}`;
}

/**
 * The key under which a `run` made by `plugin()` keeps the run itself, for
 * the native sandbox (testing.js): `run[PLUGIN](input, report)` runs it,
 * handing the stack of an error to `report` instead of stderr.
 */
export const PLUGIN = Symbol.for('escrow.plugin');

/**
 * Wraps the plugin's logic as the component's `run` export:
 * `export const run = plugin(checkout);`.
 *
 * The input is parsed from JSON (an empty input reads as `{}`) and passed
 * to `body`; what it returns (or, for an async `body`, what its promise
 * resolves to) is encoded as JSON (a Uint8Array goes out as it is) and the
 * run returns `ok`. An error it throws makes the run return `err` with the
 * error's name and message (a refusal reads "refused: not granted: ...",
 * as in Rust; a thrown value that is not an Error, as JSON), after its
 * stack is written to stderr, which the host keeps as the run's
 * guest_stderr.
 */
export function plugin(body) {
  const runBody = (input, report) => {
    let value;
    try {
      value = input.length === 0 ? {} : JSON.parse(decoder.decode(input));
    } catch (error) {
      throw `the input is not valid for this plugin: ${error.message}`;
    }
    const failed = (error) => {
      report(where(error));
      throw message(error);
    };
    let output;
    try {
      output = body(value);
    } catch (error) {
      failed(error);
    }
    // An async plugin (one that awaits `fetch`, say): componentize-js runs
    // the event loop until the promise settles.
    if (output instanceof Promise) {
      return output.then(encodeOutput, failed);
    }
    return encodeOutput(output);
  };
  const run = (input) => runBody(input, (stack) => console.error(stack));
  run[PLUGIN] = runBody;
  return run;
}

function encodeOutput(output) {
  if (output instanceof Uint8Array) return output;
  try {
    return encode(output);
  } catch (error) {
    throw `cannot encode the plugin's output: ${error.message}`;
  }
}
