// Global metrics from per-site ones. Sums run over the values sorted, so the result does not
// depend on the order the sites reported in.
import type { SiteMetrics, Spread } from '../report/run-report.ts';

export interface Weighted {
  samples: number;
  value: number;
}

/** Sum samples * value / Sum samples. Throws when the total sample count is 0. */
export function weightedMean(items: readonly Weighted[]): number {
  const sorted = [...items].sort((a, b) => a.value - b.value || a.samples - b.samples);
  let total = 0;
  let sum = 0;
  for (const { samples, value } of sorted) {
    if (!(samples >= 0 && samples < Infinity)) throw new RangeError(`weightedMean: bad sample count ${samples}`);
    if (samples === 0) continue;
    total += samples;
    sum += samples * value;
  }
  if (total === 0) throw new RangeError('weightedMean: no samples');
  return sum / total;
}

/** Min, max and population standard deviation. Throws on an empty list. */
export function spread(values: readonly number[]): Spread {
  if (values.length === 0) throw new RangeError('spread: no values');
  const sorted = [...values].sort((a, b) => a - b);
  let sum = 0;
  for (const v of sorted) sum += v;
  const mean = sum / sorted.length;
  let squares = 0;
  for (const v of sorted) squares += (v - mean) * (v - mean);
  return { min: sorted[0]!, max: sorted[sorted.length - 1]!, std: Math.sqrt(squares / sorted.length) };
}

export interface GlobalMetrics {
  loss: number;
  accuracy: number;
  /**
   * Over the sites that reported one: a site whose test split has one class ranks nothing and has
   * none. (Asked of every site, one such site hid the global AUC for good, and a stopping target
   * on it never fired.)
   */
  auc?: number;
}

/** Sample-weighted means of the sites' metrics. */
export function globalMetrics(sites: readonly SiteMetrics[]): GlobalMetrics {
  const of = (pick: (s: SiteMetrics) => number, from = sites): number => weightedMean(from.map((s) => ({ samples: s.samples, value: pick(s) })));
  const result: GlobalMetrics = { loss: of((s) => s.loss), accuracy: of((s) => s.accuracy) };
  const ranked = sites.filter((s) => s.auc !== undefined && s.samples > 0);
  if (ranked.length > 0) result.auc = of((s) => s.auc!, ranked);
  return result;
}
