/**
 * The runtimes the reference lineage can load. `shell`: user code is a POSIX shell script whose functions
 * `call` runs (no runtime process of its own beyond a holder). `wasm` and `js` are guest runtime processes
 * (guest/RUNTIMES.md): wabt's WebAssembly interpreter and duktape.
 */
export type RuntimeKind = 'shell' | 'wasm' | 'js';

/** A guest runtime's process, started by the agent. */
export const GUEST_RUNTIMES: ReadonlySet<RuntimeKind> = new Set(['wasm', 'js']);
