/** Where the reference runtime keeps its files in the guest (a tmpfs, so snapshots roll them back). */
export const RUNTIME_DIR = '/run/evolvm/runtime';
export const RUNTIME_CODE_PATH = `${RUNTIME_DIR}/code.sh`;
export const RUNTIME_PID_PATH = `${RUNTIME_DIR}/pid`;
