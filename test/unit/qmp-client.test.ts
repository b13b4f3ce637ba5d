import { afterEach, describe, expect, it } from 'vitest';
import {
  AbortedError,
  ConfigInvalidError,
  QmpCommandError,
  QmpDisconnectedError,
  QmpProtocolError,
} from '../../src/errors.js';
import { QmpClient, type QmpConnectOptions, type QmpEvent } from '../../src/qemu/qmp/index.js';
import { eventMessage, FakeQmpPeer, type ReceivedCommand } from './qmp-fake-peer.js';

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function startPeer(options?: { greeting?: unknown }): Promise<FakeQmpPeer> {
  const peer = await FakeQmpPeer.start(options);
  cleanups.push(() => peer.dispose());
  return peer;
}

async function connect(peer: FakeQmpPeer, options: Partial<QmpConnectOptions> = {}): Promise<QmpClient> {
  const client = await QmpClient.connect(peer.path, { timeoutMs: 2_000, ...options });
  cleanups.push(() => client.close());
  return client;
}

async function commands(peer: FakeQmpPeer, count: number): Promise<ReceivedCommand[]> {
  const received: ReceivedCommand[] = [];
  for (let i = 0; i < count; i++) received.push(await peer.nextCommand());
  return received;
}

function reply(id: unknown, value: unknown): string {
  return `${JSON.stringify({ return: value, id })}\r\n`;
}

describe('QmpClient session start', () => {
  it('reads the greeting, negotiates capabilities and is running', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    expect(client.state).toBe('running');
    expect(client.greeting.version.qemu).toEqual({ major: 7, minor: 2, micro: 0 });
    expect(client.greeting.capabilities).toEqual(['oob']);
    expect(peer.received).toEqual([{ execute: 'qmp_capabilities', id: 1 }]);
  });

  it('retries while the socket does not exist yet', async () => {
    const peer = await FakeQmpPeer.create();
    cleanups.push(() => peer.dispose());
    const connecting = QmpClient.connect(peer.path, { timeoutMs: 3_000 });
    await new Promise((resolve) => setTimeout(resolve, 200));
    await peer.listen();
    const client = await connecting;
    cleanups.push(() => client.close());
    expect(client.state).toBe('running');
  });

  it('times out with class Timeout when the socket never appears', async () => {
    const peer = await FakeQmpPeer.create();
    cleanups.push(() => peer.dispose());
    const started = Date.now();
    const error = await QmpClient.connect(peer.path, { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpCommandError);
    expect(error).toMatchObject({ command: 'connect', errorClass: 'Timeout' });
    expect((error as QmpCommandError).cause).toMatchObject({ code: 'ENOENT' });
    expect(Date.now() - started).toBeLessThan(1_500);
  });

  it('times out when QEMU sends no greeting', async () => {
    const peer = await startPeer({ greeting: null });
    await expect(QmpClient.connect(peer.path, { timeoutMs: 200 })).rejects.toMatchObject({ errorClass: 'Timeout' });
  });

  it('stops retrying when the signal aborts', async () => {
    const peer = await FakeQmpPeer.create();
    cleanups.push(() => peer.dispose());
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 50);
    await expect(QmpClient.connect(peer.path, { timeoutMs: 5_000, signal: controller.signal })).rejects.toBeInstanceOf(AbortedError);
  });

  it('refuses a first message that is not a greeting', async () => {
    const peer = await startPeer({ greeting: eventMessage('STOP') });
    await expect(connect(peer)).rejects.toThrow(/expected the greeting/);
  });

  it('refuses a malformed greeting', async () => {
    const peer = await startPeer({ greeting: { QMP: { version: 7 } } });
    await expect(connect(peer)).rejects.toBeInstanceOf(QmpProtocolError);
  });

  it('fails when qmp_capabilities is refused', async () => {
    const peer = await startPeer();
    peer.handle('qmp_capabilities', (command) => peer.replyError(command, 'GenericError', 'no'));
    await expect(connect(peer)).rejects.toMatchObject({ command: 'qmp_capabilities', errorClass: 'GenericError' });
  });

  it('fails when the connection closes before the session starts', async () => {
    const peer = await startPeer({ greeting: null });
    void peer.connected().then((socket) => socket.destroy());
    await expect(connect(peer)).rejects.toBeInstanceOf(QmpDisconnectedError);
  });

  it('rejects invalid options naming the option', async () => {
    const peer = await startPeer();
    await expect(QmpClient.connect(peer.path, { timeoutMs: -1 })).rejects.toBeInstanceOf(ConfigInvalidError);
    await expect(QmpClient.connect(peer.path, { timeoutMs: 100, maxLineBytes: 0 })).rejects.toThrow(/maxLineBytes/);
  });
});

