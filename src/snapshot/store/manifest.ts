import { z } from 'zod';
import { SnapshotCorruptError, SnapshotIncompatibleError, type ManifestIssue } from './store-errors.js';

/** The manifest format this code writes. A reader refuses any other version with `SNAPSHOT_INCOMPATIBLE`. */
export const MANIFEST_FORMAT_VERSION = 1;
/** The manifest format versions this code reads. */
export const SUPPORTED_FORMAT_VERSIONS: readonly number[] = [1];
/** Bound on manifest.json: a manifest is small metadata, so anything larger is damage or an attack. */
export const MAX_MANIFEST_BYTES = 1024 * 1024;

/** A user's snapshot name: unique in a store. `.` and `..` are refused because a name is also a file name. */
export const SNAPSHOT_NAME_PATTERN = /^(?!\.{1,2}$)[A-Za-z0-9._-]{1,128}$/;
/** A snapshot id (a directory name). Never starts with `.`, so it never collides with `.staging-*` or `.trash-*`. */
export const SNAPSHOT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
/** A file inside a snapshot directory: a plain, non-hidden file name with no directory part. */
const FILE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** The two files every snapshot carries. */
export const SNAPSHOT_FILE_KINDS = ['vmstate', 'disk'] as const;
export type SnapshotFileKind = (typeof SNAPSHOT_FILE_KINDS)[number];

/** An opaque value that must survive a JSON round trip unchanged (so that what was stored is what is read). */
const JsonValue = z.unknown().check(
  z.superRefine((value, ctx) => {
    const problem = jsonProblem(value, '', 0, new Set());
    if (problem) ctx.addIssue({ code: 'custom', message: `must be plain JSON: ${problem}`, input: value });
  }),
);

export const SnapshotIdSchema = z.string().regex(SNAPSHOT_ID_PATTERN, 'must be 1-64 of [A-Za-z0-9_-], not starting with - or _');
export const SnapshotNameSchema = z.string().regex(SNAPSHOT_NAME_PATTERN, 'must be 1-128 of [A-Za-z0-9._-], not . or ..');

const SnapshotFileSchema = z.strictObject({
  /** Relative to the snapshot directory: a plain file name. */
  path: z.string().regex(FILE_NAME_PATTERN, 'must be a plain file name (no directory part, not hidden)'),
  size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits'),
});

const LineageEntrySchema = z.strictObject({
  /** The stage's stable name (`RuntimeLoaded`). */
  stage: z.string().min(1).max(256),
  /** The transition that entered this stage; null for the root (entered by booting). */
  transition: z.string().min(1).max(256).nullable(),
  /** The transition's recorded arguments. */
  args: JsonValue,
});

/** A host function's signature, opaque to the store; extra keys (such as `wasm`) are kept. */
const HostFunctionSignatureSchema = z
  .object({ name: z.string().min(1).max(256), params: JsonValue, result: JsonValue })
  .catchall(JsonValue);

/**
 * manifest.json, format version 1. Strict: an unknown key is damage (or a newer writer, which must bump
 * `formatVersion`); extensions go in `extra`.
 */
const ManifestObjectSchema = z.strictObject({
  formatVersion: z.literal(MANIFEST_FORMAT_VERSION),
  /** Store-assigned; the name of the snapshot's directory. */
  id: SnapshotIdSchema,
  /** The user's name, unique in the store. */
  name: SnapshotNameSchema,
  createdAt: z.iso.datetime({ offset: true }),
  stage: z.strictObject({
    name: z.string().min(1).max(256),
    /** Root first, this stage last. */
    lineage: z.array(LineageEntrySchema).max(1024),
  }),
  /** The snapshot whose disk layer backs this one's disk layer; null for a base layer. */
  parent: SnapshotIdSchema.nullable(),
  qemu: z.strictObject({ version: z.string().min(1).max(256), machine: z.string().min(1).max(256) }),
  guest: z.strictObject({ imageHash: z.string().min(1).max(256) }),
  memoryMiB: z.number().int().positive().max(1024 * 1024),
  hostFunctions: z.array(HostFunctionSignatureSchema).max(4096),
  files: z.strictObject({ vmstate: SnapshotFileSchema, disk: SnapshotFileSchema }),
  extra: z.record(z.string(), JsonValue).optional(),
});

export const SnapshotManifestSchema = ManifestObjectSchema.refine((m) => m.parent !== m.id, {
  path: ['parent'],
  message: 'a snapshot cannot be its own parent',
});

export type SnapshotManifest = z.output<typeof SnapshotManifestSchema>;
export type SnapshotFileEntry = SnapshotManifest['files'][SnapshotFileKind];

/**
 * What a writer hands to `SnapshotStore.create`: the manifest without the fields the store fills in
 * (`formatVersion`, `id`, `name`, `createdAt`, and `files` with their sizes and hashes).
 */
export const SnapshotManifestDraftSchema = ManifestObjectSchema.omit({
  formatVersion: true,
  id: true,
  name: true,
  createdAt: true,
  files: true,
});
/**
 * The draft's type, written out so that read-only arrays and interfaces (such as `HostFunctionSignature`)
 * are accepted as they are; {@link SnapshotManifestDraftSchema} checks it at run time.
 */
