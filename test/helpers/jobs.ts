// FederatedJob manifests for end-to-end tests, written as YAML the way a user writes them, and
// the outputs of a finished run read back.
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { stringify } from 'yaml';
import { API_VERSION, FederatedJob, KIND } from '../../core/job/federated-job.ts';
import { RunReport } from '../../core/report/run-report.ts';

/** A FederatedJob with `spec` (loosely typed on purpose: tests also write invalid specs). */
export function jobManifest(name: string, spec: Record<string, unknown>): Record<string, unknown> {
  return { apiVersion: API_VERSION, kind: KIND, metadata: { name }, spec };
}

/** Writes the job as YAML to dir/file and returns the path. */
export function writeJob(dir: string, spec: Record<string, unknown>, opts: { name?: string; file?: string } = {}): string {
  const path = join(dir, opts.file ?? 'job.yaml');
  writeFileSync(path, stringify(jobManifest(opts.name ?? 'e2e', spec)));
  return path;
}

export interface HospitalSite {
  name: string;
  samples: number;
  prevalence?: number;
  shift?: number;
}

/** Three small synthetic hospitals: quick to train, different enough to be non-IID. */
export const SMALL_HOSPITALS: HospitalSite[] = [
  { name: 'north', samples: 150, prevalence: 0.3, shift: 0 },
  { name: 'south', samples: 150, prevalence: 0.4, shift: 0.4 },
  { name: 'east', samples: 150, prevalence: 0.25, shift: -0.3 },
];

/** A spec over synthetic hospitals; `extra` overrides or adds top-level spec fields. */
export function hospitalSpec(sites: HospitalSite[] = SMALL_HOSPITALS, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    model: { type: 'mlp', hidden: [16] },
    sites: sites.map((s) => ({
      name: s.name,
      data: { type: 'synthetic', generator: 'hospital', samples: s.samples, prevalence: s.prevalence ?? 0.3, shift: s.shift ?? 0, testFraction: 0.3 },
    })),
    rounds: 3,
    training: { epochs: 2, batchSize: 32, optimizer: 'sgd', learningRate: 0.1 },
    strategy: { name: 'fedavg' },
    seed: 7,
    ...extra,
  };
}

/** A job of two hospital sites of 80 patients, with `extra` in its spec: the pair the NATS integration tests play. */
export function twoSites(name: string, sites: [string, string], extra: Record<string, unknown> = {}): FederatedJob {
  return FederatedJob.parse(
    jobManifest(
      name,
      hospitalSpec(
        sites.map((s) => ({ name: s, samples: 80 })),
        extra,
      ),
    ),
  );
}

/** report.json of a finished run, validated against the documented schema. */
export function readReport(outDir: string): RunReport {
  return RunReport.parse(JSON.parse(readFileSync(join(outDir, 'report.json'), 'utf8')));
}

/** tfjs/model.json and weights.bin of a finished run, loaded as a user of the export loads them (dispose it after). */
export async function loadExportedModel(outDir: string): Promise<tf.LayersModel> {
  const modelJson = JSON.parse(readFileSync(join(outDir, 'tfjs/model.json'), 'utf8')) as {
    modelTopology: object;
    weightsManifest: tf.io.WeightsManifestConfig;
  };
  const bin = readFileSync(join(outDir, 'tfjs/weights.bin'));
  return tf.loadLayersModel(
    tf.io.fromMemory({
      modelTopology: modelJson.modelTopology,
      weightSpecs: modelJson.weightsManifest.flatMap((g) => g.weights),
      weightData: bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength),
    }),
  );
}

/** What a failed run may have left: outDir itself or a staging sibling `.NAME.partial-*`. */
export function leftovers(outDir: string): string[] {
  const parent = dirname(outDir);
  const found: string[] = existsSync(outDir) ? [outDir] : [];
  if (existsSync(parent)) {
    const staging = `.${basename(outDir)}.partial-`;
    found.push(
      ...readdirSync(parent)
        .filter((f) => f.startsWith(staging))
        .map((f) => join(parent, f)),
    );
  }
  return found;
}
