// FedAvgM (Hsu et al. 2019, "Measuring the effects of non-identical data distribution"):
// server momentum v <- beta v + meanDelta; x <- x + lr * v.
import type { StrategySpec } from '../job/federated-job.ts';
import { checkAggregate, checkModelSize, checkRange, restoreBuffer, restoreStep } from './server-step.ts';
import type { FitInstructions, RangeAggregate, RoundAggregate, Strategy, StrategyState } from './strategy.ts';

export type FedAvgMSpec = Extract<StrategySpec, { name: 'fedavgm' }>;

export class FedAvgM implements Strategy {
  readonly spec: FedAvgMSpec;
  private readonly modelSize: number;
  private step: number;
  private readonly momentum: Float64Array;

  constructor(spec: FedAvgMSpec, modelSize: number, state?: StrategyState) {
    checkModelSize(modelSize);
    this.spec = spec;
    this.modelSize = modelSize;
    this.step = state ? restoreStep(spec, state) : 0;
    this.momentum = state ? restoreBuffer(state, 'momentum', modelSize) : new Float64Array(modelSize);
  }

  configureFit(_round: number): FitInstructions {
    return { proximalMu: 0 };
  }

  aggregateFit(global: Float32Array, aggregate: RoundAggregate): Float32Array {
    checkAggregate('fedavgm', this.modelSize, global, aggregate);
    const out = new Float32Array(global.length);
    this.stepRange(out, global, 0, aggregate.meanDelta);
    this.step++;
    return out;
  }

  aggregateFitRange(global: Float32Array, range: RangeAggregate): void {
    checkRange('fedavgm', this.modelSize, global, range);
    this.stepRange(global, global, range.start, range.meanDelta);
  }

  endRangeFit(): void {
    this.step++;
  }

  /** v <- beta v + delta; out <- global + lr v (float64, rounded once) over [start, start + delta.length). */
  private stepRange(out: Float32Array, global: Float32Array, start: number, delta: Float64Array): void {
    const beta = this.spec.momentum;
    const lr = this.spec.serverLearningRate;
    const v = this.momentum;
    for (let i = 0; i < delta.length; i++) {
      const j = start + i;
      v[j] = beta * v[j]! + delta[i]!;
      out[j] = global[j]! + lr * v[j]!;
    }
  }

  state(): StrategyState {
    return { name: 'fedavgm', step: this.step, buffers: { momentum: this.momentum.slice() } };
  }
}
