// FedAdagrad (Reddi et al. 2021, Algorithm 2): v <- v + D^2 (beta2 is not used).
import type { StrategySpec } from '../job/federated-job.ts';
import { FedOpt } from './fedopt.ts';

export type FedAdagradSpec = Extract<StrategySpec, { name: 'fedadagrad' }>;

export class FedAdagrad extends FedOpt<FedAdagradSpec> {
  protected override secondMoment(v: number, delta2: number): number {
    return v + delta2;
  }
}
