// Types of escrow.js, checked by `tsc --noEmit` (types.check.ts) in .ci/run.

/** A JSON value: what payloads, answers, inputs and outputs are. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** How long `lock` waits for its keys unless told otherwise. */
export const DEFAULT_LOCK_TIMEOUT_MS: number;

/** Anything an escrow call can fail with. */
export class EscrowError extends Error {}

/** A refusal's case. 'forbidden' and 'limit' fail the run even when handled. */
export type RefusalKind = 'not-granted' | 'forbidden' | 'limit' | 'invalid';

/** The host refused the request; nothing was done. */
export class Refused extends EscrowError {
  constructor(kind: RefusalKind, reason: string);
  readonly kind: RefusalKind;
  /** The host's words. */
  readonly reason: string;
}

/** The handler of an immediate effect ran and failed; it may have partly applied. */
export class Failed extends EscrowError {
  constructor(reason: string);
  /** The handler's message. */
  readonly reason: string;
}

/** The breaker was open: the handler was not called. */
export class CircuitOpen extends EscrowError {
  constructor(retryMs: number | bigint);
  /** When a trial is let through, in milliseconds. */
  readonly retryMs: number;
}

/** No lock was taken. */
export class LockError extends EscrowError {
  constructor(kind: 'timeout' | 'would-deadlock' | 'unavailable', message: string);
  readonly kind: 'timeout' | 'would-deadlock' | 'unavailable';
}

/** Records an intent to perform `effect` with `value` (as JSON) once the run has succeeded; its sequence number. */
export function defer(effect: string, value: unknown): number;

/** `defer` with a raw payload. */
export function deferBytes(effect: string, payload: Uint8Array): number;

/** An intent the run has recorded and not discarded. */
export interface PendingIntent {
  readonly seq: number;
  readonly effect: string;
  readonly payload: Uint8Array;
  /** The payload, parsed. */
  json(): Json;
}

/** The intents recorded so far and not discarded, in order. */
export function pending(): PendingIntent[];

/** Performs `effect` now with `value` (as JSON); the handler's answer, parsed (null if empty). */
export function invoke(effect: string, value?: unknown): Json;

/** `invoke` for reading. */
export function query(effect: string, value?: unknown): Json;

/** `invoke` with raw bytes in and out. */
export function invokeBytes(effect: string, payload: Uint8Array): Uint8Array;

/** Performs `effect` now and registers `compensate` with `compensateValue` as its undo. */
export function invokeReversible(
  effect: string,
  value: unknown,
  compensate: string,
  compensateValue: unknown,
): Json;

/** A scope's policy: the enclosing rules, drop, assert-none, or block some effects. */
export type ScopePolicy = 'inherit' | 'drop' | 'assert-none' | { block: string[] };

/** Runs `body` in a nested scope: committed when it returns, rolled back when it throws. */
export function scope<T>(body: () => T): T;
export function scope<T>(policy: ScopePolicy, body: () => T): T;

/** Locks held together. */
export class Guard {
  private constructor();
  /** The keys held, sorted and deduplicated. */
  keys(): string[];
  /** Strictly greater than the token of every earlier acquisition of each key. */
  fencingToken(): bigint;
  /** Releases the locks now. */
  release(): void;
}

/** Takes every key (all or none, in the host's global order), waiting at most `timeoutMs`. */
export function lock(keys: string[], timeoutMs?: number): Guard;

/** A granted circuit breaker in front of immediate effects. */
export class Breaker {
  private constructor();
  state(): 'closed' | 'open' | 'half-open';
  /** `invoke` through the breaker; throws `CircuitOpen` while it is open. */
  invoke(effect: string, value?: unknown): Json;
}

/** The breaker `name`, refused unless granted and defined by the host. */
export function breaker(name: string): Breaker;

/** The key under which a `run` made by `plugin()` keeps the run itself, for the native sandbox. */
export const PLUGIN: unique symbol;

/** The component's `run` export, as `plugin()` makes it. */
export interface Run {
  (input: Uint8Array): Uint8Array | Promise<Uint8Array>;
  readonly [PLUGIN]: (input: Uint8Array, report: (stack: string) => void) => Uint8Array | Promise<Uint8Array>;
}

/**
 * Wraps the plugin's logic as the component's `run` export: `export const run = plugin(body);`.
 * `body` takes the input as JSON parsed (`any`: its shape is the plugin's to check).
 */
export function plugin(body: (input: any) => unknown): Run;
