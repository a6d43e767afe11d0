// Tabular site data, whichever source the rows came from (CSV file or synthetic hospital): the
// same scaling and the same quality report, so a CSV written from synthetic rows loads identically.
import type { DataQuality } from '../../core/data/quality.ts';
import { type Dataset, labelCounts, type SiteData } from './dataset.ts';
import { momentsOf, scalerOf } from '../../core/data/moments.ts';
import { applyStandardizer, rawInputs, type Standardizer } from './standardize.ts';
import { WorkerError } from '../errors.ts';

/** Raw (unscaled) rows of one split: n × d values, NaN where missing, with class indices. */
export interface RawSplit {
  values: Float64Array;
  y: Int32Array;
  n: number;
}

/** The rows at indices, in that order. */
export function selectRows(raw: RawSplit, d: number, indices: ArrayLike<number>): RawSplit {
  const values = new Float64Array(indices.length * d);
  const y = new Int32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const j = indices[i]!;
    values.set(raw.values.subarray(j * d, (j + 1) * d), i * d);
    y[i] = raw.y[j]!;
  }
  return { values, y, n: indices.length };
}

/**
 * Site data from raw feature rows, standardised (missing values become the mean): with a fixed
 * scaler if given, else none at all for `raw`, else the federation's if known, else the train
 * split's own mean and std; with
 * the quality report, and the train split's moments where they decide the scaling.
 */
export function tabularSiteData(args: {
  features: string[];
  classes: string[];
  train: RawSplit;
  test: RawSplit;
  missing: Record<string, number>;
  rejected: Record<string, number>;
  /** A scaling fixed in advance (e.g. clinical reference ranges) instead of one fitted on train. */
  scaler?: Standardizer;
  /** The federation's scaling (pooled moments of every site's train split), when the job knows it. */
  federation?: Standardizer;
  /** No scaling (a pre-trained model takes the columns as they are): a missing value becomes the train split's mean. */
  raw?: boolean;
}): SiteData {
  const d = args.features.length;
  if (args.federation && args.federation.mean.length !== d) {
    throw new WorkerError('CONSORT_W_DATA_SCHEMA', `the federation's input scaling has ${args.federation.mean.length} features; this site's data has ${d}`);
  }
  // Fitted on this site's train split alone until the federation's is known: the moments go out with the site's hello.
  const moments = args.scaler ? undefined : momentsOf(args.train.values, args.train.n, d);
  // A pre-trained model's inputs are its own: every site feeds it the columns unscaled (scaling
  // each by its own split, as before the federation's scaler is known, would give every site
  // other inputs for the same rows, and figures that describe no exported model).
  const scaler = args.scaler ?? (args.raw ? rawInputs(moments!.mean) : (args.federation ?? scalerOf(moments!)));
  const train: Dataset = { x: applyStandardizer(args.train.values, args.train.n, d, scaler), y: args.train.y, n: args.train.n, sampleShape: [d] };
  const test: Dataset = { x: applyStandardizer(args.test.values, args.test.n, d, scaler), y: args.test.y, n: args.test.n, sampleShape: [d] };
  const quality: DataQuality = {
    rowsUsed: train.n + test.n,
    rowsRejected: args.rejected,
    missing: args.missing,
    labels: labelCounts(args.classes, train, test),
    trainLabels: labelCounts(args.classes, train),
    trainSamples: train.n,
    testSamples: test.n,
  };
  return { train, test, classes: args.classes, featureNames: args.features, quality, ...(moments ? { moments } : {}) };
}
