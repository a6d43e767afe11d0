import { describe, expect, it } from 'vitest';
import { globalMetrics, spread, weightedMean } from '../../core/metrics/aggregate.ts';
import { evaluateProbabilities, rocAuc } from '../../core/metrics/classification.ts';
import type { SiteMetrics } from '../../core/report/run-report.ts';
import { Rng } from '../../core/rng.ts';

/** Binary probability rows [1 - s, s] for class-1 scores s. */
function binary(scores: number[]): Float32Array {
  return new Float32Array(scores.flatMap((s) => [1 - s, s]));
}

describe('evaluateProbabilities', () => {
  it('loss (clipped cross-entropy) and accuracy (first max on ties)', () => {
    const probs = new Float32Array([0.7, 0.2, 0.1, 0.1, 0.3, 0.6, 0, 0, 1, 0.5, 0.5, 0]);
    const labels = new Int32Array([0, 1, 2, 2]);
    const scores = evaluateProbabilities(probs, 3, labels);
    // -(ln 0.7 + ln 0.3 + ln(1 - 1e-7) + ln 1e-7) / 4, with 0.7 and 0.3 as float32:
    // (0.356674961 + 1.203972794 + 1.00000005e-7 + 16.118095651) / 4
    expect(scores.loss).toBeCloseTo(4.419685869129116, 12);
    // Right: example 0. Wrong: 1 (argmax 2), 3 (tie 0/1 -> 0, label 2). Example 2 is right.
    expect(scores.accuracy).toBe(0.5);
    // One-vs-rest, macro: class 0's 0.7 outranks its 3 others (1); class 1's 0.3 outranks 2 of 3
    // (2/3); class 2's 1 and 0 outrank 2 and 0 of the 2 others (1/2): (1 + 2/3 + 1/2) / 3.
    expect(scores.auc).toBeCloseTo(13 / 18, 12);
    // A class without examples here is left out of the mean; none with both: no AUC.
    // Labels 0, 1, 1: class 0's 0.7 outranks both others (1), class 1's 0.3 and 0 outrank 1 of 2 against 0.2 (1/2), class 2 has none.
    expect(evaluateProbabilities(probs.slice(0, 9), 3, new Int32Array([0, 1, 1])).auc).toBeCloseTo((1 + 1 / 2) / 2, 12);
    expect(evaluateProbabilities(probs.slice(0, 6), 3, new Int32Array([2, 2])).auc).toBeUndefined();
  });

  it('binary AUC with tied scores, by average ranks', () => {
    // Sorted: 0.1(-) 0.35(+) 0.4(-) 0.4(+) 0.8(+); ranks 1, 2, 3.5, 3.5, 5.
    // R1 = 2 + 3.5 + 5 = 10.5; U = 10.5 - 3*4/2 = 4.5; AUC = 4.5 / (3*2) = 0.75
    // (pairwise: 0.35 beats 0.1; 0.4 beats 0.1 and ties 0.4; 0.8 beats both: 4.5 of 6).
    const scores = evaluateProbabilities(binary([0.1, 0.4, 0.35, 0.8, 0.4]), 2, new Int32Array([0, 0, 1, 1, 1]));
    expect(scores.auc).toBe(0.75);
    expect(scores.accuracy).toBe(0.6); // class 1 wins only where s > 0.5: 0.1(-), 0.4(-), 0.8(+) right
  });

  it('AUC: perfect, inverted, all tied, and undefined with one class', () => {
    expect(rocAuc(new Float64Array([0.1, 0.2, 0.8, 0.9]), new Int32Array([0, 0, 1, 1]))).toBe(1);
    expect(rocAuc(new Float64Array([0.9, 0.8, 0.2, 0.1]), new Int32Array([0, 0, 1, 1]))).toBe(0);
    expect(rocAuc(new Float64Array([0.5, 0.5, 0.5]), new Int32Array([0, 1, 1]))).toBe(0.5);
    expect(evaluateProbabilities(binary([0.2, 0.9]), 2, new Int32Array([1, 1])).auc).toBeUndefined();
    expect(evaluateProbabilities(binary([0.2, 0.9]), 2, new Int32Array([0, 0])).auc).toBeUndefined();
  });

  it('rejects inconsistent input', () => {
    expect(() => evaluateProbabilities(new Float32Array(5), 2, new Int32Array(3))).toThrow(RangeError);
    expect(() => evaluateProbabilities(new Float32Array(4), 2, new Int32Array([0, 2]))).toThrow(RangeError);
    expect(() => evaluateProbabilities(new Float32Array(0), 2, new Int32Array(0))).toThrow(RangeError);
    expect(() => evaluateProbabilities(new Float32Array(2), 1, new Int32Array(2))).toThrow(RangeError);
  });
});

