/**
 * Every error evolvm throws is an {@link EvolvmError}: callers switch on the literal `code`,
 * read the structured fields of the subclass, and find the underlying error in `cause`.
 */
export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'QEMU_NOT_FOUND'
  | 'QEMU_START_FAILED'
  | 'GUEST_NOT_BUILT'
  | 'QEMU_EXITED'
  | 'QMP_COMMAND_FAILED'
  | 'QMP_DISCONNECTED'
  | 'QMP_PROTOCOL'
  | 'AGENT_TIMEOUT'
  | 'AGENT_DISCONNECTED'
  | 'GUEST_PROTOCOL_VIOLATION'
  | 'GUEST_OPERATION_FAILED'
  | 'OPERATION_NOT_ALLOWED'
  | 'ABORTED'
  | 'SNAPSHOT_FAILED'
  | 'STAGE_STALE'
  | 'STAGE_POISONED'
  | 'TRANSITION_FAILED'
  | 'HOST_FUNCTIONS_MISMATCH'
  | 'CALL_TIMEOUT'
  | 'SNAPSHOT_CORRUPT'
  | 'SNAPSHOT_INCOMPATIBLE'
  | 'SNAPSHOT_NOT_FOUND'
  | 'SNAPSHOT_EXISTS'
  | 'SNAPSHOT_LOCKED'
  | 'SNAPSHOT_IN_USE_BY_CHILD'
  | 'SNAPSHOT_MISMATCH';

/** The base class of every error evolvm throws. */
export abstract class EvolvmError extends Error {
  abstract readonly code: ErrorCode;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A config option failed validation; `issues` carries each option's path, the value and what was expected. */
export class ConfigInvalidError extends EvolvmError {
  readonly code = 'CONFIG_INVALID' as const;
  constructor(
    readonly issues: ReadonlyArray<{ path: string; message: string; value?: unknown }>,
    options?: { cause?: unknown },
  ) {
    super(`invalid config: ${issues.map((i) => `${i.path || '(root)'}: ${i.message}${'value' in i ? ` (got ${safeJson(i.value)})` : ''}`).join('; ')}`, options);
  }
}

/** The QEMU binary could not be found or executed. */
export class QemuNotFoundError extends EvolvmError {
  readonly code = 'QEMU_NOT_FOUND' as const;
  readonly installHint = 'install QEMU: apt-get install qemu-system-x86 qemu-utils';
  constructor(readonly binary: string, options?: { cause?: unknown }) {
    super(`QEMU binary not found: ${binary} (install QEMU: apt-get install qemu-system-x86 qemu-utils)`, options);
  }
}

/** QEMU could not be started at all: the fork, the exec or its stderr file failed. Nothing was left running. */
export class QemuStartError extends EvolvmError {
  readonly code = 'QEMU_START_FAILED' as const;
  constructor(readonly reason: string, options?: { cause?: unknown }) {
    super(`QEMU could not be started: ${reason}`, options);
  }
}

/** The guest kernel or initramfs is missing: the guest was not built or a path is wrong. */
export class GuestNotBuiltError extends EvolvmError {
  readonly code = 'GUEST_NOT_BUILT' as const;
  constructor(readonly path: string, options?: { cause?: unknown }) {
    super(`guest file missing: ${path} (build the guest: npm run guest:build)`, options);
  }
}

/** The QEMU process exited (or was killed) while evolvm still needed it. */
export class QemuExitedError extends EvolvmError {
  readonly code = 'QEMU_EXITED' as const;
  /** The operation QEMU died in, when there was one (`boot`, `restore`, …). */
  readonly during: string | undefined;
  constructor(
    readonly exitCode: number | null,
    readonly signal: string | null,
    readonly consoleTail: string,
    options?: { cause?: unknown; during?: string },
  ) {
    super(
      `QEMU exited${options?.during ? ` during ${options.during}` : ''} (code ${exitCode}, signal ${signal})` +
        (consoleTail ? `; console tail:\n${consoleTail}` : ''),
      options,
    );
    this.during = options?.during;
  }
}

/** A QMP command returned an error reply, or a QMP job ended with an error. */
export class QmpCommandError extends EvolvmError {
  readonly code = 'QMP_COMMAND_FAILED' as const;
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly description: string,
    options?: { cause?: unknown },
  ) {
    super(`QMP ${command} failed: ${errorClass}: ${description}`, options);
  }
}

