import type { RestoreOptions } from './sandbox.js';

/**
 * Fills in the reference lineage for a cold-boot fallback. Imported on demand: the registry imports the
 * reference stage classes, which import this module.
 */
export async function withReferenceLineage(options: RestoreOptions = {}): Promise<RestoreOptions> {
  if (options.fallback !== 'cold-boot' || options.lineage) return options;
  const { referenceLineage } = await import('../transitions/reference-lineage.js');
  return { ...options, lineage: referenceLineage };
}
