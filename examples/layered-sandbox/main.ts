/**
 * A library author's own 4-stage lineage, built only from evolvm's public building blocks:
 * Booted → ToolsInstalled → DataLoaded → JobConfigured. The data is loaded once; each job configuration is
 * tried from the same warm DataLoaded stage by devolving to it.
 *
 * Run: npx tsx examples/layered-sandbox/main.ts
 */
import { Booted } from './booted.js';
import { configureJob, installTools, loadData } from './transitions.js';

export async function runPipeline(filters: readonly string[], runDir?: string): Promise<Record<string, number>> {
  const booted = await Booted.boot(runDir ? { runDir } : {});
  try {
    let data = await (await booted.evolve(installTools)).evolve(loadData(5_000));
    const counts: Record<string, number> = {};
    for (const filter of filters) {
      const job = await data.evolve(configureJob(filter));
      counts[filter] = await job.run();
      data = await job.devolve(); // back to the loaded data, no reload
    }
    return counts;
  } finally {
    await booted.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const counts = await runPipeline(['row-1', 'row-42', '7']);
  for (const [filter, count] of Object.entries(counts)) console.log(`${filter}: ${count} rows`);
}