describe('QmpClient commands', () => {
  it('routes replies by id when they arrive out of order', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const results = Promise.all([client.execute('a'), client.execute('b', { x: 1 }), client.execute('c')]);
    const [a, b, c] = await commands(peer, 3);
    expect(b).toEqual({ execute: 'b', arguments: { x: 1 }, id: b!.id });
    peer.reply(c!, 'C');
    peer.reply(a!, 'A');
    peer.reply(b!, 'B');
    await expect(results).resolves.toEqual(['A', 'B', 'C']);
  });

  it('gives every command a larger id than the last', async () => {
    const peer = await startPeer();
    peer.handle('ping', (command) => peer.reply(command));
    const client = await connect(peer);
    for (let i = 0; i < 5; i++) await client.execute('ping');
    const ids = peer.received.map((command) => command.id as number);
    expect(ids).toEqual([...ids].sort((x, y) => x - y));
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('drops replies whose id is unknown', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const result = client.execute('query-status');
    const [command] = await commands(peer, 1);
    peer.sendRaw(reply(9999, 'stray') + reply('not-ours', 'stray') + reply(command!.id, 'mine'));
    await expect(result).resolves.toBe('mine');
    expect(client.state).toBe('running');
  });

  it('delivers events that arrive between replies and still routes the replies', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const seen: string[] = [];
    client.on('event', (event) => seen.push(event.event));
    const first = client.execute('one');
    const second = client.execute('two');
    const [one, two] = await commands(peer, 2);
    peer.event('RESUME');
    peer.reply(two!, 2);
    peer.event('STOP');
    peer.reply(one!, 1);
    peer.event('RESET', { guest: true });
    await expect(Promise.all([first, second])).resolves.toEqual([1, 2]);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(seen).toEqual(['RESUME', 'STOP', 'RESET']);
  });

  it('assembles a reply that arrives one byte at a time', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const result = client.execute('query-status');
    const [command] = await commands(peer, 1);
    await peer.sendInPieces(reply(command!.id, { running: false, status: 'prelaunch' }), 1);
    await expect(result).resolves.toEqual({ running: false, status: 'prelaunch' });
  });

  it('handles several messages in one chunk', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const events = client.events();
    const results = Promise.all([client.execute('a'), client.execute('b')]);
    const [a, b] = await commands(peer, 2);
    peer.sendRaw(reply(b!.id, 'B') + `${JSON.stringify(eventMessage('STOP'))}\r\n` + reply(a!.id, 'A'));
    await expect(results).resolves.toEqual(['A', 'B']);
    await expect(events.next()).resolves.toMatchObject({ value: { event: 'STOP', data: {} } });
  });

  it('rejects with QmpCommandError carrying the class and desc of an error reply', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const result = client.execute('device_del', { id: 'nope' });
    const [command] = await commands(peer, 1);
    peer.replyError(command!, 'DeviceNotFound', "Device 'nope' not found");
    const error = await result.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpCommandError);
    expect(error).toMatchObject({
      code: 'QMP_COMMAND_FAILED',
      command: 'device_del',
      errorClass: 'DeviceNotFound',
      description: "Device 'nope' not found",
    });
    expect(client.state).toBe('running');
  });

  it('times out a command with class Timeout and drops its late reply', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const error = await client.execute('slow', undefined, { timeoutMs: 50 }).catch((e: unknown) => e);
    expect(error).toMatchObject({ command: 'slow', errorClass: 'Timeout' });
    const [slow] = await commands(peer, 1);
    peer.reply(slow!, 'late');
    const next = client.execute('next');
    const [command] = await commands(peer, 1);
    peer.reply(command!, 'on time');
    await expect(next).resolves.toBe('on time');
  });

  it('uses commandTimeoutMs when a command passes no timeout', async () => {
    const peer = await startPeer();
    const client = await connect(peer, { commandTimeoutMs: 50 });
    await expect(client.execute('slow')).rejects.toMatchObject({ errorClass: 'Timeout' });
  });

  it('stops waiting when the signal aborts', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const controller = new AbortController();
    const result = client.execute('slow', undefined, { signal: controller.signal });
    await commands(peer, 1);
    controller.abort(new Error('user gave up'));
    const error = await result.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AbortedError);
    expect((error as AbortedError).cause).toEqual(new Error('user gave up'));
  });

  it('does not send a command whose signal is already aborted', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    await expect(client.execute('never', undefined, { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortedError);
    peer.handle('ping', (command) => peer.reply(command));
    await client.execute('ping');
    expect(peer.received.map((command) => command.execute)).toEqual(['qmp_capabilities', 'ping']);
  });
});

