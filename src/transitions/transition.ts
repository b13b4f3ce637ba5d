import type { GuestAccess } from '../states/guest-access.js';
import type { DataOf, Stage, StageClass } from '../states/stage.js';

/** What a transition's guest work gets to use. */
export interface TransitionContext<From extends Stage> {
  /** The guest, for exec and file I/O. */
  readonly guest: GuestAccess;
  /** The stage being evolved (still current while the transition runs). */
  readonly source: From;
  /** Fires when the transition's time bound expires or the caller aborts. */
  readonly signal: AbortSignal;
}

/**
 * A move from stage `From` to stage `To`, whose work runs inside the guest. `From` appears both as a
 * produced value (`from`) and a consumed one (`run`'s argument), so the type is invariant in it: a transition
 * is accepted by exactly its own source stage and no other.
 */
export interface Transition<From extends Stage, To extends Stage> {
  /** A verb naming the transition, for errors and lineage records (`loadRuntime`). */
  readonly name: string;
  readonly from: StageClass<From>;
  readonly to: StageClass<To>;
  /** Bound on `run`; defaults to the machine's agent timeout. */
  readonly timeoutMs?: number;
  /** Arguments recorded with the lineage (for inspection and replay). Must be JSON-serialisable. */
  readonly args?: unknown;
  /** The guest work; its result becomes the target stage's data. */
  readonly run: (context: TransitionContext<From>) => Promise<DataOf<To>>;
}

/**
 * Defines a transition. A library author's lineage is built from this and the stage base classes.
 * @example
 * ```ts
 * export const installTools = (packages: string[]) =>
 *   defineTransition({
 *     name: 'installTools', from: Booted, to: ToolsInstalled,
 *     run: async ({ guest }) => { await guest.exec(['sh', '-c', `echo ${packages.join(' ')} > /tmp/tools`]); return { packages }; },
 *   });
 * ```
 */
export function defineTransition<From extends Stage, To extends Stage>(transition: Transition<From, To>): Transition<From, To> {
  return Object.freeze({ ...transition });
}
