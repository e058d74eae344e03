// Types of testing.js, checked by `tsc --noEmit` (types.check.ts) in .ci/run.

import type { Json, RefusalKind, Run } from './escrow.js';

/** Thrown by a fake handler: the effect failed with this message. */
export class HandlerFailed extends Error {
  constructor(message: string);
}

/** A fake handler's answer: JSON, bytes as they are, or a function of the parsed request. */
export type Answer = Json | Uint8Array | ((request: Json) => Json | Uint8Array);

/** The fate of a deferred request at the end of the run. */
export type Fate = 'committed' | 'dropped' | 'blocked' | 'refused' | 'discarded';

export interface Intent {
  readonly seq: number;
  readonly effect: string;
  readonly payload: Uint8Array;
  readonly fate: Fate;
  /** The refusal's kind, for a refused request. */
  readonly refusal: RefusalKind | null;
  /** The payload, parsed. */
  json(): Json;
}

export interface Invocation {
  readonly seq: number;
  readonly effect: string;
  readonly payload: Uint8Array;
  /** The answer, parsed (bytes when it is not JSON). */
  readonly answer: Json | Uint8Array;
  readonly failed: string | null;
  readonly refusal: RefusalKind | null;
}

export interface Compensation {
  readonly seq: number;
  readonly effect: string;
  readonly payload: Uint8Array;
  readonly failed: string | null;
}

/** What a sandboxed run returned and requested, as a host would report it. */
export interface Recording {
  readonly status: 'committed' | 'dropped' | 'failed';
  readonly output: Json | Uint8Array;
  /** The run's error: the plugin's error as its message, or the rule it broke. */
  readonly error: string | null;
  /** Where the plugin's error was thrown, as plugin() writes it to stderr. */
  readonly stack: string | null;
  readonly intents: Intent[];
  readonly invocations: Invocation[];
  readonly compensations: Compensation[];
  readonly locks: { keys: string[]; token: number }[];
  /** Each call through a breaker: breaker, effect, rejected. */
  readonly breakerCalls: [string, string, boolean][];
  committed(): Intent[];
  committedEffects(): string[];
}

export interface Limits {
  maxIntents?: number;
  maxPayloadBytes?: number;
  maxTotalPayloadBytes?: number;
  maxScopeDepth?: number;
}

/** A host stand-in; each method returns the sandbox, so they chain. */
export class Sandbox {
  /** The grants, policy, block patterns, limits and breakers of an `escrow.toml`. */
  static fromConfig(path: string | URL): Sandbox;
  grant(pattern: string): this;
  grantLock(pattern: string): this;
  policy(policy?: 'commit' | 'drop' | 'assert-none', block?: string[]): this;
  limits(limits: Limits): this;
  query(effect: string, answer?: Answer, options?: { fail?: string }): this;
  action(effect: string, answer?: Answer, options?: { fail?: string }): this;
  breaker(name: string, failureThreshold?: number): this;
  openBreaker(name: string): this;
  /** Runs the plugin's `run` export on `input` (an async plugin: `runAsync`). */
  run(run: Run, input?: Json): Recording;
  /** `run` for an async plugin (or any). One run at a time. */
  runAsync(run: Run, input?: Json): Promise<Recording>;
}
