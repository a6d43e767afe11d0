// Synthetic hospitals: vitals and lab values of each hospital's patients, labelled sepsis or not.
//
// One ground truth for every hospital: P(sepsis | x) is a logistic of per-feature terms with
// clinical thresholds (qSOFA/SIRS-like hinges), two U-shaped terms (temperature: fever or
// hypothermia; white cells: leukocytosis or leukopenia) and four interactions (shock: lactate with
// low pressure; fever with tachycardia; old age with tachypnoea; hypoxia with tachypnoea). Logistic
// regression cannot represent the U shapes, and the hinges need many patients to place, so small
// hospitals alone learn it worse than a consortium.
//
// What differs between hospitals is the patient mix only:
//   shift      moves the covariates: an older, sicker population (a latent acuity and age);
//   prevalence patients are drawn from the shared model until the class counts match, so P(x | y)
//              is the hospital's own and the share of positives is as asked (label shift);
//   samples    the number of patients.
// Recorded labels carry 5% chart-review noise on top of the Bernoulli draw, so no model is perfect.
// Values are in clinical units, rounded as charted; they are standardised with fixed clinical
// reference values (HOSPITAL_REFERENCE), not fitted on any site's data. A CSV of the same rows is
// scaled with the site's own train statistics instead, as every CSV is.
import type { SyntheticData } from '../../../core/job/federated-job.ts';
import { Rng, streamHash } from '../../../core/rng.ts';
import { WorkerError } from '../../errors.ts';
import { type LoadContext, type SiteData, splitIndices } from '../dataset.ts';
import { type RawSplit, selectRows, tabularSiteData } from '../tabular.ts';
import { HOSPITAL_REFERENCE } from '../../../core/data/reference-scalers.ts';

export type HospitalSpec = Extract<SyntheticData, { generator: 'hospital' }>;

export const HOSPITAL_FEATURES = [
  'age', // years
  'heart_rate', // beats/min
  'resp_rate', // breaths/min
  'temperature', // °C
  'systolic_bp', // mmHg
  'spo2', // %
  'wbc', // 10^9/L
  'lactate', // mmol/L
  'creatinine', // mg/dL
  'platelets', // 10^9/L
  'bilirubin', // mg/dL
  'gcs', // Glasgow coma scale, 3..15
] as const;
export const HOSPITAL_LABEL = 'sepsis';
export const HOSPITAL_CLASSES = ['no', 'yes'] as const;
/** Share of recorded labels flipped (chart-review error). */
export const LABEL_NOISE = 0.05;

const D = HOSPITAL_FEATURES.length;

const softplus = (t: number) => (t > 30 ? t : Math.log1p(Math.exp(t)));
const sigmoid = (t: number) => 1 / (1 + Math.exp(-t));
const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));
const round = (v: number, digits: number) => {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
};

/** The shared ground truth: P(sepsis | x) for one patient's 12 values in HOSPITAL_FEATURES order. */
export function sepsisProbability(x: ArrayLike<number>): number {
  const [age, hr, rr, temp, sbp, spo2, wbc, lac, cr, plt, bili, gcs] = [x[0]!, x[1]!, x[2]!, x[3]!, x[4]!, x[5]!, x[6]!, x[7]!, x[8]!, x[9]!, x[10]!, x[11]!];
  const lowBp = sigmoid((100 - sbp) / 6);
  const highLactate = sigmoid((lac - 2) / 0.4);
  let z = 0;
  z += 0.03 * (age - 60);
  z += 0.9 * softplus((hr - 100) / 8);
  z += 1.0 * softplus((rr - 22) / 2.5);
  z += 1.6 * ((temp - 37.0) / 1.0) ** 2; // fever or hypothermia
  z += 1.1 * softplus((100 - sbp) / 8);
  z += 0.7 * softplus((93 - spo2) / 2);
  z += 1.6 * (Math.log(wbc / 8) / 0.5) ** 2; // leukocytosis or leukopenia
  z += 1.4 * softplus((lac - 2) / 0.8);
  z += 0.6 * softplus((cr - 1.4) / 0.3);
  z += 0.7 * softplus((150 - plt) / 30);
  z += 0.5 * softplus((bili - 1.3) / 0.4);
  z += 0.45 * (15 - gcs);
  z += 2.5 * lowBp * highLactate; // septic shock
  z += 2.0 * sigmoid((hr - 105) / 5) * sigmoid((temp - 38.2) / 0.25); // fever with tachycardia
  z += 1.6 * sigmoid((age - 72) / 4) * sigmoid((rr - 23) / 2); // old and breathless
  z += 1.5 * sigmoid((92 - spo2) / 1.5) * sigmoid((rr - 24) / 2); // respiratory failure
  // The factor 2 puts the best possible accuracy near 0.9 (with the label noise); the offset makes
  // about a quarter of an unshifted population septic.
  z = 2 * (z - 6.3);
  return sigmoid(z);
}