/** The QMP connection dropped; every pending command is rejected with this. */
export class QmpDisconnectedError extends EvolvmError {
  readonly code = 'QMP_DISCONNECTED' as const;
  constructor(readonly command: string | undefined, options?: { cause?: unknown }) {
    super(`QMP connection closed${command ? ` while ${command} was pending` : ''}`, options);
  }
}

/** QEMU sent something on QMP that is not valid QMP (bad JSON, oversized line, missing greeting). */
export class QmpProtocolError extends EvolvmError {
  readonly code = 'QMP_PROTOCOL' as const;
  constructor(readonly detail: string, options?: { cause?: unknown }) {
    super(`QMP protocol error: ${detail}`, options);
  }
}

/** The guest agent did not answer within the bound. */
export class AgentTimeoutError extends EvolvmError {
  readonly code = 'AGENT_TIMEOUT' as const;
  /** The end of the guest console (and QEMU's stderr) when the guest never came up: why it hangs, if it said. */
  readonly consoleTail: string | undefined;
  constructor(
    readonly operation: string,
    readonly timeoutMs: number,
    options?: { cause?: unknown; consoleTail?: string },
  ) {
    super(
      `guest agent did not answer ${operation} within ${timeoutMs} ms` +
        (options?.consoleTail ? `; console tail:\n${options.consoleTail}` : ''),
      options,
    );
    this.consoleTail = options?.consoleTail;
  }
}

/** The agent channel closed, or a restore invalidated the requests that were in flight. */
export class AgentDisconnectedError extends EvolvmError {
  readonly code = 'AGENT_DISCONNECTED' as const;
  constructor(readonly operation: string | undefined, readonly reason: string, options?: { cause?: unknown }) {
    super(`guest agent channel lost${operation ? ` during ${operation}` : ''}: ${reason}`, options);
  }
}

/** The guest sent bytes that break the agent protocol (bad length, bad msgpack, bad shape). */
export class GuestProtocolViolationError extends EvolvmError {
  readonly code = 'GUEST_PROTOCOL_VIOLATION' as const;
  constructor(readonly detail: string, options?: { cause?: unknown }) {
    super(`guest protocol violation: ${detail}`, options);
  }
}

/** The guest agent answered a request with an error (for example ENOENT for a missing file). */
export class GuestOperationError extends EvolvmError {
  readonly code = 'GUEST_OPERATION_FAILED' as const;
  constructor(
    readonly operation: string,
    readonly guestCode: string,
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(`guest ${operation} failed: ${guestCode}: ${detail}`, options);
  }
}

/** The VM's run-time lifecycle refuses this operation in its current state. */
export class OperationNotAllowedError extends EvolvmError {
  readonly code = 'OPERATION_NOT_ALLOWED' as const;
  constructor(readonly operation: string, readonly state: string, options?: { cause?: unknown }) {
    super(`${operation} is not allowed while the machine is ${state}`, options);
  }
}

/** The caller's AbortSignal fired. */
export class AbortedError extends EvolvmError {
  readonly code = 'ABORTED' as const;
  constructor(readonly operation: string, options?: { cause?: unknown }) {
    super(`${operation} was aborted`, options);
  }
}

/** Taking, restoring or deleting a snapshot failed. */
export class SnapshotError extends EvolvmError {
  readonly code = 'SNAPSHOT_FAILED' as const;
  constructor(readonly operation: 'save' | 'load' | 'delete', readonly tag: string, options?: { cause?: unknown }) {
    super(`snapshot ${operation} of ${tag} failed${causeText(options?.cause)}`, options);
  }
}

/** A stage object was used after it was evolved or devolved. */
export class StageStaleError extends EvolvmError {
  readonly code = 'STAGE_STALE' as const;
  constructor(
    readonly stage: string,
    readonly currentStage: string,
    readonly operation: string,
    options?: { cause?: unknown },
  ) {
    super(`${operation} on a stale ${stage}: the sandbox is now in ${currentStage}`, options);
  }
}

/** The sandbox behind a stage object is gone (QEMU died, or a rollback failed). */
export class StagePoisonedError extends EvolvmError {
  readonly code = 'STAGE_POISONED' as const;
  constructor(readonly stage: string, readonly reason: string, options?: { cause?: unknown }) {
    super(`${stage} is poisoned: ${reason}`, options);
  }
}

