import { afterAll, describe, expect, it } from 'vitest';
import { runPipeline } from '../../examples/layered-sandbox/main.js';
import { expectNoLeaks, testRunDir } from '../helpers/leaks.js';

const runDir = testRunDir('example');

afterAll(async () => {
  await expectNoLeaks(runDir);
});

describe("a library author's 4-stage lineage (examples/layered-sandbox)", () => {
  it('runs each job from the same loaded data', async () => {
    // grep -c counts matching lines: row-1 matches 1, 10-19, 100-199, 1000-1999 → 1111.
    expect(await runPipeline(['row-1', 'row-4999', 'nothing'], runDir)).toEqual({ 'row-1': 1111, 'row-4999': 1, nothing: 0 });
  });
});
