// FedProx (Li et al. 2020): FedAvg's server step; the sites add mu/2 ||w - w_global||^2 to
// their loss (see client-terms.ts for the gradient).
import type { StrategySpec } from '../job/federated-job.ts';
import { AveragingStrategy } from './fedavg.ts';
import type { FitInstructions } from './strategy.ts';

export type FedProxSpec = Extract<StrategySpec, { name: 'fedprox' }>;

export class FedProx extends AveragingStrategy<FedProxSpec> {
  configureFit(_round: number): FitInstructions {
    return { proximalMu: this.spec.mu };
  }
}
