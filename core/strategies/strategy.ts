// The strategy contract, after Flower's: a small object with hooks that the round loop calls.
// Sites send deltas (their trained weights minus the global model they received); the
// coordinator folds them into a RoundAggregate and hands it to aggregateFit.
import type { StrategySpec } from '../job/federated-job.ts';

/** What each sampled site is told besides the global model. */
export interface FitInstructions {
  /** FedProx: weight of the proximal term mu/2 ||w - w_global||^2 (0 for plain local SGD). */
  proximalMu: number;
  /** SCAFFOLD: the server control variate c (absent for other strategies). */
  serverControl?: Float32Array;
}

/** One site's answer to a fit task. */
export interface SiteFitResult {
  site: string;
  /** Training examples used: the weight of this update in the mean. */
  samples: number;
  /** Trained weights minus the received global weights. */
  delta: Float32Array;
  /** SCAFFOLD: c_i+ - c_i. */
  controlDelta?: Float32Array;
  /** Mean training loss over the site's last local epoch. */
  trainLoss: number;
  /** Buffered mode: how many rounds late this update is (0 or absent: on time). */
  staleness?: number;
}

/** The folded updates of one round. */
export interface RoundAggregate {
  round: number;
  /** Sum_k n_k delta_k / Sum_k n_k. */
  meanDelta: Float64Array;
  /** SCAFFOLD: (1/|S|) Sum_k controlDelta_k (unweighted, as the paper defines it). */
  meanControlDelta?: Float64Array;
  /** |S|: the updates folded in, one per site (buffered: a late update counts beside its site's current one). */
  sites: number;
  totalSamples: number;
}

/**
 * One range of a round's aggregate, for a model whose aggregate is not held whole: the means of
 * values [start, start + meanDelta.length) of the model.
 */
export interface RangeAggregate extends RoundAggregate {
  start: number;
}

/** Everything a strategy needs to resume: plain numbers and arrays, checkpointable. */
export interface StrategyState {
  name: StrategySpec['name'];
  step: number;
  buffers: Record<string, Float64Array>;
}

export interface Strategy {
  readonly spec: StrategySpec;
  configureFit(round: number): FitInstructions;
  /** The next global model from the current one and the round's aggregate. */
  aggregateFit(global: Float32Array, aggregate: RoundAggregate): Float32Array;
  /**
   * aggregateFit one range at a time, in place: global[start, start + n) and the strategy's own
   * state there become exactly what aggregateFit would make of them (every server step is
   * element-wise). A round's ranges cover the model once, in any order; then endRangeFit().
   */
  aggregateFitRange(global: Float32Array, range: RangeAggregate): void;
  /** Closes a round stepped by aggregateFitRange (counts the step). */
  endRangeFit(): void;
  state(): StrategyState;
}
