import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

describe('the rollback example (examples/rollback.ts)', () => {
  it('undoes a bad load, a trapping start, a hang and a runtime crash, each followed by a good load', () => {
    const out = execFileSync('npx', ['tsx', 'examples/rollback.ts'], { encoding: 'utf8', timeout: 120_000 });
    expect(out).toMatch(/1\. loadCode\(bytes that are not wasm\) +→ TransitionFailedError/);
    expect(out).toMatch(/2\. loadCode\(start function traps\) +→ TransitionFailedError/);
    expect(out).toMatch(/3\. call forever\(\) with a 500 ms bound +→ CallTimeoutError/);
    expect(out).toContain('recovered a RuntimeLoaded, ready');
    expect(out).toMatch(/4\. the runtime is killed under a call +→ GuestOperationError \(RUNTIME_EXITED\)/);
    expect(out).toMatch(/devolve → RuntimeLoaded in [\d.]+ ms: the runtime runs again/);
    // After each of the four, module A loads and answers.
    expect(out.match(/then module A loads: compute\(6, 7\) → 13/g)).toHaveLength(4);
  }, 150_000);
});
