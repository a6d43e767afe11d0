// The strategies, and the one place that builds one from a job's StrategySpec.
import type { StrategySpec } from '../job/federated-job.ts';
import { FedAdagrad } from './fedadagrad.ts';
import { FedAdam } from './fedadam.ts';
import { FedAvg } from './fedavg.ts';
import { FedAvgM } from './fedavgm.ts';
import { FedProx } from './fedprox.ts';
import { FedYogi } from './fedyogi.ts';
import { Scaffold } from './scaffold.ts';
import type { Strategy, StrategyState } from './strategy.ts';

export type { FitInstructions, RoundAggregate, SiteFitResult, Strategy, StrategyState } from './strategy.ts';
export { FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Scaffold };

/**
 * The strategy a spec names, fresh or resumed from a checkpointed state (which must be of the
 * same strategy and model size). totalSites is the job's N, which SCAFFOLD's server step needs.
 */
export function createStrategy(spec: StrategySpec, modelSize: number, totalSites: number, state?: StrategyState): Strategy {
  switch (spec.name) {
    case 'fedavg':
      return new FedAvg(spec, modelSize, state);
    case 'fedprox':
      return new FedProx(spec, modelSize, state);
    case 'fedavgm':
      return new FedAvgM(spec, modelSize, state);
    case 'fedadam':
      return new FedAdam(spec, modelSize, state);
    case 'fedyogi':
      return new FedYogi(spec, modelSize, state);
    case 'fedadagrad':
      return new FedAdagrad(spec, modelSize, state);
    case 'scaffold':
      return new Scaffold(spec, modelSize, totalSites, state);
    default: {
      const unknown: never = spec;
      throw new RangeError(`unknown strategy ${(unknown as { name: string }).name}`);
    }
  }
}
