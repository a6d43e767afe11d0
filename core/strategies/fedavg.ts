// FedAvg (McMahan et al. 2017), with a server learning rate: x <- x + lr * meanDelta. FedProx
// (Li et al. 2020) shares this server step; only what it tells the sites differs (fedprox.ts).
import type { StrategySpec } from '../job/federated-job.ts';
import { checkAggregate, checkModelSize, checkRange, restoreStep, serverStep, serverStepInto } from './server-step.ts';
import type { FitInstructions, RangeAggregate, RoundAggregate, Strategy, StrategyState } from './strategy.ts';

export type FedAvgSpec = Extract<StrategySpec, { name: 'fedavg' }>;
type AveragingSpec = Extract<StrategySpec, { name: 'fedavg' | 'fedprox' }>;

/** The plain averaging server step, whichever local objective the sites use. */
export abstract class AveragingStrategy<S extends AveragingSpec> implements Strategy {
  readonly spec: S;
  private readonly modelSize: number;
  private step: number;

  constructor(spec: S, modelSize: number, state?: StrategyState) {
    checkModelSize(modelSize);
    this.spec = spec;
    this.modelSize = modelSize;
    this.step = state ? restoreStep(spec, state) : 0;
  }

  abstract configureFit(round: number): FitInstructions;

  aggregateFit(global: Float32Array, aggregate: RoundAggregate): Float32Array {
    checkAggregate(this.spec.name, this.modelSize, global, aggregate);
    this.step++;
    return serverStep(global, aggregate.meanDelta, this.spec.serverLearningRate);
  }

  aggregateFitRange(global: Float32Array, range: RangeAggregate): void {
    checkRange(this.spec.name, this.modelSize, global, range);
    serverStepInto(global, global, range.start, range.meanDelta, this.spec.serverLearningRate);
  }

  endRangeFit(): void {
    this.step++;
  }

  state(): StrategyState {
    return { name: this.spec.name, step: this.step, buffers: {} };
  }
}

export class FedAvg extends AveragingStrategy<FedAvgSpec> {
  configureFit(_round: number): FitInstructions {
    return { proximalMu: 0 };
  }
}
