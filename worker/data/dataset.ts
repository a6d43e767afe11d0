// A site's examples as flat typed arrays: the only form in which data reaches the local trainer.
import type { FeatureMoments, InputScaler } from '../../core/data/moments.ts';
import type { DataQuality } from '../../core/data/quality.ts';
import type { Rng } from '../../core/rng.ts';

/** n examples, each a row-major block of prod(sampleShape) float32 values, with a class index. */
export interface Dataset {
  x: Float32Array;
  y: Int32Array;
  n: number;
  sampleShape: number[];
}

export interface SiteData {
  train: Dataset;
  test: Dataset;
  /** Class names in class-index order. */
  classes: string[];
  /** Tabular data only: the feature columns, in the order of a sample's values. */
  featureNames?: string[];
  quality: DataQuality;
  /** Tabular data scaled by its train split: that split's moments, which the federation pools (core/data/moments.ts). */
  moments?: FeatureMoments;
}

export function sampleSize(sampleShape: readonly number[]): number {
  return sampleShape.reduce((a, b) => a * b, 1);
}

export function emptyDataset(sampleShape: readonly number[]): Dataset {
  return { x: new Float32Array(0), y: new Int32Array(0), n: 0, sampleShape: [...sampleShape] };
}

/** All examples of parts, in order (the pooled baseline). Every part must have the same sample shape. */
export function concatDatasets(parts: readonly Dataset[]): Dataset {
  if (parts.length === 0) throw new RangeError('concatDatasets: no datasets');
  const shape = parts[0]!.sampleShape;
  const size = sampleSize(shape);
  let n = 0;
  for (const p of parts) {
    if (p.sampleShape.length !== shape.length || p.sampleShape.some((d, i) => d !== shape[i])) {
      throw new RangeError(`concatDatasets: sample shape [${p.sampleShape}] differs from [${shape}]`);
    }
    n += p.n;
  }
  const x = new Float32Array(n * size);
  const y = new Int32Array(n);
  let at = 0;
  for (const p of parts) {
    x.set(p.x.subarray(0, p.n * size), at * size);
    y.set(p.y.subarray(0, p.n), at);
    at += p.n;
  }
  return { x, y, n, sampleShape: [...shape] };
}

/** The examples at indices, in that order (copied). */
export function selectExamples(ds: Dataset, indices: ArrayLike<number>): Dataset {
  const size = sampleSize(ds.sampleShape);
  const x = new Float32Array(indices.length * size);
  const y = new Int32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const j = indices[i]!;
    x.set(ds.x.subarray(j * size, (j + 1) * size), i * size);
    y[i] = ds.y[j]!;
  }
  return { x, y, n: indices.length, sampleShape: [...ds.sampleShape] };
}

/**
 * Indices of [0, n) shuffled by rng, cut into a test part of round(n * testFraction) and the rest
 * for training. With n >= 2 each part keeps at least one example; each part is in ascending order
 * so that the split, not the shuffle, is what the seed decides.
 */
export function splitIndices(n: number, testFraction: number, rng: Rng): { train: Int32Array; test: Int32Array } {
  if (!(testFraction > 0 && testFraction < 1)) throw new RangeError(`testFraction must be in (0, 1), got ${testFraction}`);
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  rng.shuffle(order);
  let nTest = Math.round(n * testFraction);
  if (n >= 2) nTest = Math.min(n - 1, Math.max(1, nTest));
  else nTest = 0;
  const test = order.slice(0, nTest).sort();
  const train = order.slice(nTest).sort();
  return { train, test };
}

/** A seeded shuffled train/test split of ds (see splitIndices). */
export function splitDataset(ds: Dataset, testFraction: number, rng: Rng): { train: Dataset; test: Dataset } {
  const { train, test } = splitIndices(ds.n, testFraction, rng);
  return { train: selectExamples(ds, train), test: selectExamples(ds, test) };
}

/** Examples per class name. */
export function labelCounts(classes: readonly string[], ...parts: Dataset[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const c of classes) counts[c] = 0;
  for (const p of parts) {
    for (let i = 0; i < p.n; i++) {
      const name = classes[p.y[i]!]!;
      counts[name] = (counts[name] ?? 0) + 1;
    }
  }
  return counts;
}

/** Adds each count of from into into (quality reports of two files). */
export function addCounts(into: Record<string, number>, from: Record<string, number>): void {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
}

/** What a loader knows about the site it loads for. */
export interface LoadContext {
  site: string;
  jobSeed: number;
  /** Relative data paths resolve against this folder (the job file's). */
  baseDir: string;
  /** The job's classes in class-index order; when absent, the sorted distinct labels of this site. */
  classes?: string[];
  /** The federation's input scaling (tabular data), once the job knows it; before, a site scales by its own train split. */
  scaler?: InputScaler;
  /**
   * The inputs as they are, never scaled (a pre-trained model: its file was trained on raw
   * columns); a missing value becomes the column's mean over this site's train split.
   */
  raw?: boolean;
}

/**
 * Class names in a stable order: numerically when every label is a number ("2" before "10"),
 * otherwise by UTF-16 code units (never locale-dependent).
 */
export function sortLabels(labels: Iterable<string>): string[] {
  const distinct = [...new Set(labels)];
  if (distinct.every((l) => l.trim() !== '' && Number.isFinite(Number(l)))) {
    return distinct.sort((a, b) => Number(a) - Number(b) || (a < b ? -1 : a > b ? 1 : 0));
  }
  return distinct.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}
