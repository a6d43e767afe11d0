// FedAvgM (Hsu et al. 2019, "Measuring the effects of non-identical data distribution"):
// server momentum v <- beta v + meanDelta; x <- x + lr * v.
import type { StrategySpec } from '../job/federated-job.ts';
import { checkAggregate, checkModelSize, restoreBuffer, restoreStep, serverStep } from './server-step.ts';
import type { FitInstructions, RoundAggregate, Strategy, StrategyState } from './strategy.ts';

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
    const beta = this.spec.momentum;
    const v = this.momentum;
    const delta = aggregate.meanDelta;
    for (let i = 0; i < v.length; i++) v[i] = beta * v[i]! + delta[i]!;
    this.step++;
    return serverStep(global, v, this.spec.serverLearningRate);
  }

  state(): StrategyState {
    return { name: 'fedavgm', step: this.step, buffers: { momentum: this.momentum.slice() } };
  }
}
