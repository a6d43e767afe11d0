// Folds the sites' answers of one round into a RoundAggregate as they arrive, keeping one model's
// worth of exact sums (two with SCAFFOLD's control variates) whatever the number of sites. The
// sums are exact (see exact-sum.ts), so arrival order never changes the aggregate's bits.
import type { RoundAggregate, SiteFitResult } from '../strategies/strategy.ts';
import { ExactWeightedSum } from './exact-sum.ts';

export interface RoundAccumulatorOptions {
  /** SCAFFOLD: every result must carry a controlDelta (and, without it, none may). */
  control?: boolean;
  /** Threads folding each update (ExactWeightedSum's `threads`): for updates held in SharedArrayBuffers. */
  threads?: number;
}

export class RoundAccumulator {
  readonly modelSize: number;
  readonly control: boolean;
  private readonly deltas: ExactWeightedSum;
  private readonly controls: ExactWeightedSum | undefined;
  /** Site name -> its reported training loss; also the set of sites folded in. */
  private readonly trainLosses = new Map<string, number>();

  constructor(modelSize: number, options: RoundAccumulatorOptions = {}) {
    this.modelSize = modelSize;
    this.control = options.control ?? false;
    const threads = options.threads ?? 1;
    this.deltas = new ExactWeightedSum(modelSize, { threads });
    this.controls = this.control ? new ExactWeightedSum(modelSize, { threads }) : undefined;
  }

  /** Empties the accumulator for another round, keeping its memory (fresh memory costs page faults, several times the fold itself). */
  reset(): void {
    this.deltas.reset();
    this.controls?.reset();
    this.trainLosses.clear();
  }

  /** Sites folded in so far. */
  get sites(): number {
    return this.trainLosses.size;
  }

  /**
   * Folds one site's result in: its delta weighted by its samples, its controlDelta weighted 1.
   * Returns false, changing nothing, when this site already contributed to the round (a
   * redelivered message). Throws RangeError, changing nothing, on a shape mismatch, a sample
   * count that is not a positive integer, or NaN/Inf values.
   */
  add(result: SiteFitResult): boolean {
    const key = contributionKey(result);
    if (this.trainLosses.has(key)) return false;
    const { site, samples, delta, controlDelta } = result;
    checkSamples(site, samples);
    if (delta.length !== this.modelSize) {
      throw new RangeError(`site "${site}": delta has ${delta.length} values, the model has ${this.modelSize}`);
    }
    checkControl(site, this.controls !== undefined, controlDelta !== undefined);
    if (this.controls && controlDelta) {
      if (controlDelta.length !== this.modelSize) {
        throw new RangeError(`site "${site}": controlDelta has ${controlDelta.length} values, the model has ${this.modelSize}`);
      }
      this.controls.check(controlDelta, 1); // so that a bad controlDelta cannot leave delta folded in alone
    }
    try {
      this.deltas.add(delta, contributionWeight(samples, result.staleness));
    } catch (err) {
      throw new RangeError(`site "${site}": ${(err as Error).message}`, { cause: err });
    }
    if (this.controls && controlDelta) this.controls.add(controlDelta, 1);
    this.trainLosses.set(key, result.trainLoss);
    return true;
  }

  /** Folds another partial accumulation of the same round in; the two must share no site. */
  merge(other: RoundAccumulator): void {
    if (other === this) throw new RangeError('RoundAccumulator.merge: cannot merge an accumulator into itself');
    if (other.modelSize !== this.modelSize || other.control !== this.control) {
      throw new RangeError('RoundAccumulator.merge: accumulators of different shapes');
    }
    for (const site of other.trainLosses.keys()) {
      if (this.trainLosses.has(site)) throw new RangeError(`RoundAccumulator.merge: site "${site}" is in both`);
    }
    this.deltas.merge(other.deltas);
    if (this.controls && other.controls) this.controls.merge(other.controls);
    for (const [site, loss] of other.trainLosses) this.trainLosses.set(site, loss);
  }

  /** The sites folded in, sorted by name. */
  participants(): string[] {
    return [...this.trainLosses.keys()].sort();
  }

  /** Unweighted mean of the sites' training losses, summed in site-name order (order-free). */
  fitLoss(): number {
    let sum = 0;
    for (const site of this.participants()) sum += this.trainLosses.get(site)!;
    return sum / this.trainLosses.size;
  }

  /** The round's aggregate. Throws when no site contributed. */
  finish(round: number): RoundAggregate {
    return this.aggregate(round, (sum) => sum.mean());
  }

  /**
   * finish(), with the means computed over the accumulator's own memory where they can be (no new
   * model-sized array): the accumulator is spent, and the arrays stay valid, until its reset().
   */
  take(round: number): RoundAggregate {
    return this.aggregate(round, (sum) => sum.takeMean());
  }

  private aggregate(round: number, mean: (sum: ExactWeightedSum) => Float64Array): RoundAggregate {
    if (this.sites === 0) throw new RangeError(`round ${round}: no site updates to aggregate`);
    const aggregate: RoundAggregate = {
      round,
      sites: this.sites,
      totalSamples: this.deltas.totalWeight,
      meanDelta: mean(this.deltas),
    };
    // Weight 1 per site, so the mean is (1/|S|) Sum controlDelta, as SCAFFOLD defines it.
    if (this.controls) aggregate.meanControlDelta = mean(this.controls);
    return aggregate;
  }
}

/** What a result counts as, once per round: a site's, or a late one (buffered mode), its own contribution beside the site's current one. */
export function contributionKey(result: { site: string; staleness?: number }): string {
  const staleness = result.staleness ?? 0;
  return staleness > 0 ? `${result.site}~${staleness}` : result.site;
}

/**
 * A result's weight in the mean: its samples; FedBuff's staleness weight for an update s rounds
 * late, 1/sqrt(1 + s) as much. The mean divides by the weights' sum, not by the count of updates
 * as FedBuff does: the discount is relative to the round's other updates.
 */
export function contributionWeight(samples: number, staleness = 0): number {
  return staleness > 0 ? samples / Math.sqrt(1 + staleness) : samples;
}

/** RangeError unless a result carries a control delta exactly when the strategy uses control variates (SCAFFOLD). */
export function checkControl(site: string, expected: boolean, present: boolean): void {
  if (expected && !present) throw new RangeError(`site "${site}": SCAFFOLD result without controlDelta`);
  if (!expected && present) throw new RangeError(`site "${site}": unexpected controlDelta (the strategy uses no control variates)`);
}

/** RangeError unless `samples` is a positive integer. */
export function checkSamples(site: string, samples: number): void {
  if (!Number.isSafeInteger(samples) || samples < 1) throw new RangeError(`site "${site}": samples must be a positive integer, got ${samples}`);
}
