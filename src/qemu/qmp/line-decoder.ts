import { QmpProtocolError } from '../../errors.js';

/** The longest line accepted by default (1 MiB), newline excluded. */
export const DEFAULT_MAX_LINE_BYTES = 1024 * 1024;

const NEWLINE = 0x0a;

/**
 * The QMP framing layer: QMP sends one JSON value per line, and this splits a byte stream into those values.
 * Push bytes as they arrive, in chunks of any size; each push returns every message the chunk completed.
 * There is no socket inside: the client owns the transport.
 *
 * Pretty-printed QMP (`-mon …,pretty=on`) spreads a message over several lines and is not supported.
 *
 * @example
 * const decoder = new LineDecoder();
 * socket.on('data', (chunk) => { for (const message of decoder.push(chunk)) handle(message); });
 */
export class LineDecoder {
  readonly maxLineBytes: number;
  #partial: Buffer[] = [];
  #partialBytes = 0;
  #failure: QmpProtocolError | undefined;

  constructor(options: { maxLineBytes?: number } = {}) {
    this.maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  }

  /**
   * Decodes one chunk.
   * @returns the messages this chunk completed, in order; none while a line is still partial. Blank lines are skipped.
   * @throws {QmpProtocolError} a line longer than `maxLineBytes` (detected as soon as the partial line grows past
   *   it, without waiting for its newline) or a line that is not JSON. The decoder is then failed: every later
   *   push throws the same error.
   */
  push(chunk: Uint8Array): unknown[] {
    if (this.#failure) throw this.#failure;
    try {
      const messages: unknown[] = [];
      let start = 0;
      for (let newline = chunk.indexOf(NEWLINE); newline !== -1; newline = chunk.indexOf(NEWLINE, start)) {
        const line = this.#completeLine(chunk.subarray(start, newline));
        start = newline + 1;
        const message = parseLine(line);
        if (message !== undefined) messages.push(message);
      }
      this.#keepPartial(chunk.subarray(start));
      return messages;
    } catch (error) {
      this.#failure = error as QmpProtocolError;
      throw error;
    }
  }

  #completeLine(tail: Uint8Array): Buffer {
    const size = this.#partialBytes + tail.length;
    this.#checkSize(size);
    const line = Buffer.concat([...this.#partial, tail], size);
    this.#partial = [];
    this.#partialBytes = 0;
    return line;
  }

  #keepPartial(rest: Uint8Array): void {
    if (rest.length === 0) return;
    this.#checkSize(this.#partialBytes + rest.length);
    // Copied: the caller may reuse its buffer once push returns.
    this.#partial.push(Buffer.from(rest));
    this.#partialBytes += rest.length;
  }

  #checkSize(size: number): void {
    if (size > this.maxLineBytes) {
      throw new QmpProtocolError(`line longer than ${this.maxLineBytes} bytes (at least ${size})`);
    }
  }
}

function parseLine(line: Buffer): unknown {
  const text = line.toString('utf8');
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new QmpProtocolError(`a line that is not JSON: ${text.slice(0, 200)}`, { cause: error });
  }
}
