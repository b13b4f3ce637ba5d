import { afterEach, describe, expect, it } from 'vitest';
import { AgentTimeoutError, GuestOperationError, GuestProtocolViolationError } from '../../src/errors.js';
import { RuntimeChannel } from '../../src/qemu/agent/runtime-channel.js';
import { FakeAgentPeer } from './fake-agent-peer.js';

let peer: FakeAgentPeer | undefined;
let channel: RuntimeChannel | undefined;

afterEach(async () => {
  channel?.close();
  await peer?.close();
  peer = channel = undefined;
});

/** A runtime that answers `echo` at once and never answers `hang`. */
async function start(): Promise<{ peer: FakeAgentPeer; channel: RuntimeChannel }> {
  peer = new FakeAgentPeer((p, r) => {
    if (r.op === 'echo') p.reply(r, r.a);
  }, { hello: false });
  await peer.listen();
  channel = new RuntimeChannel({ socketPath: peer.path, connectTimeoutMs: 2_000, requestTimeoutMs: 2_000 });
  await channel.connect();
  return { peer, channel };
}

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  expect(condition()).toBe(true);
}

describe('RuntimeChannel', () => {
  it('sends requests to the runtime without waiting for a hello', async () => {
    const { channel } = await start();
    await expect(channel.request('echo', { x: 1 })).resolves.toEqual({ x: 1 });
  });

  it('keeps its connection across a load when everything sent was answered', async () => {
    const { peer, channel } = await start();
    await channel.request('echo', {});
    channel.beforeLoad('load');
    channel.afterLoad('load');
    await channel.request('echo', {});
    expect(peer.connections).toBe(1);
  });

  it('drops the connection before a load after a request went unanswered, and makes a new one after it', async () => {
    const { peer, channel } = await start();
    await expect(channel.request('hang', {}, { timeoutMs: 50 })).rejects.toBeInstanceOf(AgentTimeoutError);
    channel.beforeLoad('load');
    channel.afterLoad('load');
    await until(() => peer.connections === 2);
    await expect(channel.request('echo', { y: 2 })).resolves.toEqual({ y: 2 });
  });

  it('fails what is pending when a load starts, then serves the new timeline', async () => {
    const { peer, channel } = await start();
    const pending = channel.request('hang', {}).catch((e: unknown) => e);
    await peer.nextRequest();
    channel.beforeLoad('restored snapshot t');
    channel.afterLoad('restored snapshot t');
    expect(String(await pending)).toMatch(/restored snapshot t/);
    await expect(channel.request('echo', {})).resolves.toEqual({});
  });

  it('fails pending requests with RUNTIME_EXITED when the runtime closes the port, and reconnects', async () => {
    const { peer, channel } = await start();
    const pending = channel.request('hang', {}).catch((e: unknown) => e);
    await peer.nextRequest();
    channel.peerClosed('the runtime exited');
    const error = await pending;
    expect(error).toBeInstanceOf(GuestOperationError);
    expect(error).toMatchObject({ guestCode: 'RUNTIME_EXITED' });
    await until(() => peer.connections === 2);
    await expect(channel.request('echo', {})).resolves.toEqual({});
  });

  it('ignores a port closing with nothing outstanding', async () => {
    const { peer, channel } = await start();
    await channel.request('echo', {});
    channel.peerClosed('the runtime exited');
    await channel.request('echo', {});
    expect(peer.connections).toBe(1);
  });

  it('fails a request the runtime answers with garbage, then serves the next one on a new connection', async () => {
    const { peer, channel } = await start();
    const broken = channel.request('hang', {}).catch((e: unknown) => e);
    await peer.nextRequest();
    peer.raw(Buffer.from([0, 0, 0, 2, 0xc1, 0xc1]));
    expect(await broken).toBeInstanceOf(GuestProtocolViolationError);
    await expect(channel.request('echo', { z: 3 })).resolves.toEqual({ z: 3 });
    expect(peer.connections).toBe(2);
  });

  it('refuses requests once closed', async () => {
    const { channel } = await start();
    channel.close();
    await expect(channel.request('echo', {})).rejects.toThrow(/closed/);
  });
});
