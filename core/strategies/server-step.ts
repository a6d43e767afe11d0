// What every server strategy shares: shape checks, state restore, and the float64 step that is
// rounded to float32 once.
import type { StrategySpec } from '../job/federated-job.ts';
import type { RangeAggregate, RoundAggregate, StrategyState } from './strategy.ts';

export function checkAggregate(name: string, modelSize: number, global: Float32Array, aggregate: RoundAggregate): void {
  if (global.length !== modelSize) {
    throw new RangeError(`${name}: global model has ${global.length} values, expected ${modelSize}`);
  }
  if (aggregate.meanDelta.length !== modelSize) {
    throw new RangeError(`${name}: meanDelta has ${aggregate.meanDelta.length} values, expected ${modelSize}`);
  }
}

/** A range of an aggregate that fits the model (and carries the control means the strategy needs). */
export function checkRange(name: string, modelSize: number, global: Float32Array, range: RangeAggregate, control = false): void {
  if (global.length !== modelSize) {
    throw new RangeError(`${name}: global model has ${global.length} values, expected ${modelSize}`);
  }
  const { start, meanDelta, meanControlDelta } = range;
  if (!Number.isSafeInteger(start) || start < 0 || start + meanDelta.length > modelSize) {
    throw new RangeError(`${name}: range [${start}, ${start + meanDelta.length}) is outside the model's ${modelSize} values`);
  }
  if (control && meanControlDelta?.length !== meanDelta.length) {
    throw new RangeError(`${name}: meanControlDelta is missing or does not have the range's ${meanDelta.length} values`);
  }
}

/** x + lr * direction, computed in float64 and rounded to float32 once. */
export function serverStep(global: Float32Array, direction: Float64Array, lr: number): Float32Array {
  const out = new Float32Array(global.length);
  serverStepInto(out, global, 0, direction, lr);
  return out;
}

/** serverStep over [start, start + direction.length), into `out` (which may be `global`). */
export function serverStepInto(out: Float32Array, global: Float32Array, start: number, direction: Float64Array, lr: number): void {
  for (let i = 0; i < direction.length; i++) out[start + i] = global[start + i]! + lr * direction[i]!;
}

/** Validates a checkpointed state against the strategy and returns its step. */
export function restoreStep(spec: StrategySpec, state: StrategyState): number {
  if (state.name !== spec.name) throw new RangeError(`state of "${state.name}" cannot restore "${spec.name}"`);
  if (!Number.isSafeInteger(state.step) || state.step < 0) throw new RangeError(`${spec.name}: bad step ${state.step}`);
  return state.step;
}

/** A copy of a checkpointed buffer, checked for length. */
export function restoreBuffer(state: StrategyState, key: string, size: number): Float64Array {
  const buf = state.buffers[key];
  if (!buf || buf.length !== size) {
    throw new RangeError(`${state.name}: state buffer "${key}" is missing or does not have ${size} values`);
  }
  return buf.slice();
}

export function checkModelSize(modelSize: number): void {
  if (!Number.isSafeInteger(modelSize) || modelSize < 0) throw new RangeError(`bad model size ${modelSize}`);
}
