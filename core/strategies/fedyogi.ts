// FedYogi (Reddi et al. 2021, Algorithm 2): v <- v - (1 - beta2) D^2 sign(v - D^2).
import type { StrategySpec } from '../job/federated-job.ts';
import { FedOpt } from './fedopt.ts';

export type FedYogiSpec = Extract<StrategySpec, { name: 'fedyogi' }>;

export class FedYogi extends FedOpt<FedYogiSpec> {
  protected override secondMoment(v: number, delta2: number): number {
    return v - (1 - this.spec.beta2) * delta2 * Math.sign(v - delta2);
  }
}
