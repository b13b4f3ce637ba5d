import { getEventListeners } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import {
  AbortedError,
  AgentDisconnectedError,
  AgentTimeoutError,
  GuestOperationError,
  GuestProtocolViolationError,
} from '../../src/errors.js';
import { AgentSession } from '../../src/qemu/agent/agent-session.js';
import { execInGuest, readGuestFile, writeGuestFile } from '../../src/qemu/agent/guest-ops.js';
import { FakeAgentPeer } from './fake-agent-peer.js';

let peer: FakeAgentPeer | undefined;
let session: AgentSession | undefined;

afterEach(async () => {
  session?.close();
  await peer?.close();
  peer = session = undefined;
});

async function start(onRequest: ConstructorParameters<typeof FakeAgentPeer>[0], options: { hello?: boolean; helloTimeoutMs?: number; requestTimeoutMs?: number } = {}) {
  peer = new FakeAgentPeer(onRequest, options);
  await peer.listen();
  session = await AgentSession.connect({ socketPath: peer.path, helloTimeoutMs: options.helloTimeoutMs ?? 2000, requestTimeoutMs: options.requestTimeoutMs ?? 2000 });
  return { peer, session };
}

describe('AgentSession', () => {
  it('reads the hello and answers a ping', async () => {
    const { session } = await start((p, r) => p.reply(r));
    expect(session.hello.agent).toBe('fake/0');
    await expect(session.request('ping')).resolves.toEqual({});
  });

  it('times out when no hello arrives within the bound', async () => {
    peer = new FakeAgentPeer(() => {}, { hello: false });
    await peer.listen();
    const started = Date.now();
    await expect(AgentSession.connect({ socketPath: peer.path, helloTimeoutMs: 300, requestTimeoutMs: 1000 })).rejects.toBeInstanceOf(AgentTimeoutError);
    expect(Date.now() - started).toBeLessThan(1500);
  });

  it('refuses a first frame that is not a hello', async () => {
    peer = new FakeAgentPeer(() => {}, { hello: false });
    await peer.listen();
    const connecting = AgentSession.connect({ socketPath: peer.path, helloTimeoutMs: 2000, requestTimeoutMs: 1000 });
    setTimeout(() => peer!.send({ t: 'res', id: 1, ok: true, v: {} }), 50);
    await expect(connecting).rejects.toBeInstanceOf(GuestProtocolViolationError);
  });

  it('never reuses request ids and routes out-of-order replies', async () => {
    const held: Array<Record<string, unknown>> = [];
    const { session } = await start((p, r) => {
      held.push(r);
      if (held.length === 3) for (const h of [...held].reverse()) p.reply(h, h.a);
    });
    const results = await Promise.all([1, 2, 3].map((n) => session.request('echo', { n })));
    expect(results).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
    const ids = held.map((r) => r.id);
    expect(new Set(ids).size).toBe(3);
  });

  it('drops replies to unknown ids and stays usable', async () => {
    const { peer, session } = await start((p, r) => {
      p.send({ t: 'res', id: 999_999, ok: true, v: 'stray' });
      p.reply(r, 'mine');
    });
    await expect(session.request('ping')).resolves.toBe('mine');
    expect(peer.requests).toHaveLength(1);
  });

  it('turns a guest error reply into a GuestOperationError', async () => {
    const { session } = await start((p, r) => p.send({ t: 'res', id: r.id, ok: false, e: { code: 'ENOENT', msg: 'no such file' } }));
    const error = await session.request('file_read', { path: '/x' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GuestOperationError);
    expect(error).toMatchObject({ guestCode: 'ENOENT', operation: 'file_read' });
  });

  it('times out a request and drops its late reply', async () => {
    let late: Record<string, unknown> | undefined;
    const { peer, session } = await start((_p, r) => (late = r), { requestTimeoutMs: 100 });
    await expect(session.request('ping')).rejects.toBeInstanceOf(AgentTimeoutError);
    peer.reply(late!);
    expect(session.pendingCount).toBe(0);
    expect(session.state).toBe('running');
  });

  it('aborts a request with an AbortSignal', async () => {
    const { session } = await start(() => {});
    const controller = new AbortController();
    const pending = session.request('ping', {}, { signal: controller.signal });
    controller.abort();
    await expect(pending).rejects.toBeInstanceOf(AbortedError);
  });

  it('removes its abort listener and timer once a request is answered', async () => {
    const { session } = await start((p, r) => p.reply(r));
    const controller = new AbortController();
    await session.request('ping', {}, { signal: controller.signal, timeoutMs: 50 });
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
    controller.abort();
    // past the timeout: a timer left behind would have nothing to settle, but must not break the session
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(session.state).toBe('running');
    expect(session.pendingCount).toBe(0);
  });

  it('fails pending requests and closes on an oversized frame, and the host stays healthy', async () => {
    const { peer, session } = await start((p) => p.raw(Buffer.from([0x7f, 0xff, 0xff, 0xff])));
    await expect(session.request('ping')).rejects.toBeInstanceOf(GuestProtocolViolationError);
    expect(session.state).toBe('closed');
    await expect(session.request('ping')).rejects.toBeInstanceOf(GuestProtocolViolationError);
    expect(peer.requests).toHaveLength(1);
  });

  it('fails pending requests on a garbage frame', async () => {
    const { session } = await start((p) => p.raw(Buffer.from([0, 0, 0, 3, 0x93, 1, 2])));
    await expect(session.request('ping')).rejects.toBeInstanceOf(GuestProtocolViolationError);
  });

  it('fails pending requests on a well-framed message of the wrong shape', async () => {
    const { session } = await start((p, r) => p.send({ t: 'res', id: r.id }));
    await expect(session.request('ping')).rejects.toThrow(/boolean ok/);
  });

  it('fails every pending request when the channel drops', async () => {
    const { peer, session } = await start((p, r) => {
      if (p.requests.length === 3) p.disconnect();
      void r;
    });
    const results = await Promise.allSettled([session.request('a'), session.request('b'), session.request('c')]);
    for (const result of results) {
      expect(result.status).toBe('rejected');
      expect((result as PromiseRejectedResult).reason).toBeInstanceOf(AgentDisconnectedError);
    }
    expect(peer.requests).toHaveLength(3);
  });

  it('resync fails requests from before a restore and reads a fresh hello', async () => {
    const { session } = await start((p, r) => {
      if (r.op === 'hello') p.reply(r, { ...p.requests[0], v: 1, agent: 'fake/0', kernel: '6.1', arch: 'x86_64', boot_id: 'after', max_frame: 1 << 24, ops: [], mem_kib: 1, cpus: 1 });
    });
    const before = session.request('exec');
    before.catch(() => {});
    const hello = await session.resync('restored from snapshot');
    await expect(before).rejects.toThrow(/restored from snapshot/);
    expect(hello.boot_id).toBe('after');
    expect(session.hello.boot_id).toBe('after');
  });

  it('resync reads the fresh hello with the op it is given', async () => {
    const { session, peer } = await start((p, r) => {
      if (r.op === 'refresh') p.reply(r, { v: 1, agent: 'fake/0', kernel: '6.1', arch: 'x86_64', boot_id: 'refreshed', max_frame: 1 << 24, ops: [], mem_kib: 1, cpus: 1 });
    });
    const hello = await session.resync('restored', { op: 'refresh', args: { ns: 5n } });
    expect(hello.boot_id).toBe('refreshed');
    expect(peer.requests.at(-1)).toMatchObject({ op: 'refresh', a: { ns: 5 } });
  });
});

describe('guest operations over the session', () => {
  it('collects streamed exec output and the exit code', async () => {
    const { session } = await start((p, r) => {
      p.send({ t: 'chunk', id: r.id, s: 'stdout', d: Buffer.from('hello ') });
      p.send({ t: 'chunk', id: r.id, s: 'stderr', d: Buffer.from('warn') });
      p.send({ t: 'chunk', id: r.id, s: 'stdout', d: Buffer.from('world') });
      p.reply(r, { code: 3, signal: 0, timed_out: false });
    });
    const streamed: string[] = [];
    const result = await execInGuest(session, ['x'], { onStdout: (d) => streamed.push(Buffer.from(d).toString()) });
    expect(result).toMatchObject({ exitCode: 3, stdout: 'hello world', stderr: 'warn', timedOut: false });
    expect(streamed).toEqual(['hello ', 'world']);
  });

  it('bounds the output an exec may accumulate', async () => {
    const { session } = await start((p, r) => {
      for (let i = 0; i < 4; i++) p.send({ t: 'chunk', id: r.id, s: 'stdout', d: Buffer.alloc(1000) });
      p.reply(r, { code: 0 });
    });
    await expect(execInGuest(session, ['x'], { maxOutputBytes: 2500 })).rejects.toMatchObject({ guestCode: 'MAX_OUTPUT' });
  });

  it('writes a large file in 1 MiB requests and reads it back from chunks', async () => {
    const files = new Map<string, Buffer>();
    const { peer, session } = await start((p, r) => {
      const a = r.a as Record<string, unknown>;
      if (r.op === 'file_write') {
        const prev = a.trunc ? Buffer.alloc(0) : files.get(a.path as string)!;
        files.set(a.path as string, Buffer.concat([prev, a.d as Buffer]));
        p.reply(r, { size: files.get(a.path as string)!.length });
      } else {
        const data = files.get(a.path as string)!;
        for (let o = 0; o < data.length; o += 65536) p.send({ t: 'chunk', id: r.id, s: 'data', d: data.subarray(o, o + 65536) });
        p.reply(r, { size: data.length });
      }
    });
    const data = Buffer.alloc(2.5 * 1024 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
    await writeGuestFile(session, '/f', data);
    expect(peer.requests.filter((r) => r.op === 'file_write')).toHaveLength(3);
    expect((await readGuestFile(session, '/f')).equals(data)).toBe(true);
  });
});

describe('host-function calls from the guest', () => {
  it('serves a hostcall made during a request and sends the result back', async () => {
    const { peer, session } = await start((p, r) => {
      if (r.t === 'req') p.send({ t: 'hostcall', id: r.id, call: 1, fn: 'double', args: [21] });
      if (r.t === 'hostret') p.send({ t: 'res', id: r.id, ok: true, v: { got: r.v } });
    });
    const value = await session.request('rt_req', {}, { onHostCall: async (fn, args) => (fn === 'double' ? (args[0] as number) * 2 : null) });
    expect(value).toEqual({ got: 42 });
    expect(peer.requests[1]).toMatchObject({ t: 'hostret', call: 1, ok: true, v: 42 });
  });

  it('sends a failing host function back to the guest as an error', async () => {
    const { peer, session } = await start((p, r) => {
      if (r.t === 'req') p.send({ t: 'hostcall', id: r.id, call: 7, fn: 'boom', args: [] });
      if (r.t === 'hostret') p.send({ t: 'res', id: r.id, ok: true, v: r.e });
    });
    const value = await session.request('rt_req', {}, { onHostCall: async () => { throw new Error('nope'); } });
    expect(value).toEqual({ code: 'HOST_ERROR', msg: 'nope' });
    expect(peer.requests[1]).toMatchObject({ ok: false, call: 7 });
  });

  it('refuses a hostcall for a request that serves none', async () => {
    const { session } = await start((p, r) => {
      if (r.t === 'req') p.send({ t: 'hostcall', id: r.id, call: 1, fn: 'x', args: [] });
      if (r.t === 'hostret') p.send({ t: 'res', id: r.id, ok: true, v: r.e });
    });
    await expect(session.request('rt_req')).resolves.toMatchObject({ code: 'NO_HOST_FUNCTIONS' });
  });

  it('refuses host calls beyond the in-flight bound instead of running them all', async () => {
    const replies: Array<Record<string, unknown>> = [];
    let started = 0;
    const { session } = await start((p, r) => {
      if (r.t === 'req') for (let call = 0; call < 100; call++) p.send({ t: 'hostcall', id: r.id, call, fn: 'slow', args: [] });
      if (r.t === 'hostret') {
        replies.push(r);
        if (replies.length === 100) p.send({ t: 'res', id: r.id, ok: true, v: null });
      }
    });
    await session.request('rt_req', {}, { onHostCall: () => { started++; return new Promise((resolve) => setTimeout(() => resolve(1), 50)); } });
    expect(started).toBe(64);
    expect(replies.filter((r) => (r.e as { code?: string } | undefined)?.code === 'BUSY')).toHaveLength(36);
  });

  it('treats a malformed hostcall as a protocol violation', async () => {
    const { session } = await start((p, r) => p.send({ t: 'hostcall', id: r.id, call: 1, fn: 5, args: [] }));
    await expect(session.request('rt_req')).rejects.toBeInstanceOf(GuestProtocolViolationError);
  });
});
