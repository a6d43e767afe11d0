// FedAvg (McMahan et al. 2017), with a server learning rate: x <- x + lr * meanDelta.
import type { StrategySpec } from '../job/federated-job.ts';
import { checkAggregate, checkModelSize, restoreStep, serverStep } from './server-step.ts';
import type { FitInstructions, RoundAggregate, Strategy, StrategyState } from './strategy.ts';

export type FedAvgSpec = Extract<StrategySpec, { name: 'fedavg' }>;

export class FedAvg implements Strategy {
  readonly spec: FedAvgSpec;
  private readonly modelSize: number;
  private step: number;

  constructor(spec: FedAvgSpec, modelSize: number, state?: StrategyState) {
    checkModelSize(modelSize);
    this.spec = spec;
    this.modelSize = modelSize;
    this.step = state ? restoreStep(spec, state) : 0;
  }

  configureFit(_round: number): FitInstructions {
    return { proximalMu: 0 };
  }

  aggregateFit(global: Float32Array, aggregate: RoundAggregate): Float32Array {
    checkAggregate('fedavg', this.modelSize, global, aggregate);
    this.step++;
    return serverStep(global, aggregate.meanDelta, this.spec.serverLearningRate);
  }

  state(): StrategyState {
    return { name: 'fedavg', step: this.step, buffers: {} };
  }
}
