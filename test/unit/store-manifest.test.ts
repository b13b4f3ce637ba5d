import { describe, expect, it } from 'vitest';
import {
  parseManifest,
  parseManifestBytes,
  safeParseManifest,
  serializeManifest,
  SnapshotManifestDraftSchema,
  type SnapshotManifest,
  type SnapshotManifestDraft,
} from '../../src/snapshot/store/manifest.js';
import { SnapshotCorruptError, SnapshotIncompatibleError } from '../../src/snapshot/store/store-errors.js';
import type { HostFunctionSignature } from '../../src/host/host-functions.js';
import { draft } from './store-helpers.js';

const HASH = 'a'.repeat(64);

function valid(): SnapshotManifest {
  return {
    formatVersion: 1,
    id: '0f8fad5b-d9cb-469f-a165-70867728950e',
    name: 'base',
    createdAt: '2025-01-15T10:20:30.456Z',
    ...draft(),
    files: { vmstate: { path: 'vmstate', size: 10, sha256: HASH }, disk: { path: 'disk', size: 0, sha256: HASH } },
  } as SnapshotManifest;
}

/** Sets a dotted path on a deep copy of a valid manifest. */
function withField(path: string, value: unknown): unknown {
  const copy = structuredClone(valid()) as unknown as Record<string, unknown>;
  const keys = path.split('.');
  let at: Record<string, unknown> = copy;
  for (const key of keys.slice(0, -1)) at = at[key] as Record<string, unknown>;
  if (value === undefined) delete at[keys.at(-1)!];
  else at[keys.at(-1)!] = value;
  return copy;
}

function corruptionOf(input: unknown): SnapshotCorruptError {
  const result = safeParseManifest(input, 'snap');
  expect(result.success).toBe(false);
  if (result.success) throw new Error('unreachable');
  expect(result.error).toBeInstanceOf(SnapshotCorruptError);
  return result.error as SnapshotCorruptError;
}

describe('SnapshotManifestSchema', () => {
  it('accepts a valid manifest and serialises it to bytes that parse back equal', () => {
    const manifest = parseManifest(valid());
    expect(parseManifestBytes(serializeManifest(manifest))).toEqual(manifest);
  });

  const bad: Array<[string, unknown]> = [
    ['id', '../escape'],
    ['id', '.staging-x'],
    ['name', 'has/slash'],
    ['name', '..'],
    ['name', 'x'.repeat(129)],
    ['name', ''],
    ['createdAt', 'yesterday'],
    ['stage.name', ''],
    ['stage.lineage.1.transition', 42],
    ['stage.lineage.1.stage', undefined],
    ['parent', 'not an id!'],
    ['qemu.version', ''],
    ['qemu.machine', undefined],
    ['guest.imageHash', 7],
    ['memoryMiB', 0],
    ['memoryMiB', 1.5],
    ['hostFunctions.0.name', ''],
    ['files.vmstate.path', '../vmstate'],
    ['files.vmstate.path', 'dir/vmstate'],
    ['files.disk.path', '.hidden'],
    ['files.disk.size', -1],
    ['files.disk.sha256', 'ABC'],
    ['files.vmstate.sha256', 'A'.repeat(64)],
    ['files.disk', undefined],
    ['extra', 'not a record'],
  ];
  for (const [path, value] of bad) {
    it(`names the field ${path} when it is ${JSON.stringify(value)?.slice(0, 20)}`, () => {
      const error = corruptionOf(withField(path, value));
      expect(error.code).toBe('SNAPSHOT_CORRUPT');
      expect(error.reason).toBe('manifest-schema');
      expect(error.issues.map((i) => i.path)).toContain(path);
      expect(error.message).toContain(path);
    });
  }

  it('names an unknown top-level field by its own path', () => {
    const error = corruptionOf({ ...valid(), surprise: true });
    expect(error.field).toBe('surprise');
  });

  it('refuses a snapshot that is its own parent', () => {
    const manifest = valid();
    expect(corruptionOf({ ...manifest, parent: manifest.id }).field).toBe('parent');
  });

  it('refuses opaque values that would not survive JSON, naming where', () => {
    const error = corruptionOf(withField('stage.lineage.1.args', { when: new Date(0) }));
    expect(error.field).toBe('stage.lineage.1.args');
    expect(error.message).toContain('.when');
    expect(corruptionOf(withField('hostFunctions.0.params', Number.NaN)).field).toBe('hostFunctions.0.params');
    expect(corruptionOf(withField('extra', { fn: () => 1 })).field).toBe('extra.fn');
  });

  it('keeps extra keys of a host function signature (such as wasm)', () => {
    const manifest = parseManifest(withField('hostFunctions.0.wasm', { params: ['i32'], results: [] }));
    expect(manifest.hostFunctions[0]).toMatchObject({ wasm: { params: ['i32'], results: [] } });
  });

  it('reports a newer format version as incompatible, not corrupt', () => {
    const result = safeParseManifest({ ...valid(), formatVersion: 2, somethingNew: 1 }, 'snap');
    expect(result.success).toBe(false);
    expect(!result.success && result.error).toBeInstanceOf(SnapshotIncompatibleError);
    expect(!result.success && result.error.code).toBe('SNAPSHOT_INCOMPATIBLE');
  });

  it('reports a non-numeric format version as corrupt, naming formatVersion', () => {
    expect(corruptionOf({ ...valid(), formatVersion: '1' }).field).toBe('formatVersion');
  });

  it('refuses bad JSON, invalid UTF-8 and oversized bytes with distinct reasons', () => {
    const reasonOf = (bytes: Uint8Array): string => {
      try {
        parseManifestBytes(bytes, 'snap');
      } catch (error) {
        expect(error).toBeInstanceOf(SnapshotCorruptError);
        return (error as SnapshotCorruptError).reason;
      }
      throw new Error('expected a refusal');
    };
    expect(reasonOf(new TextEncoder().encode('{"formatVersion": 1,'))).toBe('manifest-json');
    expect(reasonOf(new Uint8Array([0x7b, 0xff, 0x7d]))).toBe('manifest-json');
    expect(reasonOf(new Uint8Array(1024 * 1024 + 1).fill(0x20))).toBe('manifest-too-large');
  });

  it('takes the read-only host function signatures of a sandbox as they are (type and value)', () => {
    const signatures: readonly HostFunctionSignature[] = [{ name: 'log', params: { type: 'array' }, result: { type: 'null' }, wasm: { params: ['i32'], results: [] } }];
    const typed: SnapshotManifestDraft = { ...draft(), hostFunctions: signatures };
    expect(SnapshotManifestDraftSchema.parse(typed).hostFunctions).toEqual(signatures);
  });

  it('takes drafts without the store-filled fields and refuses those fields in a draft', () => {
    expect(SnapshotManifestDraftSchema.safeParse(draft()).success).toBe(true);
    const result = SnapshotManifestDraftSchema.safeParse({ ...draft(), id: 'chosen-by-writer' });
    expect(result.success).toBe(false);
  });
});