describe('QmpClient events', () => {
  it('catches an event sent right after the reply when the wait is created before executing', async () => {
    const peer = await startPeer();
    peer.handle('stop', (command) => peer.sendRaw(reply(command.id, {}) + `${JSON.stringify(eventMessage('STOP'))}\r\n`));
    const client = await connect(peer);
    const stopped = client.waitForEvent('STOP', () => true, { timeoutMs: 1_000 });
    await client.execute('stop');
    await expect(stopped).resolves.toMatchObject({ event: 'STOP' });
  });

  it('waits for the first event that the predicate accepts', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const waited = client.waitForEvent('JOB_STATUS_CHANGE', (e) => e.data['status'] === 'concluded', { timeoutMs: 1_000 });
    peer.event('JOB_STATUS_CHANGE', { id: 'j', status: 'running' });
    peer.event('SHUTDOWN', { status: 'concluded' });
    peer.event('JOB_STATUS_CHANGE', { id: 'j', status: 'concluded' });
    await expect(waited).resolves.toMatchObject({ data: { id: 'j', status: 'concluded' } });
  });

  it('times out a wait for an event with class Timeout', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    await expect(client.waitForEvent('STOP', () => true, { timeoutMs: 30 })).rejects.toMatchObject({
      errorClass: 'Timeout',
    });
  });

  it('stops a wait for an event when its signal aborts', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const controller = new AbortController();
    const waited = client.waitForEvent('STOP', () => true, { timeoutMs: 5_000, signal: controller.signal });
    controller.abort();
    await expect(waited).rejects.toBeInstanceOf(AbortedError);
  });

  it('rejects a wait when the predicate throws', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const waited = client.waitForEvent('STOP', () => { throw new Error('bad predicate'); }, { timeoutMs: 1_000 });
    peer.event('STOP');
    await expect(waited).rejects.toThrow('bad predicate');
  });

  it('streams the events that match a filter, buffering until they are read', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const stream = client.events(['STOP', 'RESUME']);
    peer.event('STOP');
    peer.event('RTC_CHANGE', { offset: 1 });
    peer.event('RESUME');
    await new Promise((resolve) => setTimeout(resolve, 20));
    const names: string[] = [];
    for await (const event of stream) {
      names.push(event.event);
      if (names.length === 2) break;
    }
    expect(names).toEqual(['STOP', 'RESUME']);
  });

  it('drops the oldest events past maxBuffered and counts them', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const stream = client.events('STOP', { maxBuffered: 2 });
    for (let i = 0; i < 5; i++) peer.event('STOP', { i });
    await client.waitForEvent('STOP', (e) => e.data['i'] === 4, { timeoutMs: 1_000 }).catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(stream.dropped).toBe(3);
    await expect(stream.next()).resolves.toMatchObject({ value: { data: { i: 3 } } });
    await stream.return();
  });

  it('ends a stream when its signal aborts', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const controller = new AbortController();
    const stream = client.events(undefined, { signal: controller.signal });
    const next = stream.next();
    controller.abort();
    await expect(next).rejects.toBeInstanceOf(AbortedError);
    await expect(stream.next()).resolves.toEqual({ value: undefined, done: true });
  });

  it('calls on() listeners until they are removed', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const seen: QmpEvent[] = [];
    const off = client.on('event', (event) => seen.push(event));
    peer.event('STOP');
    await client.waitForEvent('STOP', () => true, { timeoutMs: 1_000 });
    off();
    peer.event('STOP');
    await client.waitForEvent('STOP', () => true, { timeoutMs: 1_000 });
    expect(seen).toHaveLength(1);
    expect(seen[0]).toEqual({ event: 'STOP', data: {}, timestamp: { seconds: 1700000000, microseconds: 1 } });
  });
});

