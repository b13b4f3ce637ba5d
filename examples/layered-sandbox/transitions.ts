import { defineTransition, GuestOperationError } from '../../src/index.js';
import { Booted } from './booted.js';
import { DataLoaded } from './data-loaded.js';
import { JobConfigured } from './job-configured.js';
import { ToolsInstalled } from './tools-installed.js';

/** Installs a tiny tool set: a script that counts lines matching a pattern. */
export const installTools = defineTransition({
  name: 'installTools',
  from: Booted,
  to: ToolsInstalled,
  run: async ({ guest }) => {
    await guest.writeFile('/opt/tools/count', '#!/bin/sh\ngrep -c -- "$1" "$2" || true\n', { mkdirs: true, mode: 0o755 });
    return { tools: ['count'] };
  },
});

/** Loads `rows` generated rows of data. */
export const loadData = (rows: number) =>
  defineTransition({
    name: 'loadData',
    from: ToolsInstalled,
    to: DataLoaded,
    args: { rows },
    run: async ({ guest }) => {
      const result = await guest.exec(['sh', '-c', `mkdir -p /srv/data && seq 1 ${rows} | sed 's/^/row-/' > /srv/data/rows.txt && wc -l < /srv/data/rows.txt`]);
      const loaded = Number(result.stdout.trim());
      if (loaded !== rows) throw new GuestOperationError('loadData', 'SHORT', `loaded ${loaded} of ${rows} rows`);
      return { rows };
    },
  });

/** Configures the job's filter. */
export const configureJob = (filter: string) =>
  defineTransition({
    name: 'configureJob',
    from: DataLoaded,
    to: JobConfigured,
    args: { filter },
    run: async ({ guest }) => {
      await guest.writeFile('/srv/job.conf', `filter=${filter}\n`);
      return { filter };
    },
  });
