import { describe, expect, it } from 'vitest';
import { DataQuality } from '../../core/data/quality.ts';
import { DataSpec } from '../../core/job/federated-job.ts';
import { Rng } from '../../core/rng.ts';
import type { SiteData } from '../../worker/data/dataset.ts';
import { loadSiteData } from '../../worker/data/load.ts';
import { FEDPROX_CLASSES, FEDPROX_DIMENSION } from '../../worker/data/synthetic/fedprox.ts';
import { HOSPITAL_FEATURES, hospitalPatients, hospitalRows, sepsisProbability } from '../../worker/data/synthetic/hospital.ts';
import { iidModel } from '../../worker/data/synthetic/iid.ts';
import { WorkerError } from '../../worker/errors.ts';

const ctx = { site: 'site-0', jobSeed: 0, baseDir: '.' };
const load = (fields: Record<string, unknown>, c: Partial<typeof ctx> & { classes?: string[] } = {}) =>
  loadSiteData(DataSpec.parse({ type: 'synthetic', ...fields }), { ...ctx, ...c });

function sameBytes(a: SiteData, b: SiteData): boolean {
  const eq = (p: ArrayLike<number>, q: ArrayLike<number>) =>
    p.length === q.length && Array.prototype.every.call(p, (v: number, i: number) => Object.is(v, q[i]));
  return eq(a.train.x, b.train.x) && eq(a.train.y, b.train.y) && eq(a.test.x, b.test.x) && eq(a.test.y, b.test.y);
}