describe('QmpClient when the connection ends', () => {
  it('rejects every pending command, waiter and stream with QmpDisconnectedError when QEMU goes away', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const closeEvents: unknown[] = [];
    client.on('close', (info) => closeEvents.push(info));
    const pending = ['query-status', 'stop', 'cont'].map((name) => client.execute(name).catch((e: unknown) => e));
    const waiter = client.waitForEvent('STOP', () => true, { timeoutMs: 5_000 });
    const stream = client.events();
    const next = stream.next().catch((e: unknown) => e);
    await commands(peer, 3);
    peer.dropConnection();

    const errors = await Promise.all(pending);
    for (const [i, name] of ['query-status', 'stop', 'cont'].entries()) {
      expect(errors[i]).toBeInstanceOf(QmpDisconnectedError);
      expect(errors[i]).toMatchObject({ command: name });
    }
    await expect(waiter).rejects.toBeInstanceOf(QmpDisconnectedError);
    expect(await next).toBeInstanceOf(QmpDisconnectedError);
    await expect(client.closed).resolves.toEqual({ initiator: 'peer', error: undefined });
    expect(client.state).toBe('closed');
    expect(closeEvents).toHaveLength(1);
    await expect(client.execute('query-status')).rejects.toBeInstanceOf(QmpDisconnectedError);
    await expect(client.waitForEvent('STOP', () => true, { timeoutMs: 1_000 })).rejects.toBeInstanceOf(QmpDisconnectedError);
  });

  it('drops the connection with QmpProtocolError on a line over the bound', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const pending = client.execute('query-status');
    await commands(peer, 1);
    peer.sendRaw(Buffer.alloc(1024 * 1024 + 10, 0x20));
    await expect(pending).rejects.toBeInstanceOf(QmpProtocolError);
    const info = await client.closed;
    expect(info.initiator).toBe('client');
    expect(info.error).toBeInstanceOf(QmpProtocolError);
    expect(info.error?.message).toMatch(/longer than 1048576 bytes/);
    expect(client.state).toBe('closed');
  });

  it('drops the connection with QmpProtocolError on a line that is not JSON', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const stream = client.events();
    peer.sendRaw('{"event": \r\n');
    await expect(stream.next()).rejects.toBeInstanceOf(QmpProtocolError);
    expect((await client.closed).error).toBeInstanceOf(QmpProtocolError);
  });

  it('drops the connection on a reply without an id', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    const pending = client.execute('query-status');
    await commands(peer, 1);
    peer.send({ error: { class: 'GenericError', desc: 'JSON parse error' } });
    await expect(pending).rejects.toThrow(/without an id/);
  });

  it('closes idempotently: pending work rejects, streams end cleanly, listeners hear one close', async () => {
    const peer = await startPeer();
    const client = await connect(peer);
    let closes = 0;
    client.on('close', () => closes++);
    const pending = client.execute('query-status').catch((e: unknown) => e);
    const stream = client.events();
    const next = stream.next();
    await commands(peer, 1);
    const first = client.close();
    expect(client.state).toBe('disconnecting');
    const second = client.close();
    await Promise.all([first, second, client.close()]);
    expect(client.state).toBe('closed');
    expect(await pending).toBeInstanceOf(QmpDisconnectedError);
    await expect(next).resolves.toEqual({ value: undefined, done: true });
    await expect(client.closed).resolves.toEqual({ initiator: 'client', error: undefined });
    expect(closes).toBe(1);
  });

  it('closes on Symbol.asyncDispose', async () => {
    const peer = await startPeer();
    let client: QmpClient;
    {
      await using scoped = await QmpClient.connect(peer.path, { timeoutMs: 2_000 });
      client = scoped;
      expect(client.state).toBe('running');
    }
    expect(client.state).toBe('closed');
  });
});
