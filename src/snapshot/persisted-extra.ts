import { z } from 'zod';
import { issuesOf, type SnapshotManifest } from './store/manifest.js';
import { SnapshotCorruptError } from './store/store-errors.js';

/**
 * What evolvm keeps in a manifest's `extra`: what a restore needs that the store's schema does not name. Fields
 * added later have defaults (or are optional), so that snapshots made before them still parse.
 */
export const PersistedExtraSchema = z.object({
  cpus: z.number().int().positive(),
  /** Where the device state starts in the vmstate file (after the RAM image). */
  deviceStateOffset: z.number().int().positive(),
  /** Each lineage node's data, root first. */
  lineageData: z.array(z.unknown()),
  /** The read-only maps the guest had (see userMapsFingerprint); absent in snapshots made before maps existed. */
  maps: z.string().max(8192).default(''),
  /** The firmware it booted with (its ROM is in the device state); a restore uses the same. */
  firmware: z.enum(['qboot', 'seabios']).optional(),
  /** The machine's device model (machineOptions); a restore needs the same. Absent in older snapshots. */
  machineOptions: z.string().max(256).default(''),
});
export type PersistedExtra = z.infer<typeof PersistedExtraSchema>;

/**
 * A manifest's `extra` as evolvm wrote it.
 * @throws {SnapshotCorruptError} `manifest-schema`, with each issue's path under `extra.`, when it is not.
 */
export function parsePersistedExtra(manifest: SnapshotManifest): PersistedExtra {
  const result = PersistedExtraSchema.safeParse(manifest.extra ?? {});
  if (result.success) return result.data;
  const issues = issuesOf(result.error).map((issue) => ({ ...issue, path: issue.path ? `extra.${issue.path}` : 'extra' }));
  throw new SnapshotCorruptError(manifest.id, 'manifest-schema', 'manifest.json', issues.map((i) => `${i.path}: ${i.message}`).join('; '), {
    issues,
    cause: result.error,
  });
}
