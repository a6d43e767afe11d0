// The adaptive server optimizers of Reddi et al. 2021 ("Adaptive Federated Optimization",
// Algorithm 2, no bias correction), which differ only in the second-moment update:
//   m <- beta1 m + (1 - beta1) D;   v <- secondMoment(v, D^2);   x <- x + lr m / (sqrt(v) + tau)
// with m = 0 and v = tau^2 at the start (the paper's v_{-1} >= tau^2).
import type { StrategySpec } from '../job/federated-job.ts';
import { checkAggregate, checkModelSize, checkRange, restoreBuffer, restoreStep } from './server-step.ts';
import type { FitInstructions, RangeAggregate, RoundAggregate, Strategy, StrategyState } from './strategy.ts';

export type FedOptSpec = Extract<StrategySpec, { name: 'fedadam' | 'fedyogi' | 'fedadagrad' }>;

export abstract class FedOpt<S extends FedOptSpec> implements Strategy {
  readonly spec: S;
  private readonly modelSize: number;
  private step: number;
  private readonly m: Float64Array;
  private readonly v: Float64Array;

  constructor(spec: S, modelSize: number, state?: StrategyState) {
    checkModelSize(modelSize);
    this.spec = spec;
    this.modelSize = modelSize;
    this.step = state ? restoreStep(spec, state) : 0;
    this.m = state ? restoreBuffer(state, 'm', modelSize) : new Float64Array(modelSize);
    this.v = state ? restoreBuffer(state, 'v', modelSize) : new Float64Array(modelSize).fill(spec.tau * spec.tau);
  }

  /** The new second moment of one coordinate from the old one and the squared mean delta. */
  protected abstract secondMoment(v: number, delta2: number): number;

  configureFit(_round: number): FitInstructions {
    return { proximalMu: 0 };
  }

  aggregateFit(global: Float32Array, aggregate: RoundAggregate): Float32Array {
    checkAggregate(this.spec.name, this.modelSize, global, aggregate);
    const out = new Float32Array(global.length);
    this.stepRange(out, global, 0, aggregate.meanDelta);
    this.step++;
    return out;
  }

  aggregateFitRange(global: Float32Array, range: RangeAggregate): void {
    checkRange(this.spec.name, this.modelSize, global, range);
    this.stepRange(global, global, range.start, range.meanDelta);
  }

  endRangeFit(): void {
    this.step++;
  }

  /** The step over [start, start + delta.length), into `out` (which may be `global`). */
  private stepRange(out: Float32Array, global: Float32Array, start: number, delta: Float64Array): void {
    const { beta1, tau, serverLearningRate: lr } = this.spec;
    const { m, v } = this;
    for (let i = 0; i < delta.length; i++) {
      const j = start + i;
      const d = delta[i]!;
      const mi = beta1 * m[j]! + (1 - beta1) * d;
      const vi = this.secondMoment(v[j]!, d * d);
      m[j] = mi;
      v[j] = vi;
      out[j] = global[j]! + (lr * mi) / (Math.sqrt(vi) + tau);
    }
  }

  state(): StrategyState {
    return { name: this.spec.name, step: this.step, buffers: { m: this.m.slice(), v: this.v.slice() } };
  }
}
