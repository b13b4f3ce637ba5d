import { describe, expectTypeOf, it } from 'vitest';
import { Booted } from '../../examples/layered-sandbox/booted.js';
import { DataLoaded } from '../../examples/layered-sandbox/data-loaded.js';
import { JobConfigured } from '../../examples/layered-sandbox/job-configured.js';
import { ToolsInstalled } from '../../examples/layered-sandbox/tools-installed.js';
import { configureJob, installTools, loadData } from '../../examples/layered-sandbox/transitions.js';
import { KernelBooted, loadRuntime } from '../../src/index.js';

declare const booted: Booted;
declare const tools: ToolsInstalled;
declare const data: DataLoaded;
declare const job: JobConfigured;

describe("the example's lineage", () => {
  it('evolves and devolves to exactly the neighbouring stages', () => {
    expectTypeOf(booted.evolve(installTools)).toEqualTypeOf<Promise<ToolsInstalled>>();
    expectTypeOf(tools.evolve(loadData(1))).toEqualTypeOf<Promise<DataLoaded>>();
    expectTypeOf(data.evolve(configureJob('x'))).toEqualTypeOf<Promise<JobConfigured>>();
    expectTypeOf(job.devolve()).toEqualTypeOf<Promise<DataLoaded>>();
    expectTypeOf(job.devolveTo(Booted)).toEqualTypeOf<Promise<Booted>>();
    expectTypeOf(job.run()).toEqualTypeOf<Promise<number>>();
  });

  it('refuses what the lineage does not define', () => {
    // @ts-expect-error installTools starts from Booted
    void data.evolve(installTools);
    // @ts-expect-error loadData starts from ToolsInstalled
    void booted.evolve(loadData(1));
    // @ts-expect-error run exists only on JobConfigured
    void data.run();
    // @ts-expect-error Booted is a root
    void booted.devolve();
    // @ts-expect-error the reference lineage's transition does not apply to this one
    void booted.evolve(loadRuntime({ kind: 'shell' }));
    // @ts-expect-error KernelBooted is not an ancestor of JobConfigured
    void job.devolveTo(KernelBooted);
  });
});