export interface SnapshotManifestDraft {
  readonly stage: {
    readonly name: string;
    readonly lineage: ReadonlyArray<{ readonly stage: string; readonly transition: string | null; readonly args: unknown }>;
  };
  readonly parent: string | null;
  readonly qemu: { readonly version: string; readonly machine: string };
  readonly guest: { readonly imageHash: string };
  readonly memoryMiB: number;
  readonly hostFunctions: ReadonlyArray<{ readonly name: string; readonly params: unknown; readonly result: unknown }>;
  readonly extra?: Readonly<Record<string, unknown>>;
}

export type ManifestParseResult =
  | { success: true; data: SnapshotManifest }
  | { success: false; error: SnapshotCorruptError | SnapshotIncompatibleError };

/**
 * Validates a decoded manifest. `snapshot` names it in errors (its id or directory).
 * An integer `formatVersion` other than 1 is `SNAPSHOT_INCOMPATIBLE`, not corruption, so an old evolvm
 * can tell a newer store from a damaged one.
 */
export function safeParseManifest(input: unknown, snapshot = 'manifest'): ManifestParseResult {
  if (isRecord(input) && Number.isInteger(input.formatVersion) && !SUPPORTED_FORMAT_VERSIONS.includes(input.formatVersion as number)) {
    return { success: false, error: new SnapshotIncompatibleError(snapshot, input.formatVersion, SUPPORTED_FORMAT_VERSIONS) };
  }
  const result = SnapshotManifestSchema.safeParse(input);
  if (result.success) return { success: true, data: result.data };
  const issues = issuesOf(result.error);
  return {
    success: false,
    error: new SnapshotCorruptError(snapshot, 'manifest-schema', 'manifest.json', issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; '), {
      issues,
      cause: result.error,
    }),
  };
}

/**
 * Validates a decoded manifest.
 * @throws {SnapshotCorruptError} `manifest-schema`, with `issues[].path` naming each bad field.
 * @throws {SnapshotIncompatibleError} for a format version this code does not read.
 */
export function parseManifest(input: unknown, snapshot = 'manifest'): SnapshotManifest {
  const result = safeParseManifest(input, snapshot);
  if (!result.success) throw result.error;
  return result.data;
}

/**
 * Decodes manifest.json bytes (strict UTF-8, bounded) and validates them.
 * @throws {SnapshotCorruptError} `manifest-too-large`, `manifest-json` or `manifest-schema`.
 * @throws {SnapshotIncompatibleError}
 */
export function parseManifestBytes(bytes: Uint8Array, snapshot = 'manifest'): SnapshotManifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw new SnapshotCorruptError(snapshot, 'manifest-too-large', 'manifest.json', `larger than ${MAX_MANIFEST_BYTES} bytes`);
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (error) {
    throw new SnapshotCorruptError(snapshot, 'manifest-json', 'manifest.json', (error as Error).message, { cause: error });
  }
  return parseManifest(value, snapshot);
}

/** The exact bytes the store writes for a manifest (stable key order as given, 2-space indent, final newline). */
export function serializeManifest(manifest: SnapshotManifest): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(manifest, null, 2)}\n`);
}

/** Maps zod issues to dotted paths; an unknown key gets its own path so the message names it. */
export function issuesOf(error: z.ZodError): ManifestIssue[] {
  return error.issues.flatMap((issue) => {
    const path = issue.path.map(String);
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => ({ path: [...path, key].join('.'), message: 'unknown field' }));
    }
    return [{ path: path.join('.'), message: issue.message }];
  });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Why `value` would not survive JSON.stringify → JSON.parse unchanged, or null when it would. */
function jsonProblem(value: unknown, at: string, depth: number, seen: Set<object>): string | null {
  if (depth > 64) return `nested deeper than 64 at ${at || '(root)'}`;
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return null;
    case 'number':
      return Number.isFinite(value) ? null : `${value} at ${at || '(root)'}`;
    case 'undefined':
      return depth === 0 ? null : `undefined at ${at}`;
    case 'object': {
      if (value === null) return null;
      if (seen.has(value)) return `a cycle at ${at || '(root)'}`;
      seen.add(value);
      try {
        if (Array.isArray(value)) {
          for (let i = 0; i < value.length; i++) {
            const problem = jsonProblem(value[i], `${at}[${i}]`, depth + 1, seen);
            if (problem) return problem;
          }
          return null;
        }
        const proto = Object.getPrototypeOf(value) as unknown;
        if (proto !== Object.prototype && proto !== null) return `a non-plain object at ${at || '(root)'}`;
        for (const [key, child] of Object.entries(value)) {
          const problem = jsonProblem(child, `${at}.${key}`, depth + 1, seen);
          if (problem) return problem;
        }
        return null;
      } finally {
        seen.delete(value);
      }
    }
    default:
      return `a ${typeof value} at ${at || '(root)'}`;
  }
}