describe('FedProx Synthetic(alpha, beta)', () => {
  const fedprox = (device: number, more: Record<string, unknown> = {}) => load({ generator: 'fedprox', alpha: 1, beta: 1, device, seed: 3, ...more });

  it('has int(lognormal(4, 2)) + 50 examples per device, cut 90/10', async () => {
    for (const device of [0, 1, 7, 29]) {
      const data = await fedprox(device);
      const n = Math.trunc(Rng.from(3, 'fedprox', 1, 1, device).lognormal(4, 2)) + 50;
      expect(data.train.n + data.test.n).toBe(n);
      expect(data.train.n).toBe(Math.floor(0.9 * n));
      expect(data.quality).toMatchObject({ rowsUsed: n, trainSamples: data.train.n, testSamples: data.test.n });
      expect(() => DataQuality.parse(data.quality)).not.toThrow();
    }
  });

  it('follows the reference recipe: u, B, v, W, b drawn in order from the device stream', async () => {
    const alpha = 0.5;
    const beta = 1.5;
    const data = await fedprox(9, { alpha, beta });
    const rng = Rng.from(3, 'fedprox', alpha, beta, 9);
    rng.lognormal(4, 2); // n
    const u = rng.normal(0, alpha);
    const B = rng.normal(0, beta);
    for (let j = 0; j < 60; j++) rng.normal(B, 1); // v
    const W = Array.from({ length: 600 }, () => rng.normal(u, 1));
    const b = Array.from({ length: 10 }, () => rng.normal(u, 1));
    for (const ds of [data.train, data.test]) {
      for (let i = 0; i < ds.n; i++) {
        const z = b.map((bc, c) => bc + Array.from({ length: 60 }, (_, j) => ds.x[i * 60 + j]! * W[j * 10 + c]!).reduce((p, q) => p + q, 0));
        expect(ds.y[i]).toBe(z.indexOf(Math.max(...z)));
      }
    }
  });

  it('has 60 features and 10 classes', async () => {
    const data = await fedprox(2);
    expect(data.train.sampleShape).toEqual([FEDPROX_DIMENSION]);
    expect(data.train.x.length).toBe(data.train.n * 60);
    expect(data.classes).toEqual(['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
    expect(data.train.y.every((y) => y >= 0 && y < FEDPROX_CLASSES)).toBe(true);
    expect(Object.values(data.quality.labels).reduce((a, b) => a + b, 0)).toBe(data.train.n + data.test.n);
    expect(data.featureNames).toBeUndefined();
  });

  it('is deterministic per device and independent of the other devices', async () => {
    const alone = await fedprox(5);
    for (const d of [0, 1, 2, 3, 4]) await fedprox(d);
    const afterOthers = await fedprox(5);
    expect(sameBytes(alone, afterOthers)).toBe(true);
    expect(sameBytes(alone, await fedprox(6))).toBe(false);
    expect(sameBytes(alone, await fedprox(5, { seed: 4 }))).toBe(false);
    expect(sameBytes(alone, await fedprox(5, { alpha: 0.5 }))).toBe(false);
  });

  it('draws x with covariance diag(j^-1.2) around the device mean', async () => {
    // The largest of the 30 devices: enough examples to estimate per-dimension variances.
    const devices = await Promise.all(Array.from({ length: 30 }, (_, d) => fedprox(d, { alpha: 0, beta: 0 })));
    const big = devices.reduce((a, b) => (a.train.n > b.train.n ? a : b));
    expect(big.train.n).toBeGreaterThan(500);
    const { x, n } = big.train;
    for (const j of [0, 1, 9, 59]) {
      let m = 0;
      for (let i = 0; i < n; i++) m += x[i * 60 + j]! / n;
      let v = 0;
      for (let i = 0; i < n; i++) v += (x[i * 60 + j]! - m) ** 2 / (n - 1);
      expect(v / (j + 1) ** -1.2).toBeGreaterThan(0.8);
      expect(v / (j + 1) ** -1.2).toBeLessThan(1.2);
    }
  });

  it('varies the device means with beta (v_k ~ N(B_k, 1), B_k ~ N(0, beta))', async () => {
    const meanOfMeans = async (beta: number) => {
      const out: number[] = [];
      for (let d = 0; d < 30; d++) {
        const { x, n } = (await fedprox(d, { alpha: 0, beta })).train;
        let m = 0;
        for (let i = 0; i < n; i++) for (let j = 0; j < 60; j++) m += x[i * 60 + j]! / (n * 60);
        out.push(m);
      }
      return out;
    };
    const spread = (v: number[]) => Math.sqrt(v.reduce((a, b) => a + b * b, 0) / v.length);
    // The mean over 60 dimensions of N(B_k, 1) is about B_k: spread ≈ beta (sd), plus 1/sqrt(60).
    expect(spread(await meanOfMeans(0))).toBeLessThan(0.3);
    const s = spread(await meanOfMeans(2));
    expect(s).toBeGreaterThan(1.2);
    expect(s).toBeLessThan(3);
  });

  it('names classes after the job when it gives ten', async () => {
    const names = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'];
    expect((await load({ generator: 'fedprox', device: 0 }, { classes: names })).classes).toEqual(names);
    const err = await load({ generator: 'fedprox', device: 0 }, { classes: ['a', 'b'] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkerError);
    expect((err as WorkerError).code).toBe('CONSORT_W_DATA_SCHEMA');
  });
});

describe('IID synthetic', () => {
  it('labels every device with one shared model and x ~ N(0, Σ)', async () => {
    const data = await load({ generator: 'iid', device: 4, samples: 300, features: 8, classes: 3, seed: 2 });
    expect(data.train.n + data.test.n).toBe(300);
    expect(data.train.n).toBe(270);
    expect(data.train.sampleShape).toEqual([8]);
    expect(data.classes).toEqual(['0', '1', '2']);
    const { W, b } = iidModel(2, 8, 3);
    for (const ds of [data.train, data.test]) {
      for (let i = 0; i < ds.n; i++) {
        const z = [0, 1, 2].map((c) => b[c]! + Array.from({ length: 8 }, (_, j) => ds.x[i * 8 + j]! * W[j * 3 + c]!).reduce((p, q) => p + q, 0));
        expect(ds.y[i]).toBe(z.indexOf(Math.max(...z)));
      }
    }
    const other = await load({ generator: 'iid', device: 5, samples: 300, features: 8, classes: 3, seed: 2 });
    expect(sameBytes(data, other)).toBe(false);
    expect(sameBytes(data, await load({ generator: 'iid', device: 4, samples: 300, features: 8, classes: 3, seed: 2 }))).toBe(true);
  });

  it('defaults to int(lognormal(4, 2)) + 50 examples', async () => {
    const data = await load({ generator: 'iid', device: 1 });
    expect(data.train.n + data.test.n).toBe(Math.trunc(Rng.from(0, 'iid', 1).lognormal(4, 2)) + 50);
    expect(data.train.sampleShape).toEqual([60]);
  });
});

describe('synthetic hospital', () => {
  const hospital = (fields: Record<string, unknown> = {}, c: Partial<typeof ctx> = {}) => load({ generator: 'hospital', ...fields }, c);

  it('honours samples and prevalence exactly, and splits testFraction', async () => {
    for (const [samples, prevalence] of [
      [400, 0.3],
      [80, 0.1],
      [1500, 0.5],
      [200, 0.8],
    ] as const) {
      const data = await hospital({ samples, prevalence, testFraction: 0.25, seed: 1 });
      expect(data.quality.labels).toEqual({ no: samples - Math.round(prevalence * samples), yes: Math.round(prevalence * samples) });
      expect(data.train.n + data.test.n).toBe(samples);
      expect(data.test.n).toBe(Math.round(0.25 * samples));
    }
  });

  it('gives 12 vitals and labs scaled by the clinical reference, not by the site', async () => {
    const data = await hospital({ samples: 500 });
    expect(data.featureNames).toEqual([...HOSPITAL_FEATURES]);
    expect(data.train.sampleShape).toEqual([12]);
    expect(data.classes).toEqual(['no', 'yes']);
    // An older, sicker hospital keeps its shift after scaling (a site-fitted scaling would erase it).
    const mean = (d: typeof data, j: number) => {
      let m = 0;
      for (let i = 0; i < d.train.n; i++) m += d.train.x[i * 12 + j]! / d.train.n;
      return m;
    };
    const older = await hospital({ samples: 500, shift: 1.5 });
    expect(mean(older, 0) - mean(data, 0)).toBeGreaterThan(0.4); // age, in reference sd units
    for (let j = 0; j < 12; j++) expect(Math.abs(mean(data, j))).toBeLessThan(1.5);
    expect(() => DataQuality.parse(data.quality)).not.toThrow();
  });

  it('charts values in clinical units and ranges', () => {
    const { header, rows } = hospitalRows({ samples: 1000, prevalence: 0.3, shift: 0 }, { site: 'st-mary', jobSeed: 0 });
    expect(header.at(-1)).toBe('sepsis');
    const col = (name: string) => rows.map((r) => r[header.indexOf(name)] as number);
    const avg = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
    expect(avg(col('age'))).toBeGreaterThan(50);
    expect(avg(col('age'))).toBeLessThan(75);
    expect(Math.max(...col('spo2'))).toBeLessThanOrEqual(100);
    expect(col('gcs').every((g) => Number.isInteger(g) && g >= 3 && g <= 15)).toBe(true);
    expect(avg(col('temperature'))).toBeGreaterThan(36.5);
    expect(avg(col('temperature'))).toBeLessThan(38);
    expect(new Set(rows.map((r) => r.at(-1)))).toEqual(new Set(['yes', 'no']));
  });

  it('is deterministic; the seed, the site name and the job seed each change it', async () => {
    const base = await hospital({ samples: 200 });
    expect(sameBytes(base, await hospital({ samples: 200 }))).toBe(true);
    expect(sameBytes(base, await hospital({ samples: 200 }, { site: 'site-1' }))).toBe(false);
    expect(sameBytes(base, await hospital({ samples: 200 }, { jobSeed: 1 }))).toBe(false);
    const seeded = hospitalPatients({ samples: 200, prevalence: 0.3, shift: 0, seed: 5 }, { site: 'a', jobSeed: 0 });
    // An explicit seed names the patients, whichever site holds them.
    expect(hospitalPatients({ samples: 200, prevalence: 0.3, shift: 0, seed: 5 }, { site: 'b', jobSeed: 0 })).toEqual(seeded);
    expect(hospitalPatients({ samples: 200, prevalence: 0.3, shift: 0, seed: 6 }, { site: 'a', jobSeed: 0 }).values).not.toEqual(seeded.values);
  });

  it('shifts the patient mix older and sicker, under one shared P(sepsis | x)', () => {
    const meanAge = (shift: number) => {
      const { values, n } = hospitalPatients({ samples: 2000, prevalence: 0.3, shift, seed: 1 }, { site: 'x', jobSeed: 0 });
      let m = 0;
      for (let i = 0; i < n; i++) m += values[i * 12]! / n;
      return m;
    };
    expect(meanAge(1.5)).toBeGreaterThan(meanAge(0) + 5);
    expect(meanAge(-1.5)).toBeLessThan(meanAge(0) - 5);
    // The ground truth: a calm patient is unlikely septic, a patient in shock very likely.
    expect(sepsisProbability([50, 75, 14, 36.9, 130, 98, 7.5, 1.0, 0.9, 250, 0.6, 15])).toBeLessThan(0.01);
    expect(sepsisProbability([78, 124, 28, 39.4, 82, 89, 18.5, 5.2, 2.3, 90, 2.1, 12])).toBeGreaterThan(0.99);
    // Hypothermia counts as well as fever (a U shape no linear model captures).
    const at = (temp: number) => sepsisProbability([60, 95, 20, temp, 115, 95, 9, 1.8, 1.1, 200, 0.8, 15]);
    expect(at(35.3)).toBeGreaterThan(at(37.0) * 5);
    expect(at(38.7)).toBeGreaterThan(at(37.0) * 5);
  });

  it('keeps labels noisy: no rule on x is right for every patient', async () => {
    const data = await hospital({ samples: 1500, prevalence: 0.5, seed: 2 });
    const raw = hospitalPatients({ samples: 1500, prevalence: 0.5, shift: 0, seed: 2 }, { site: 'site-0', jobSeed: 0 });
    // Bayes-style rule on the true probability still errs on a share of patients.
    let wrong = 0;
    for (let i = 0; i < raw.n; i++) wrong += (sepsisProbability(raw.values.subarray(i * 12, (i + 1) * 12)) > 0.5 ? 1 : 0) === raw.y[i] ? 0 : 1;
    expect(wrong / raw.n).toBeGreaterThan(0.05);
    expect(wrong / raw.n).toBeLessThan(0.25);
    expect(data.quality.labels).toEqual({ no: 750, yes: 750 });
  });

  it("maps labels by name onto the job's classes", async () => {
    const data = await hospital({ samples: 100 }, {});
    const swapped = await load({ generator: 'hospital', samples: 100 }, { classes: ['yes', 'no'] });
    expect(Array.from(swapped.train.y)).toEqual(Array.from(data.train.y, (y) => 1 - y));
    const err = await load({ generator: 'hospital', samples: 100 }, { classes: ['neg', 'pos'] }).catch((e: unknown) => e);
    expect((err as WorkerError).code).toBe('CONSORT_W_DATA_LABEL');
  });
});