/** A transition's guest work failed; the sandbox was rolled back to the source stage. */
export class TransitionFailedError extends EvolvmError {
  readonly code = 'TRANSITION_FAILED' as const;
  constructor(
    readonly transition: string,
    readonly from: string,
    readonly rolledBack: boolean,
    options?: { cause?: unknown },
  ) {
    super(
      `transition ${transition} from ${from} failed${rolledBack ? ' (rolled back)' : ''}${causeText(options?.cause)}`,
      options,
    );
  }
}

/** The host does not offer the host functions a stage was built with (Hyperlight's superset rule). */
export class HostFunctionsMismatchError extends EvolvmError {
  readonly code = 'HOST_FUNCTIONS_MISMATCH' as const;
  constructor(
    readonly context: string,
    readonly missing: readonly string[],
    readonly mismatched: readonly string[],
    options?: { cause?: unknown },
  ) {
    super(
      `${context}: the host must offer every host function the stage was built with` +
        (missing.length ? `; missing: ${missing.join(', ')}` : '') +
        (mismatched.length ? `; signature differs: ${mismatched.join(', ')}` : ''),
      options,
    );
  }
}

/**
 * A call into user code ran past its bound. The sandbox was moved back to its last good stage, handed over
 * in `recovered`; the stage the call was made on is consumed.
 */
export class CallTimeoutError extends EvolvmError {
  readonly code = 'CALL_TIMEOUT' as const;
  constructor(
    readonly fn: string,
    readonly timeoutMs: number,
    readonly recovered: unknown,
    options?: { cause?: unknown },
  ) {
    super(`call ${fn} did not return within ${timeoutMs} ms; the sandbox was moved back to its last good stage`, options);
  }
}

/**
 * A persisted snapshot cannot be restored here: it is of another stage than the class asked for, or was made by
 * another QEMU version, machine type or guest image.
 */
export class SnapshotMismatchError extends EvolvmError {
  readonly code = 'SNAPSHOT_MISMATCH' as const;
  constructor(
    readonly snapshot: string,
    readonly what: 'stage' | 'qemu' | 'machine' | 'guest' | 'maps',
    readonly expected: string,
    readonly actual: string,
    options?: { cause?: unknown },
  ) {
    super(`snapshot ${snapshot} cannot be restored here: its ${what} is ${expected}, this host has ${actual}`, options);
  }
}

/**
 * Whether an error means the VM can no longer be trusted or used. Switches over every code so that a new
 * code must be classified here before it compiles.
 */
export function isFatal(error: EvolvmError): boolean {
  const code = error.code;
  switch (code) {
    case 'QEMU_EXITED':
    case 'QMP_DISCONNECTED':
    case 'QMP_PROTOCOL':
    case 'AGENT_DISCONNECTED':
    case 'GUEST_PROTOCOL_VIOLATION':
    case 'STAGE_POISONED':
      return true;
    case 'CONFIG_INVALID':
    case 'QEMU_NOT_FOUND':
    case 'QEMU_START_FAILED':
    case 'GUEST_NOT_BUILT':
    case 'QMP_COMMAND_FAILED':
    case 'AGENT_TIMEOUT':
    case 'GUEST_OPERATION_FAILED':
    case 'OPERATION_NOT_ALLOWED':
    case 'ABORTED':
    case 'SNAPSHOT_FAILED':
    case 'STAGE_STALE':
    case 'TRANSITION_FAILED':
    case 'HOST_FUNCTIONS_MISMATCH':
    case 'CALL_TIMEOUT':
    case 'SNAPSHOT_CORRUPT':
    case 'SNAPSHOT_INCOMPATIBLE':
    case 'SNAPSHOT_NOT_FOUND':
    case 'SNAPSHOT_EXISTS':
    case 'SNAPSHOT_LOCKED':
    case 'SNAPSHOT_IN_USE_BY_CHILD':
    case 'SNAPSHOT_MISMATCH':
      return false;
    default: {
      const unreachable: never = code;
      return unreachable;
    }
  }
}

function causeText(cause: unknown): string {
  return cause instanceof Error ? `: ${cause.message}` : '';
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
