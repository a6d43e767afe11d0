// FedProx (Li et al. 2020): FedAvg's server step; the sites add mu/2 ||w - w_global||^2 to
// their loss (see client-terms.ts for the gradient).
import type { StrategySpec } from '../job/federated-job.ts';
import { checkAggregate, checkModelSize, restoreStep, serverStep } from './server-step.ts';
import type { FitInstructions, RoundAggregate, Strategy, StrategyState } from './strategy.ts';

export type FedProxSpec = Extract<StrategySpec, { name: 'fedprox' }>;

export class FedProx implements Strategy {
  readonly spec: FedProxSpec;
  private readonly modelSize: number;
  private step: number;

  constructor(spec: FedProxSpec, modelSize: number, state?: StrategyState) {
    checkModelSize(modelSize);
    this.spec = spec;
    this.modelSize = modelSize;
    this.step = state ? restoreStep(spec, state) : 0;
  }

  configureFit(_round: number): FitInstructions {
    return { proximalMu: this.spec.mu };
  }

  aggregateFit(global: Float32Array, aggregate: RoundAggregate): Float32Array {
    checkAggregate('fedprox', this.modelSize, global, aggregate);
    this.step++;
    return serverStep(global, aggregate.meanDelta, this.spec.serverLearningRate);
  }

  state(): StrategyState {
    return { name: 'fedprox', step: this.step, buffers: {} };
  }
}
