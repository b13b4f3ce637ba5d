import { createActor, setup, type SnapshotFrom } from 'xstate';
import { OperationNotAllowedError } from '../errors.js';

export type LifecycleEvent =
  | { type: 'BOOTED' }
  | { type: 'PAUSE' }
  | { type: 'RESUME' }
  | { type: 'SAVE' }
  | { type: 'SAVE_DONE'; paused: boolean }
  | { type: 'RESTORE' }
  | { type: 'RESTORE_DONE'; paused: boolean }
  | { type: 'STOP' }
  | { type: 'EXITED' };

/** Operations that are not state changes themselves but need the machine in a state that allows them. */
export type LifecycleOperation = 'guest-io' | 'qmp';

/**
 * The VM's run-time lifecycle. It decides which operations are allowed: talking to the agent only while
 * running, QMP while running or paused, one save or restore at a time, and nothing after the process is gone.
 * `crashed` is where an exit nobody asked for ends; `stopped` is where a requested stop ends.
 */
export const lifecycleMachine = setup({
  types: {
    events: {} as LifecycleEvent,
    tags: {} as LifecycleOperation,
  },
  guards: {
    leftPaused: ({ event }) => (event.type === 'SAVE_DONE' || event.type === 'RESTORE_DONE') && event.paused,
  },
}).createMachine({
  id: 'vm',
  initial: 'starting',
  states: {
    starting: {
      tags: ['qmp'],
      on: { BOOTED: 'running', STOP: 'stopping', EXITED: 'crashed' },
    },
    running: {
      tags: ['guest-io', 'qmp'],
      on: { PAUSE: 'paused', SAVE: 'saving', RESTORE: 'restoring', STOP: 'stopping', EXITED: 'crashed' },
    },
    paused: {
      tags: ['qmp'],
      on: { RESUME: 'running', SAVE: 'saving', RESTORE: 'restoring', STOP: 'stopping', EXITED: 'crashed' },
    },
    saving: {
      tags: ['qmp'],
      on: {
        SAVE_DONE: [{ guard: 'leftPaused', target: 'paused' }, { target: 'running' }],
        STOP: 'stopping',
        EXITED: 'crashed',
      },
    },
    restoring: {
      tags: ['qmp'],
      on: {
        RESTORE_DONE: [{ guard: 'leftPaused', target: 'paused' }, { target: 'running' }],
        STOP: 'stopping',
        EXITED: 'crashed',
      },
    },
    stopping: {
      on: { EXITED: 'stopped' },
    },
    stopped: { type: 'final' },
    crashed: { type: 'final' },
  },
});

export type LifecycleState = 'starting' | 'running' | 'paused' | 'saving' | 'restoring' | 'stopping' | 'stopped' | 'crashed';
type LifecycleSnapshot = SnapshotFrom<typeof lifecycleMachine>;

const EVENT_OPERATION: Record<LifecycleEvent['type'], string> = {
  BOOTED: 'boot',
  PAUSE: 'pause',
  RESUME: 'resume',
  SAVE: 'snapshot save',
  SAVE_DONE: 'snapshot save',
  RESTORE: 'snapshot restore',
  RESTORE_DONE: 'snapshot restore',
  STOP: 'stop',
  EXITED: 'exit',
};

/** One machine's running lifecycle actor, with typed refusals instead of silently ignored events. */
export class Lifecycle {
  readonly #actor = createActor(lifecycleMachine).start();

  get state(): LifecycleState {
    return this.#actor.getSnapshot().value as LifecycleState;
  }

  /** Whether the machine has reached `stopped` or `crashed`. */
  get done(): boolean {
    return this.#actor.getSnapshot().status === 'done';
  }

  /**
   * Moves the lifecycle, or refuses.
   * @throws {OperationNotAllowedError} when the event is not allowed in the current state.
   */
  send(event: LifecycleEvent): void {
    const snapshot = this.#actor.getSnapshot();
    if (!snapshot.can(event)) throw new OperationNotAllowedError(EVENT_OPERATION[event.type], this.state);
    this.#actor.send(event);
  }

  /** Sends an event when the state allows it; reports whether it did. For events that may legitimately race (EXITED). */
  trySend(event: LifecycleEvent): boolean {
    if (!this.#actor.getSnapshot().can(event)) return false;
    this.#actor.send(event);
    return true;
  }

  /**
   * Checks that an operation is allowed now.
   * @throws {OperationNotAllowedError}
   */
  assert(operation: LifecycleOperation, name: string = operation): void {
    if (!this.#actor.getSnapshot().hasTag(operation)) throw new OperationNotAllowedError(name, this.state);
  }

  /** Calls `listener` on every state change; returns an unsubscribe function. */
  subscribe(listener: (state: LifecycleState, snapshot: LifecycleSnapshot) => void): () => void {
    const subscription = this.#actor.subscribe((snapshot) => listener(snapshot.value as LifecycleState, snapshot));
    return () => subscription.unsubscribe();
  }
}
