/** With EVOLVM_TRACE set, start-up and restore steps print their durations to stderr (for finding slow steps). */
const enabled = Boolean(process.env.EVOLVM_TRACE);

/** Runs one named step, timing it when tracing is on. */
export async function step<T>(name: string, work: () => Promise<T> | T): Promise<T> {
  if (!enabled) return work();
  const started = performance.now();
  try {
    return await work();
  } finally {
    process.stderr.write(`[evolvm] ${name}: ${(performance.now() - started).toFixed(1)} ms\n`);
  }
}