describe('aggregate metrics', () => {
  it('weightedMean', () => {
    // (1 * 0.5 + 3 * 0.9) / 4 = 3.2 / 4 = 0.8
    expect(
      weightedMean([
        { samples: 1, value: 0.5 },
        { samples: 3, value: 0.9 },
        { samples: 0, value: 7 },
      ]),
    ).toBeCloseTo(0.8, 15);
    expect(() => weightedMean([])).toThrow(RangeError);
    expect(() => weightedMean([{ samples: 0, value: 1 }])).toThrow(RangeError);
  });

  it('spread: min, max, population std', () => {
    // mean 2.5; squares 2.25 + 0.25 + 0.25 + 2.25 = 5; std = sqrt(5/4)
    expect(spread([3, 1, 4, 2])).toEqual({ min: 1, max: 4, std: Math.sqrt(1.25) });
    expect(spread([0.7])).toEqual({ min: 0.7, max: 0.7, std: 0 });
    expect(() => spread([])).toThrow(RangeError);
  });

  it('globalMetrics: sample-weighted, AUC over the sites that have one', () => {
    const sites: SiteMetrics[] = [
      { site: 'a', samples: 100, loss: 0.5, accuracy: 0.8, auc: 0.9 },
      { site: 'b', samples: 300, loss: 0.3, accuracy: 0.9, auc: 0.7 },
    ];
    // loss (50 + 90) / 400, accuracy (80 + 270) / 400, auc (90 + 210) / 400
    const g = globalMetrics(sites);
    expect(g.loss).toBeCloseTo(0.35, 15);
    expect(g.accuracy).toBeCloseTo(0.875, 15);
    expect(g.auc).toBeCloseTo(0.75, 15);
    // A site whose test split has one class has no AUC: the others' stands (it used to hide it).
    expect(globalMetrics([...sites, { site: 'c', samples: 10, loss: 1, accuracy: 0.5 }]).auc).toBeCloseTo(0.75, 15);
    expect(globalMetrics([{ site: 'c', samples: 10, loss: 1, accuracy: 0.5 }]).auc).toBeUndefined();
  });

  it('does not depend on the order sites are listed in', () => {
    const sites: SiteMetrics[] = Array.from({ length: 30 }, (_, k) => ({
      site: `s${k}`,
      samples: 1 + ((k * 7919) % 997),
      loss: 1 / (k + 3),
      accuracy: ((k * 37) % 100) / 100 + 1e-9 * k,
      auc: 0.5 + ((k * 13) % 50) / 101,
    }));
    const ref = globalMetrics(sites);
    const refSpread = spread(sites.map((s) => s.accuracy));
    const rng = Rng.from(1, 'metrics-order');
    for (let t = 0; t < 20; t++) {
      const shuffled = rng.shuffle([...sites]) as SiteMetrics[];
      expect(globalMetrics(shuffled)).toEqual(ref);
      expect(spread(shuffled.map((s) => s.accuracy))).toEqual(refSpread);
    }
  });
});
