// Site data on disk for end-to-end tests: hospital patients as CSV files, and tiny image folders.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { PNG } from 'pngjs';
import { Rng } from '../../core/rng.ts';
import { HOSPITAL_FEATURES, HOSPITAL_LABEL, hospitalRows, toCsvText } from '../../worker/data/synthetic/hospital.ts';

export interface CsvSite {
  name: string;
  train: number;
  test: number;
  prevalence: number;
  shift: number;
  /** Feature values to leave empty in the train file: column name → how many rows. */
  blanks?: Record<string, number>;
}

export interface WrittenCsvSite {
  name: string;
  /** Paths relative to the job's folder, as the job names them. */
  train: string;
  test: string;
  /** Data rows (header excluded) of each file. */
  trainRows: number;
  testRows: number;
}

function writeFile(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

/**
 * Writes data/SITE/train.csv and data/SITE/test.csv under jobDir: synthetic patients (train and
 * test drawn separately), label column `sepsis` with "yes"/"no".
 */
export function writeHospitalCsvSite(jobDir: string, site: CsvSite, seed: number): WrittenCsvSite {
  const draw = (samples: number, part: number) =>
    hospitalRows({ samples, prevalence: site.prevalence, shift: site.shift, seed: seed * 10 + part }, { site: site.name, jobSeed: seed });
  const train = draw(site.train, 1);
  const test = draw(site.test, 2);
  // Blank the first rows of each named column, so the missing counts are known exactly.
  for (const [column, count] of Object.entries(site.blanks ?? {})) {
    const c = train.header.indexOf(column);
    if (c < 0) throw new Error(`no column ${column}`);
    for (let i = 0; i < count; i++) train.rows[i * 3]![c] = '';
  }
  const rel = { train: `data/${site.name}/train.csv`, test: `data/${site.name}/test.csv` };
  writeFile(join(jobDir, rel.train), toCsvText(train));
  writeFile(join(jobDir, rel.test), toCsvText(test));
  return { name: site.name, ...rel, trainRows: train.rows.length, testRows: test.rows.length };
}

/** A site's `data` entry for CSV files. */
export function csvData(site: { train: string; test?: string }, labelColumn = HOSPITAL_LABEL): Record<string, unknown> {
  return { type: 'csv', train: site.train, ...(site.test ? { test: site.test } : {}), labelColumn };
}

/** A CSV text with the hospital header and the given data lines (for broken files). */
export function hospitalCsvText(lines: string[]): string {
  return `${[[...HOSPITAL_FEATURES, HOSPITAL_LABEL].join(','), ...lines].join('\n')}\n`;
}

/** Writes text to jobDir/rel (making folders) and returns rel. */
export function writeDataFile(jobDir: string, rel: string, text: string): string {
  writeFile(join(jobDir, rel), text);
  return rel;
}

/**
 * Writes an image folder: one sub-folder per class ("left", "right") of size×size RGB PNGs whose
 * left (or right) half is bright, with noise, so that a small CNN separates them quickly.
 */
export function writeHalvesImageFolder(folder: string, perClass: number, seed: number, size = 8): void {
  const rng = Rng.from(seed, 'e2e-images', folder);
  for (const cls of ['left', 'right'] as const) {
    mkdirSync(join(folder, cls), { recursive: true });
    for (let k = 0; k < perClass; k++) {
      const png = new PNG({ width: size, height: size });
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          const bright = cls === 'left' ? x < size / 2 : x >= size / 2;
          const v = Math.round(Math.min(255, Math.max(0, (bright ? 190 : 60) + 40 * rng.normal())));
          const at = 4 * (y * size + x);
          png.data[at] = v;
          png.data[at + 1] = v;
          png.data[at + 2] = v;
          png.data[at + 3] = 255;
        }
      }
      writeFileSync(join(folder, cls, `${String(k).padStart(3, '0')}.png`), PNG.sync.write(png));
    }
  }
}

/** model.json + weights.bin in `dir`: a dense 12 -> `units` (8) -> 2 model whose weights are `fill(i)`, as TF.js saves it. */
export async function writePretrainedDense(dir: string, fill: (i: number) => number, units = 8): Promise<Float32Array> {
  const model = tf.sequential({
    layers: [tf.layers.dense({ units, activation: 'relu', inputShape: [HOSPITAL_FEATURES.length], name: 'h' }), tf.layers.dense({ units: 2, name: 'out' })],
  });
  model.setWeights(
    model.weights.map((w) =>
      tf.tensor(
        Float32Array.from({ length: w.shape.reduce((a, b) => a! * b!, 1)! }, (_, i) => fill(i)),
        w.shape as number[],
      ),
    ),
  );
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      writeFileSync(join(dir, 'weights.bin'), new Uint8Array(a.weightData as ArrayBuffer));
      writeFileSync(
        join(dir, 'model.json'),
        JSON.stringify({ modelTopology: a.modelTopology, weightsManifest: [{ paths: ['weights.bin'], weights: a.weightSpecs }] }),
      );
      return { modelArtifactsInfo: { dateSaved: new Date(0), modelTopologyType: 'JSON' } };
    }),
  );
  return Float32Array.from(model.weights.flatMap((w) => [...(w.read().dataSync() as Float32Array)]));
}
