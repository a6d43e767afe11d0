// SCAFFOLD (Karimireddy et al. 2020, Algorithm 1 with option II at the sites): the sites correct
// their gradients with c - c_i (see client-terms.ts); the server steps x <- x + lr * meanDelta
// and moves its control variate c <- c + (|S|/N) meanControlDelta, i.e. by the round's control
// deltas summed over N. In buffered mode a late update counts in |S| beside its site's current
// one (|S| may then pass N): its control delta too is a change of that c_i that happened, and c
// stays the mean of the c_i only if every one of them is added once.
import type { StrategySpec } from '../job/federated-job.ts';
import { checkAggregate, checkModelSize, checkRange, restoreBuffer, restoreStep, serverStep, serverStepInto } from './server-step.ts';
import type { FitInstructions, RangeAggregate, RoundAggregate, Strategy, StrategyState } from './strategy.ts';

export type ScaffoldSpec = Extract<StrategySpec, { name: 'scaffold' }>;

export class Scaffold implements Strategy {
  readonly spec: ScaffoldSpec;
  private readonly modelSize: number;
  /** N: every site of the job, sampled this round or not. */
  private readonly totalSites: number;
  private step: number;
  private readonly c: Float64Array;

  constructor(spec: ScaffoldSpec, modelSize: number, totalSites: number, state?: StrategyState) {
    checkModelSize(modelSize);
    if (!Number.isSafeInteger(totalSites) || totalSites < 1) throw new RangeError(`scaffold: bad totalSites ${totalSites}`);
    this.spec = spec;
    this.modelSize = modelSize;
    this.totalSites = totalSites;
    this.step = state ? restoreStep(spec, state) : 0;
    this.c = state ? restoreBuffer(state, 'c', modelSize) : new Float64Array(modelSize);
  }

  configureFit(_round: number): FitInstructions {
    return { proximalMu: 0, serverControl: Float32Array.from(this.c) };
  }

  aggregateFit(global: Float32Array, aggregate: RoundAggregate): Float32Array {
    checkAggregate('scaffold', this.modelSize, global, aggregate);
    const dc = aggregate.meanControlDelta;
    if (!dc || dc.length !== this.modelSize) {
      throw new RangeError(`scaffold: meanControlDelta is missing or does not have ${this.modelSize} values`);
    }
    this.moveControl(0, dc, aggregate.sites);
    this.step++;
    return serverStep(global, aggregate.meanDelta, this.spec.serverLearningRate);
  }

  aggregateFitRange(global: Float32Array, range: RangeAggregate): void {
    checkRange('scaffold', this.modelSize, global, range, true);
    this.moveControl(range.start, range.meanControlDelta!, range.sites);
    serverStepInto(global, global, range.start, range.meanDelta, this.spec.serverLearningRate);
  }

  endRangeFit(): void {
    this.step++;
  }

  /** c <- c + (|S|/N) meanControlDelta over [start, start + dc.length). */
  private moveControl(start: number, dc: Float64Array, sites: number): void {
    if (!Number.isSafeInteger(sites) || sites < 1) throw new RangeError(`scaffold: bad count of updates ${sites}`);
    const share = sites / this.totalSites;
    const c = this.c;
    for (let i = 0; i < dc.length; i++) c[start + i] = c[start + i]! + share * dc[i]!;
  }

  state(): StrategyState {
    return { name: 'scaffold', step: this.step, buffers: { c: this.c.slice() } };
  }
}
