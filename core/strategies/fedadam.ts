// FedAdam (Reddi et al. 2021, Algorithm 2): v <- beta2 v + (1 - beta2) D^2.
import type { StrategySpec } from '../job/federated-job.ts';
import { FedOpt } from './fedopt.ts';

export type FedAdamSpec = Extract<StrategySpec, { name: 'fedadam' }>;

export class FedAdam extends FedOpt<FedAdamSpec> {
  protected override secondMoment(v: number, delta2: number): number {
    const beta2 = this.spec.beta2;
    return beta2 * v + (1 - beta2) * delta2;
  }
}