/** One patient of a hospital with covariate shift s, in charted units (rounded as charted). */
export function drawPatient(rng: Rng, shift: number, out: Float64Array): void {
  // A latent acuity drives most values toward "sick"; each value also has its own noise.
  const acuity = rng.normal(0.55 * shift, 1);
  const mix = (r: number) => r * acuity + Math.sqrt(1 - r * r) * rng.normal();
  const feverSign = rng.uniform() < 0.7 ? 1 : -1; // most infections run hot, some cold
  const wbcSign = rng.uniform() < 0.7 ? 1 : -1;
  const age = clamp(rng.normal(60 + 7 * shift, 17) + 3 * acuity, 18, 99);
  out[0] = Math.round(age);
  out[1] = Math.round(clamp(86 + 16 * mix(0.35), 35, 200));
  out[2] = Math.round(clamp(18 + 4.5 * mix(0.35), 8, 50));
  out[3] = round(clamp(37.0 + 0.7 * feverSign * Math.max(0, acuity) + 0.5 * rng.normal(), 33, 42), 1);
  out[4] = Math.round(clamp(126 - 19 * mix(0.32), 50, 230));
  out[5] = Math.round(clamp(100 - Math.exp(0.9 + 0.5 * mix(0.32)), 60, 100));
  out[6] = round(clamp(Math.exp(Math.log(8.2) + 0.35 * wbcSign * Math.max(0, acuity) + 0.3 * rng.normal()), 0.3, 80), 1);
  out[7] = round(clamp(Math.exp(Math.log(1.4) + 0.5 * mix(0.35)), 0.3, 20), 1);
  out[8] = round(clamp(Math.exp(Math.log(1.0) + (0.15 * (age - 60)) / 17 + 0.4 * mix(0.25)), 0.3, 12), 2);
  out[9] = Math.round(clamp(250 * Math.exp(0.3 * -mix(0.25)), 5, 900));
  out[10] = round(clamp(Math.exp(Math.log(0.7) + 0.5 * mix(0.25)), 0.1, 30), 1);
  out[11] = Math.round(clamp(15 - Math.max(0, 2.4 * mix(0.35) - 1.6), 3, 15));
}

/** The data seed of a site: spec.seed, or a hash of the site's name. */
export function hospitalSeed(spec: Pick<HospitalSpec, 'seed'>, site: string): number {
  return spec.seed ?? streamHash(0, ['hospital-site', site]);
}

/**
 * The hospital's patients as raw rows: n × 12 values (HOSPITAL_FEATURES order) and 0/1 labels
 * (1 = sepsis), in the order they were admitted.
 */
export function hospitalPatients(spec: Pick<HospitalSpec, 'samples' | 'prevalence' | 'shift' | 'seed'>, ctx: Pick<LoadContext, 'site' | 'jobSeed'>): RawSplit {
  const rng = Rng.from(ctx.jobSeed, 'hospital', hospitalSeed(spec, ctx.site));
  const n = spec.samples;
  const wantPos = Math.round(spec.prevalence * n);
  const want = [n - wantPos, wantPos];
  const have = [0, 0];
  const values = new Float64Array(n * D);
  const y = new Int32Array(n);
  const x = new Float64Array(D);
  // Every draw is a positive (or a negative) with probability at least LABEL_NOISE, so this ends
  // after at most about n / LABEL_NOISE draws; the bound is a guard, not a tuning knob.
  const maxDraws = 100 * n + 10_000;
  let taken = 0;
  for (let draw = 0; taken < n; draw++) {
    if (draw >= maxDraws) {
      throw new WorkerError('CONSORT_W_DATA_EMPTY', `site "${ctx.site}": could not draw ${n} patients at prevalence ${spec.prevalence}`);
    }
    drawPatient(rng, spec.shift, x);
    const p = LABEL_NOISE + (1 - 2 * LABEL_NOISE) * sepsisProbability(x);
    const label = rng.uniform() < p ? 1 : 0;
    if (have[label]! >= want[label]!) continue;
    have[label]!++;
    values.set(x, taken * D);
    y[taken++] = label;
  }
  return { values, y, n };
}

/** The hospital's patients as a table with a header, for CSV fixtures: values then "yes"/"no". */
export function hospitalRows(
  spec: Pick<HospitalSpec, 'samples' | 'prevalence' | 'shift' | 'seed'>,
  ctx: Pick<LoadContext, 'site' | 'jobSeed'>,
): { header: string[]; rows: (number | string)[][] } {
  const { values, y, n } = hospitalPatients(spec, ctx);
  const rows: (number | string)[][] = [];
  for (let i = 0; i < n; i++) rows.push([...values.subarray(i * D, (i + 1) * D), HOSPITAL_CLASSES[y[i]!]!]);
  return { header: [...HOSPITAL_FEATURES, HOSPITAL_LABEL], rows };
}

/** Rows as CSV text (numbers print exactly, so the CSV loader reads back the same values). */
export function toCsvText(table: { header: string[]; rows: (number | string)[][] }, delimiter = ','): string {
  return `${[table.header, ...table.rows].map((r) => r.join(delimiter)).join('\n')}\n`;
}

export function hospitalSiteData(spec: HospitalSpec, ctx: LoadContext): SiteData {
  const classes = ctx.classes ?? [...HOSPITAL_CLASSES];
  // The job may name the classes in another order; labels map by name, as a CSV's would.
  const index = HOSPITAL_CLASSES.map((c) => classes.indexOf(c));
  if (index.some((i) => i < 0)) {
    throw new WorkerError(
      'CONSORT_W_DATA_LABEL',
      `site "${ctx.site}": the hospital generator labels "no"/"yes", but the job's classes are ${classes.map((c) => `"${c}"`).join(', ')}`,
    );
  }
  const raw = hospitalPatients(spec, ctx);
  const all: RawSplit = { values: raw.values, y: raw.y.map((v) => index[v]!), n: raw.n };
  const split = splitIndices(all.n, spec.testFraction, Rng.from(ctx.jobSeed, 'split', ctx.site));
  return tabularSiteData({
    features: [...HOSPITAL_FEATURES],
    classes,
    train: selectRows(all, D, split.train),
    test: selectRows(all, D, split.test),
    missing: {},
    rejected: {},
    scaler: HOSPITAL_REFERENCE,
  });
}
