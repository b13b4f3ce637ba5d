import { GuestOperationError } from '../errors.js';
import type { Transition } from '../transitions/transition.js';
import type { RootStage, Stage, StageClass } from './stage.js';

/**
 * What a cold-boot fallback needs to rebuild a stage from its recorded lineage: the stage classes by name (the
 * root is booted) and a factory per transition name that turns recorded arguments back into a transition.
 */
export interface LineageRegistry {
  readonly stages: readonly StageClass[];
  readonly transitions: Readonly<Record<string, (args: unknown) => Transition<Stage, Stage>>>;
}

/** Finds a stage class by its `stageName`. */
export function stageByName(registry: LineageRegistry, name: string): StageClass | undefined {
  return registry.stages.find((stage) => stage.stageName === name);
}

/** Finds a root stage class by its `stageName`. */
export function rootByName(registry: LineageRegistry, name: string): StageClass<RootStage<unknown>> | undefined {
  return stageByName(registry, name) as StageClass<RootStage<unknown>> | undefined;
}

/**
 * Rebuilds a transition from its recorded name and arguments.
 * @throws {GuestOperationError} `NOT_REPLAYABLE` when the registry has no factory for it.
 */
export function replayTransition(registry: LineageRegistry, name: string, args: unknown): Transition<Stage, Stage> {
  const factory = registry.transitions[name];
  if (!factory) throw new GuestOperationError('replay', 'NOT_REPLAYABLE', `no factory for transition ${name}`);
  return factory(args);
}
