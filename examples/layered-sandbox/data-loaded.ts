import { ChildStage } from '../../src/index.js';
import type { ToolsInstalled } from './tools-installed.js';

/** A data set is loaded into /srv/data. */
export class DataLoaded extends ChildStage<ToolsInstalled, { rows: number }> {
  static readonly stageName = 'example.DataLoaded';
  declare private readonly brand: 'DataLoaded';

  get rows(): number {
    return this.data.rows;
  }
}
