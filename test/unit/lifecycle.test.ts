import { describe, expect, it } from 'vitest';
import { OperationNotAllowedError } from '../../src/errors.js';
import { Lifecycle } from '../../src/qemu/lifecycle.js';

describe('Lifecycle', () => {
  it('starts in starting and allows guest I/O only once running', () => {
    const life = new Lifecycle();
    expect(life.state).toBe('starting');
    expect(() => life.assert('guest-io', 'exec')).toThrow(OperationNotAllowedError);
    life.send({ type: 'BOOTED' });
    expect(life.state).toBe('running');
    expect(() => life.assert('guest-io')).not.toThrow();
  });

  it('refuses guest I/O while saving and restoring, and returns to running', () => {
    const life = new Lifecycle();
    life.send({ type: 'BOOTED' });
    life.send({ type: 'SAVE' });
    expect(life.state).toBe('saving');
    expect(() => life.assert('guest-io', 'exec')).toThrow(/exec is not allowed while the machine is saving/);
    life.send({ type: 'SAVE_DONE', paused: false });
    life.send({ type: 'RESTORE' });
    expect(() => life.assert('guest-io')).toThrow(OperationNotAllowedError);
    life.send({ type: 'RESTORE_DONE', paused: true });
    expect(life.state).toBe('paused');
    life.send({ type: 'RESUME' });
    expect(life.state).toBe('running');
  });

  it('refuses a second save while one is in progress, with a typed error', () => {
    const life = new Lifecycle();
    life.send({ type: 'BOOTED' });
    life.send({ type: 'SAVE' });
    try {
      life.send({ type: 'SAVE' });
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(OperationNotAllowedError);
      expect((error as OperationNotAllowedError).state).toBe('saving');
      expect((error as OperationNotAllowedError).operation).toBe('snapshot save');
    }
  });

  it('ends in crashed on an unrequested exit and in stopped on a requested one', () => {
    const crashed = new Lifecycle();
    crashed.send({ type: 'BOOTED' });
    crashed.send({ type: 'EXITED' });
    expect(crashed.state).toBe('crashed');
    expect(crashed.done).toBe(true);
    const stopped = new Lifecycle();
    stopped.send({ type: 'BOOTED' });
    stopped.send({ type: 'STOP' });
    stopped.send({ type: 'EXITED' });
    expect(stopped.state).toBe('stopped');
  });

  it('refuses everything after the end', () => {
    const life = new Lifecycle();
    life.send({ type: 'EXITED' });
    for (const type of ['BOOTED', 'PAUSE', 'SAVE', 'RESTORE', 'STOP'] as const) {
      expect(() => life.send({ type })).toThrow(OperationNotAllowedError);
    }
    expect(() => life.assert('qmp')).toThrow(OperationNotAllowedError);
    expect(life.trySend({ type: 'EXITED' })).toBe(false);
  });

  it('reports state changes to subscribers', () => {
    const life = new Lifecycle();
    const seen: string[] = [];
    const stop = life.subscribe((state) => seen.push(state));
    life.send({ type: 'BOOTED' });
    life.send({ type: 'PAUSE' });
    stop();
    life.send({ type: 'RESUME' });
    expect(seen).toEqual(['running', 'paused']);
  });
});
