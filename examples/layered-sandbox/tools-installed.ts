import { ChildStage } from '../../src/index.js';
import type { Booted } from './booted.js';

/** Tools are installed in /opt/tools. */
export class ToolsInstalled extends ChildStage<Booted, { tools: readonly string[] }> {
  static readonly stageName = 'example.ToolsInstalled';
  declare private readonly brand: 'ToolsInstalled';

  get tools(): readonly string[] {
    return this.data.tools;
  }
}
