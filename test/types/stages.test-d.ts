import { describe, expectTypeOf, it } from 'vitest';
import { ChildStage, defineTransition, KernelBooted, loadCode, loadRuntime, RootStage, RuntimeLoaded, UserCodeLoaded } from '../../src/index.js';

// Another lineage of the same shape: nominal brands must keep the two apart.
class OtherRoot extends RootStage {
  static readonly stageName = 'OtherRoot';
  declare private readonly brand: 'OtherRoot';
}
class OtherChild extends ChildStage<OtherRoot> {
  static readonly stageName = 'OtherChild';
  declare private readonly brand: 'OtherChild';
}
const otherStep = defineTransition({ name: 'otherStep', from: OtherRoot, to: OtherChild, run: async () => undefined });

declare const booted: KernelBooted;
declare const runtime: RuntimeLoaded;
declare const code: UserCodeLoaded;

describe('legal transitions return exactly the next stage', () => {
  it('evolve', () => {
    expectTypeOf(booted.evolve(loadRuntime({ kind: 'shell' }))).toEqualTypeOf<Promise<RuntimeLoaded>>();
    expectTypeOf(runtime.evolve(loadCode('f() { :; }'))).toEqualTypeOf<Promise<UserCodeLoaded>>();
  });
  it('devolve', () => {
    expectTypeOf(runtime.devolve()).toEqualTypeOf<Promise<KernelBooted>>();
    expectTypeOf(code.devolve()).toEqualTypeOf<Promise<RuntimeLoaded>>();
    expectTypeOf(code.devolveTo(KernelBooted)).toEqualTypeOf<Promise<KernelBooted>>();
    expectTypeOf(code.devolveTo(RuntimeLoaded)).toEqualTypeOf<Promise<RuntimeLoaded>>();
  });
  it('call exists on UserCodeLoaded', () => {
    expectTypeOf(code.call('f')).toEqualTypeOf<Promise<unknown>>();
    expectTypeOf(code.call<number>('f', 1, 2n)).toEqualTypeOf<Promise<number>>();
  });
});

describe('illegal uses do not compile', () => {
  it('devolve on the root', () => {
    // @ts-expect-error KernelBooted has no parent
    void booted.devolve();
    // @ts-expect-error KernelBooted has no ancestors
    void booted.devolveTo(KernelBooted);
  });
  it('loadRuntime on RuntimeLoaded', () => {
    // @ts-expect-error loadRuntime starts from KernelBooted
    void runtime.evolve(loadRuntime({ kind: 'shell' }));
  });
  it('loadCode on KernelBooted', () => {
    // @ts-expect-error loadCode starts from RuntimeLoaded
    void booted.evolve(loadCode('f() { :; }'));
  });
  it('loadCode on UserCodeLoaded', () => {
    // @ts-expect-error loadCode starts from RuntimeLoaded
    void code.evolve(loadCode('g() { :; }'));
  });
  it('call on RuntimeLoaded', () => {
    // @ts-expect-error only UserCodeLoaded can call
    void runtime.call('f');
  });
  it('a transition from another lineage', () => {
    // @ts-expect-error otherStep starts from OtherRoot
    void booted.evolve(otherStep);
  });
  it('devolveTo a stage that is not an ancestor', () => {
    // @ts-expect-error UserCodeLoaded is below RuntimeLoaded, not above it
    void runtime.devolveTo(UserCodeLoaded);
    // @ts-expect-error OtherRoot is in another lineage
    void code.devolveTo(OtherRoot);
  });
  it('constructing a stage directly', () => {
    // @ts-expect-error stages come from boot, evolve and devolve
    void new KernelBooted({} as never);
  });
  it('a transition whose run returns the wrong data', () => {
    // @ts-expect-error RuntimeLoaded's data is RuntimeInfo
    defineTransition({ name: 'bad', from: KernelBooted, to: RuntimeLoaded, run: async () => 'nope' });
  });
});

describe('restoring from a snapshot returns the class it is called on', () => {
  it('fromSnapshot and fork', () => {
    const store = {} as import('../../src/index.js').SnapshotStore;
    expectTypeOf(RuntimeLoaded.fromSnapshot(store, 'x')).toEqualTypeOf<Promise<RuntimeLoaded>>();
    expectTypeOf(UserCodeLoaded.fork(store, 'x', 2)).toEqualTypeOf<Promise<UserCodeLoaded[]>>();
    expectTypeOf(OtherChild.fromSnapshot(store, 'x')).toEqualTypeOf<Promise<OtherChild>>();
  });
});
