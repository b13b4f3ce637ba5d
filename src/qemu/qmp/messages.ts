import { QmpProtocolError } from '../../errors.js';

/** A JSON object as QMP sends it. */
export type JsonObject = Record<string, unknown>;

/** The QEMU version from the greeting. */
export interface QmpVersion {
  readonly qemu: { readonly major: number; readonly minor: number; readonly micro: number };
  readonly package: string;
}

/** The greeting QEMU sends first on a QMP connection (the body of its `QMP` member). */
export interface QmpGreeting {
  readonly version: QmpVersion;
  readonly capabilities: readonly string[];
}

/** An asynchronous QMP event. `data` is `{}` for events that carry none (such as `STOP`). */
export interface QmpEvent {
  readonly event: string;
  readonly data: JsonObject;
  readonly timestamp: { readonly seconds: number; readonly microseconds: number };
}

/** A message from QEMU, classified. */
export type QmpInbound =
  | { readonly kind: 'greeting'; readonly greeting: QmpGreeting }
  | { readonly kind: 'event'; readonly event: QmpEvent }
  | { readonly kind: 'return'; readonly id: unknown; readonly value: unknown }
  | { readonly kind: 'error'; readonly id: unknown; readonly errorClass: string; readonly desc: string };

/**
 * Classifies one decoded message.
 * @throws {QmpProtocolError} a message of none of the QMP shapes, or a reply without an id: QEMU sends those
 *   only when it could not parse a command, and such a reply belongs to no pending command.
 */
export function parseInbound(message: unknown): QmpInbound {
  if (!isObject(message)) throw shapeError('a message that is not a JSON object', message);
  if ('QMP' in message) return { kind: 'greeting', greeting: parseGreeting(message['QMP']) };
  if ('event' in message) return { kind: 'event', event: parseEvent(message) };
  if ('return' in message || 'error' in message) {
    if (!('id' in message)) throw shapeError('a reply without an id (QEMU could not parse a command)', message);
    const id = message['id'];
    if ('return' in message) return { kind: 'return', id, value: message['return'] };
    const error = message['error'];
    if (!isObject(error) || typeof error['class'] !== 'string' || typeof error['desc'] !== 'string') {
      throw shapeError('an error reply without a string class and desc', message);
    }
    return { kind: 'error', id, errorClass: error['class'], desc: error['desc'] };
  }
  throw shapeError('a message that is neither greeting, event nor reply', message);
}

function parseGreeting(body: unknown): QmpGreeting {
  const version = isObject(body) ? body['version'] : undefined;
  const qemu = isObject(version) ? version['qemu'] : undefined;
  const capabilities = isObject(body) ? body['capabilities'] : undefined;
  if (
    !isObject(version) ||
    !isObject(qemu) ||
    !isNumber(qemu['major']) ||
    !isNumber(qemu['minor']) ||
    !isNumber(qemu['micro']) ||
    !Array.isArray(capabilities) ||
    !capabilities.every((c) => typeof c === 'string')
  ) {
    throw shapeError('a malformed greeting', { QMP: body });
  }
  return {
    version: {
      qemu: { major: qemu['major'], minor: qemu['minor'], micro: qemu['micro'] },
      package: typeof version['package'] === 'string' ? version['package'] : '',
    },
    capabilities,
  };
}

function parseEvent(message: JsonObject): QmpEvent {
  const { event, data = {}, timestamp } = message;
  if (
    typeof event !== 'string' ||
    !isObject(data) ||
    !isObject(timestamp) ||
    !isNumber(timestamp['seconds']) ||
    !isNumber(timestamp['microseconds'])
  ) {
    throw shapeError('a malformed event', message);
  }
  return { event, data, timestamp: { seconds: timestamp['seconds'], microseconds: timestamp['microseconds'] } };
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isNumber(value: unknown): value is number {
  return typeof value === 'number';
}

function shapeError(what: string, message: unknown): QmpProtocolError {
  return new QmpProtocolError(`${what}: ${JSON.stringify(message)?.slice(0, 200)}`);
}
