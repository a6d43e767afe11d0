// The devices of the FedProx Synthetic sets (Li et al., "Federated Optimization in Heterogeneous
// Networks", MLSys 2020), as the paper's reference code generate_synthetic.py draws them:
// x ~ N(v, Σ) with Σ = diag(j^-1.2), j = 1..d, y = argmax(softmax(x W + b)), and the device's
// examples shuffled and cut 90/10 into train and test. No feature scaling (the paper has none).
import type { Rng } from '../../../core/rng.ts';
import { WorkerError } from '../../errors.ts';
import { type Dataset, labelCounts, type SiteData } from '../dataset.ts';

/** int(lognormal(4, 2)) + 50, the paper's examples per device. */
export function lognormalSamples(rng: Rng): number {
  return Math.trunc(rng.lognormal(4, 2)) + 50;
}

/** W is d × k row-major (x W, as in the reference code), b has k entries. */
export interface LinearSoftmaxModel {
  d: number;
  k: number;
  W: Float64Array;
  b: Float64Array;
}

/** n examples with mean v (d values), labelled by the model; rng also shuffles for the split. */
export function drawDevice(rng: Rng, n: number, v: Float64Array, model: LinearSoftmaxModel): { train: Dataset; test: Dataset } {
  const { d, k, W, b } = model;
  const sd = new Float64Array(d);
  for (let j = 0; j < d; j++) sd[j] = Math.sqrt((j + 1) ** -1.2); // Σ is a covariance: sd = sqrt(Σ_jj)
  const x = new Float32Array(n * d);
  const y = new Int32Array(n);
  const logits = new Float64Array(k);
  for (let i = 0; i < n; i++) {
    const row = x.subarray(i * d, (i + 1) * d);
    for (let j = 0; j < d; j++) row[j] = rng.normal(v[j]!, sd[j]!);
    logits.set(b);
    for (let j = 0; j < d; j++) {
      const xj = row[j]!; // the stored (float32) value, so the label is a function of what the model sees
      for (let c = 0; c < k; c++) logits[c]! += xj * W[j * k + c]!;
    }
    // argmax of softmax is argmax of the logits; ties go to the first, as np.argmax.
    let best = 0;
    for (let c = 1; c < k; c++) if (logits[c]! > logits[best]!) best = c;
    y[i] = best;
  }
  // random.shuffle, then the first int(0.9 n) train (at least one).
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  rng.shuffle(order);
  const nTrain = Math.max(1, Math.floor(0.9 * n));
  const pick = (idx: Int32Array): Dataset => {
    const px = new Float32Array(idx.length * d);
    const py = new Int32Array(idx.length);
    idx.forEach((src, i) => {
      px.set(x.subarray(src * d, (src + 1) * d), i * d);
      py[i] = y[src]!;
    });
    return { x: px, y: py, n: idx.length, sampleShape: [d] };
  };
  return { train: pick(order.subarray(0, nTrain)), test: pick(order.subarray(nTrain)) };
}

/** Class names "0".."k-1", or the job's names for them (there must be exactly k). */
export function indexClasses(k: number, jobClasses: string[] | undefined, what: string): string[] {
  if (jobClasses === undefined) return Array.from({ length: k }, (_, i) => String(i));
  if (jobClasses.length !== k) {
    throw new WorkerError('CONSORT_W_DATA_SCHEMA', `${what} has ${k} classes, but the job names ${jobClasses.length}`);
  }
  return [...jobClasses];
}

export function syntheticSiteData(split: { train: Dataset; test: Dataset }, classes: string[]): SiteData {
  const { train, test } = split;
  return {
    train,
    test,
    classes,
    quality: {
      rowsUsed: train.n + test.n,
      rowsRejected: {},
      missing: {},
      labels: labelCounts(classes, train, test),
      trainSamples: train.n,
      testSamples: test.n,
    },
  };
}
