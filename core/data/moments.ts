// The federation's feature scaling. A model is only one model if a feature means the same thing
// at every site: scaled with each site's own mean and standard deviation, "heart rate 1.0" would
// be 90 bpm at one hospital and 120 at another, and the exported model would fit no new site. So
// each site sends the first moments of its train split's raw columns (counts, means and sums of
// squared deviations: no row, no value), the coordinator pools them, and every site scales with
// the pooled mean and standard deviation: what one pooled train set would have given.
//
// Pooling is Chan et al.'s pairwise update, in the job's site order, so every process of a job
// gets the same bits.
import { z } from 'zod';

const MAX_FEATURES = 10_000;

/** Per column of a train split: values present, their mean, and the sum of squared deviations from it. */
/** The largest float32: a site's features are refused beyond it at load, so no honest mean lies further out. */
const FLOAT32_MAX = 3.4028234663852886e38;
/**
 * Bounds a site's moments cannot pass honestly (2^40 rows of float32 values give a sum of squared
 * deviations under 6e89), and within which pooling them stays finite: one site's mean of 1e308
 * beside another's -1e308 pooled to NaN, which every task would have carried as the scaling.
 */
const MAX_ROWS = 2 ** 40;
const MAX_M2 = 1e100;

export const FeatureMoments = z
  .object({
    count: z.array(z.number().int().min(0).max(MAX_ROWS)).max(MAX_FEATURES),
    mean: z.array(z.number().min(-FLOAT32_MAX).max(FLOAT32_MAX)).max(MAX_FEATURES),
    m2: z.array(z.number().min(0).max(MAX_M2)).max(MAX_FEATURES),
  })
  .strict()
  .refine((m) => m.mean.length === m.count.length && m.m2.length === m.count.length, { message: 'count, mean and m2 must have one entry per feature' });
export type FeatureMoments = z.infer<typeof FeatureMoments>;

/** How every site scales its inputs: (x - mean) / std per feature. */
export const InputScaler = z
  .object({
    mean: z.array(z.number()).max(MAX_FEATURES),
    std: z.array(z.number().gt(0)).max(MAX_FEATURES),
  })
  .strict()
  .refine((s) => s.std.length === s.mean.length, { message: 'mean and std must have one entry per feature' });
export type InputScaler = z.infer<typeof InputScaler>;

/** The moments of n rows of d values (row-major; NaN is missing): two passes, as a pooled set would be measured. */
export function momentsOf(rows: ArrayLike<number>, n: number, d: number): FeatureMoments {
  const count = new Array<number>(d).fill(0);
  const mean = new Array<number>(d).fill(0);
  const m2 = new Array<number>(d).fill(0);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) {
      const v = rows[i * d + j]!;
      if (Number.isNaN(v)) continue;
      count[j]!++;
      mean[j]! += v;
    }
  }
  for (let j = 0; j < d; j++) mean[j] = count[j]! > 0 ? mean[j]! / count[j]! : 0;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) {
      const v = rows[i * d + j]!;
      if (Number.isNaN(v)) continue;
      const dv = v - mean[j]!;
      m2[j]! += dv * dv;
    }
  }
  return { count, mean, m2 };
}

/** The moments of the union of the parts' rows, pooled in the order given (the job's site order). */
export function poolMoments(parts: readonly FeatureMoments[]): FeatureMoments {
  if (parts.length === 0) throw new RangeError('poolMoments: no parts');
  const d = parts[0]!.count.length;
  const count = [...parts[0]!.count];
  const mean = [...parts[0]!.mean];
  const m2 = [...parts[0]!.m2];
  for (const p of parts.slice(1)) {
    if (p.count.length !== d) throw new RangeError(`poolMoments: ${p.count.length} features, not ${d}`);
    for (let j = 0; j < d; j++) {
      const na = count[j]!;
      const nb = p.count[j]!;
      if (nb === 0) continue;
      const n = na + nb;
      const delta = p.mean[j]! - mean[j]!;
      mean[j] = mean[j]! + (delta * nb) / n;
      m2[j] = m2[j]! + p.m2[j]! + (delta * delta * na * nb) / n;
      count[j] = n;
    }
  }
  return { count, mean, m2 };
}

/**
 * Mean and population standard deviation per column. A constant (or absent) column carries no
 * information: its std is 1, which keeps it at 0 once centred.
 */
export function scalerOf(m: FeatureMoments): InputScaler {
  const std = m.count.map((n, j) => {
    const s = n > 0 ? Math.sqrt(m.m2[j]! / n) : 0;
    return s > 1e-12 && Number.isFinite(s) ? s : 1;
  });
  return { mean: m.count.map((n, j) => (n > 0 ? m.mean[j]! : 0)), std };
}

/**
 * The federation's scaler: the pooled moments of the sites that sent some (tabular data scaled
 * by its train split), in the order given; undefined when none did (images, fixed scalings).
 */
export function federationScaler(sites: ReadonlyArray<{ moments?: FeatureMoments | undefined }>): InputScaler | undefined {
  const parts = sites.flatMap((s) => (s.moments ? [s.moments] : []));
  return parts.length > 0 ? scalerOf(poolMoments(parts)) : undefined;
}

/** The spacing of float32 values near v. */
function float32Spacing(v: number): number {
  return v === 0 ? 2 ** -149 : 2 ** (Math.floor(Math.log2(Math.abs(v))) - 23);
}

/**
 * Columns whose raw values a float32 model cannot take: near their mean, float32 (TF.js's
 * tensors) holds them no finer than a thousandth of their standard deviation (a timestamp of
 * 3e7 varying by 2 is held in steps of 2). Folded into the first layer, such a column's scaling
 * would lose what tells its rows apart, so the scaling is not folded and the exported model takes
 * scaled values, computed in double precision by whoever feeds it.
 */
export function coarseColumns(scaler: InputScaler): number[] {
  const out: number[] = [];
  scaler.mean.forEach((m, j) => {
    const s = scaler.std[j]!;
    if (float32Spacing(Math.abs(m) + 4 * s) > s / 1024) out.push(j);
  });
  return out;
}

/** What a run says when its TF.js model takes scaled values because of coarse columns (their indices); undefined when none. */
export function coarseInputsWarning(columns: readonly number[] | undefined, scaler: InputScaler | undefined, features?: readonly string[]): string | undefined {
  if (!scaler || !columns?.length) return undefined;
  const named = columns.map((j) => `${features?.[j] !== undefined ? `"${features[j]}"` : `feature ${j + 1}`} (mean ${scaler.mean[j]}, std ${scaler.std[j]})`);
  return `tfjs/model.json takes scaled values, not raw ones: float32, TF.js's number type, cannot hold the raw values of ${named.join(', ')} finely enough to tell them apart; give it (x - mean) / std with report.json's model.inputScaler, computed in double precision`;
}
