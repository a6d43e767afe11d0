// The federation's input scaling (core/data/moments.ts): the pooled moments of the sites' train
// splits are those of one pooled split, whatever the sites' sizes and missing values, and the
// same bits in every process that pools them in the job's site order.
import { describe, expect, it } from 'vitest';
import { FeatureMoments, federationScaler, InputScaler, momentsOf, poolMoments, scalerOf } from '../../core/data/moments.ts';
import { Rng } from '../../core/rng.ts';

const D = 3;
/** n rows of D values on very different scales per site (offset, spread), some missing. */
function rows(n: number, offset: number, spread: number, seed: number): Float64Array {
  const rng = Rng.from(seed, 'moments');
  const out = new Float64Array(n * D);
  for (let i = 0; i < out.length; i++) out[i] = rng.uniform() < 0.05 ? Number.NaN : offset * (1 + (i % D)) + spread * (rng.uniform() - 0.5);
  return out;
}
const concat = (...parts: Float64Array[]) => {
  const out = new Float64Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

describe('feature moments', () => {
  it('pooled from three sites, they are those of the three train splits as one', () => {
    const sites = [rows(40, 90, 10, 1), rows(7, 120, 30, 2), rows(300, 60, 2, 3)];
    const pooled = poolMoments(sites.map((r) => momentsOf(r, r.length / D, D)));
    const all = concat(...sites);
    const whole = momentsOf(all, all.length / D, D);
    expect(pooled.count).toEqual(whole.count);
    for (let j = 0; j < D; j++) {
      expect(pooled.mean[j]).toBeCloseTo(whole.mean[j]!, 9);
      expect(pooled.m2[j]! / whole.m2[j]!).toBeCloseTo(1, 9);
    }
    // A site with no value in a column adds nothing to it.
    const empty = momentsOf(new Float64Array([Number.NaN, 1, 2]), 1, D);
    expect(poolMoments([momentsOf(sites[0]!, 40, D), empty]).mean[0]).toBe(momentsOf(sites[0]!, 40, D).mean[0]);
  });

  it('scale to mean and population std; a constant or empty column keeps std 1', () => {
    const s = scalerOf(momentsOf(new Float64Array([1, 5, Number.NaN, 3, 5, Number.NaN]), 2, 3));
    expect(s).toEqual({ mean: [2, 5, 0], std: [1, 1, 1] });
    expect(InputScaler.safeParse(s).success).toBe(true);
  });

  it('the federation scaler pools the sites that have moments, in the order given, the same bits each time', () => {
    const parts = [rows(40, 90, 10, 1), rows(7, 120, 30, 2)].map((r) => ({ moments: momentsOf(r, r.length / D, D) }));
    const a = federationScaler([...parts, {}]);
    const b = federationScaler(JSON.parse(JSON.stringify([...parts, {}])));
    expect(JSON.stringify(a)).toBe(JSON.stringify(b));
    expect(federationScaler([{}, {}])).toBeUndefined();
  });

  it('refuses moments whose arrays disagree in length, or a negative squared deviation', () => {
    expect(FeatureMoments.safeParse({ count: [1, 2], mean: [0], m2: [0, 0] }).success).toBe(false);
    expect(FeatureMoments.safeParse({ count: [1], mean: [0], m2: [-1] }).success).toBe(false);
    expect(InputScaler.safeParse({ mean: [0], std: [0] }).success).toBe(false);
  });

  it("refuses a site's moments beyond what float32 data can give; within the bounds, pooling stays finite", () => {
    // One site's mean of 1e308 beside another's -1e308 pooled to NaN: every task's scaling.
    expect(FeatureMoments.safeParse({ count: [10], mean: [1e308], m2: [0] }).success).toBe(false);
    expect(FeatureMoments.safeParse({ count: [10], mean: [1], m2: [1e308] }).success).toBe(false);
    expect(FeatureMoments.safeParse({ count: [2 ** 41], mean: [1], m2: [0] }).success).toBe(false);
    const edge = (sign: number, count: number) => FeatureMoments.parse({ count: [count], mean: [sign * 3.4028234663852886e38], m2: [1e100] });
    const s = federationScaler([{ moments: edge(1, 2 ** 40) }, { moments: edge(-1, 3) }, { moments: edge(1, 1) }])!;
    expect(Number.isFinite(s.mean[0]) && Number.isFinite(s.std[0]) && s.std[0]! > 0).toBe(true);
    expect(InputScaler.safeParse(s).success).toBe(true);
  });
});
