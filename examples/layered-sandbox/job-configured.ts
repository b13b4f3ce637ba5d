import { ChildStage } from '../../src/index.js';
import type { DataLoaded } from './data-loaded.js';

/** A job is configured and can be run against the loaded data. */
export class JobConfigured extends ChildStage<DataLoaded, { filter: string }> {
  static readonly stageName = 'example.JobConfigured';
  declare private readonly brand: 'JobConfigured';

  /** Runs the job: counts the data rows matching the configured filter. */
  async run(): Promise<number> {
    const result = await this.exec(['/opt/tools/count', this.data.filter, '/srv/data/rows.txt']);
    return Number(result.stdout.trim());
  }
}
