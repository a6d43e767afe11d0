// Feature scaling fitted on a site's own train split only, so that nothing about the test split
// (or another site) leaks into training. Missing values (NaN) are ignored when fitting and become
// the train mean, i.e. 0 after scaling. A federation of tabular sites scales with the pooled
// moments of every site's train split instead (core/data/moments.ts), given in the load context.
import { momentsOf, scalerOf } from '../../core/data/moments.ts';

export interface Standardizer {
  mean: ArrayLike<number>;
  std: ArrayLike<number>;
  /** What a missing value is, before scaling (default: the mean, i.e. 0 after it). */
  fill?: ArrayLike<number>;
}

/** Per-column mean and population standard deviation of n rows of d values; NaN is missing (core/data/moments.ts). */
export function fitStandardizer(rows: Float64Array, n: number, d: number): Standardizer {
  return scalerOf(momentsOf(rows, n, d));
}

/** (v - mean) / std per column as float32; a missing value (NaN) becomes `fill` (scaled), or 0, the mean. */
export function applyStandardizer(rows: Float64Array, n: number, d: number, s: Standardizer): Float32Array {
  const out = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) {
      const v = rows[i * d + j]!;
      out[i * d + j] = Number.isNaN(v) ? (s.fill ? (s.fill[j]! - s.mean[j]!) / s.std[j]! : 0) : (v - s.mean[j]!) / s.std[j]!;
    }
  }
  return out;
}

/** No scaling at all: the values as they are, a missing one replaced by `fill` (a column mean). */
export function rawInputs(fill: ArrayLike<number>): Standardizer {
  return { mean: new Float64Array(fill.length), std: new Float64Array(fill.length).fill(1), fill };
}
