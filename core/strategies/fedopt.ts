// The adaptive server optimizers of Reddi et al. 2021 ("Adaptive Federated Optimization",
// Algorithm 2, no bias correction), which differ only in the second-moment update:
//   m <- beta1 m + (1 - beta1) D;   v <- secondMoment(v, D^2);   x <- x + lr m / (sqrt(v) + tau)
// with m = 0 and v = tau^2 at the start (the paper's v_{-1} >= tau^2).
import type { StrategySpec } from '../job/federated-job.ts';
import { checkAggregate, checkModelSize, restoreBuffer, restoreStep } from './server-step.ts';
import type { FitInstructions, RoundAggregate, Strategy, StrategyState } from './strategy.ts';

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
    const { beta1, tau, serverLearningRate: lr } = this.spec;
    const { m, v } = this;
    const delta = aggregate.meanDelta;
    const out = new Float32Array(global.length);
    for (let i = 0; i < out.length; i++) {
      const d = delta[i]!;
      const mi = beta1 * m[i]! + (1 - beta1) * d;
      const vi = this.secondMoment(v[i]!, d * d);
      m[i] = mi;
      v[i] = vi;
      out[i] = global[i]! + (lr * mi) / (Math.sqrt(vi) + tau);
    }
    this.step++;
    return out;
  }

  state(): StrategyState {
    return { name: this.spec.name, step: this.step, buffers: { m: this.m.slice(), v: this.v.slice() } };
  }
}
