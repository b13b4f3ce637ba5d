import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

describe('the README demo (npm run demo)', () => {
  it('hot-swaps module A for module B without a second boot', () => {
    const out = execFileSync('npx', ['tsx', 'examples/hot-swap-wasm.ts'], { encoding: 'utf8', timeout: 120_000 });
    expect(out.match(/boot \(cold\)/g)).toHaveLength(1);
    expect(out).toContain('A.compute(6, 7) → 13');
    expect(out).toContain('B.compute(6, 7) → 42');
    expect(out).toContain('B.calls() → 1');
    expect(out).toContain('A.compute(20, 22) → 42');
  }, 150_000);
});
