// `consort run`: a FederatedJob trained on one machine. Sites run in a thread pool behind the
// in-process transport; the round loop is the same RoundCoordinator the operator runs.
import { coarseInputsWarning, federationScaler } from '../../core/data/moments.ts';
import { fixedInputScaler } from '../../core/data/reference-scalers.ts';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import { initialParameters, layoutSize } from '../../core/model/layout.ts';
import { tuneGcForModel } from '../../core/gc-tuning.ts';
import { carriesWeights } from '../../core/model/tfjs-weights.ts';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { ModelSpec } from '../../core/job/federated-job.ts';
import { weightedMean } from '../../core/metrics/aggregate.ts';
import { aucTargetWarnings, dataWarnings, scaleWarnings } from '../../core/job/warnings.ts';
import { assembleRunReport } from '../../core/report/assemble.ts';
import type { RunReport } from '../../core/report/run-report.ts';
import type { SiteEvaluation } from '../../core/protocol/transport.ts';
import { RoundCoordinator, type RoundEvents } from '../../operator/coordinator/round-coordinator.ts';
import type { BackendPreference } from '../../worker/backend.ts';
import { sortLabels } from '../../worker/data/dataset.ts';
import { SitePool } from '../../worker/site-pool.ts';
import type { ExportedModel, SiteDescription } from '../../worker/site-worker.ts';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { featuresDiffer } from '../../core/data/features.ts';
import { CliError } from '../errors.ts';
import { InProcessTransport } from './in-process-transport.ts';

export interface LocalRunOptions {
  job: FederatedJob;
  /** Folder that relative paths in the job resolve against. */
  baseDir: string;
  baselines: boolean;
  backend: BackendPreference;
  threads?: number;
  events?: RoundEvents & { phase?(what: string): void };
  /** What the data says against the job (a class no site has), said before training; the run goes on. */
  warn?: (line: string) => void;
}

export interface LocalRunResult {
  report: RunReport;
  layout: ParameterLayout;
  weights: Float32Array;
  tfjsModel: ExportedModel;
}

export async function runLocal(opts: LocalRunOptions): Promise<LocalRunResult> {
  const { job, baseDir } = opts;
  const spec = job.spec;
  const startedAt = new Date();
  const t0 = performance.now();
  const pool = SitePool.start({ spec, baseDir, backend: opts.backend }, opts.threads);
  try {
    opts.events?.phase?.(
      `reading the data of ${spec.sites.length} site${spec.sites.length === 1 ? '' : 's'} on ${pool.size} thread${pool.size === 1 ? '' : 's'}`,
    );
    const described = await Promise.all(spec.sites.map((_, i) => pool.describe(i)));
    const classes = spec.classes ?? sortLabels(described.flatMap((d) => d.labels));
    if (classes.length < 2) {
      throw new CliError('CONSORT_CLI_DATA', `the sites' data has only the label ${JSON.stringify(classes[0])}: a classifier needs at least two classes`);
    }
    // What each site said of its labels, for the warnings below.
    const labelCounts = described.map((d, i) => ({ site: spec.sites[i]!.name, labels: d.quality.labels, trainLabels: d.quality.trainLabels }));
    for (const w of dataWarnings(classes, labelCounts, spec.classes !== undefined)) opts.warn?.(w);
    for (const w of aucTargetWarnings(spec, labelCounts)) opts.warn?.(w);
    for (const w of scaleWarnings(described)) opts.warn?.(w);
    const sampleShape = agreeOnShape(described);
    // One scaling for the federation (tabular data): the pooled moments of every site's train split.
    // A pre-trained model (its file carries weights) takes the inputs it was trained on, unscaled.
    const inputScaler = modelFileHasWeights(spec.model, opts.baseDir) ? undefined : (federationScaler(described) ?? fixedInputScaler(spec));
    const prepared = await pool.prepare(classes, sampleShape, inputScaler);
    // As the coordinator and the sites do over NATS (core/gc-tuning.ts): a large model, memory first.
    tuneGcForModel(4 * layoutSize(prepared.layout));
    opts.events?.phase?.(`backend ${prepared.backend.name}: ${prepared.backend.reason}`);
    // A pre-trained model file starts from its own weights; otherwise a seeded start.
    const initial = prepared.initial ?? initialParameters(prepared.layout, spec.seed);

    const coordinator = new RoundCoordinator({
      spec,
      initial,
      transport: new InProcessTransport(
        pool,
        spec.sites.map((s) => s.name),
        { layout: prepared.layout, compression: spec.compression },
        {
          roundDeadlineSeconds: spec.aggregation.roundDeadlineSeconds,
          ...(spec.aggregation.mode === 'buffered' ? { buffered: { maxStaleness: spec.aggregation.maxStaleness } } : {}),
        },
      ),
      ...(opts.events ? { events: opts.events } : {}),
    });
    const result = await coordinator.run();
    let baselines: Pick<RunReport['final'], 'siteAlone' | 'siteAloneMean' | 'pooled'> = {};
    if (opts.baselines) {
      opts.events?.phase?.('training the baselines: each site alone, and all data pooled');
      baselines = await trainBaselines(pool, described, initial, result.roundsCompleted * spec.training.epochs, spec.training.batchSize, result.final);
    }
    const tfjsModel = await pool.exportModel(result.global);
    const coarse = coarseInputsWarning(tfjsModel.coarseColumns, inputScaler, described[0]?.features);
    if (coarse) opts.warn?.(coarse);
    const report = assembleRunReport({
      job,
      layout: prepared.layout,
      classes,
      sampleShape,
      ...(described[0]?.features ? { features: described[0].features } : {}),
      ...(inputScaler ? { inputScaler, tfjsTakesRawInputs: tfjsModel.takesRawInputs === true } : {}),
      initialWeights: prepared.initial ? 'model file' : 'seeded',
      backend: prepared.backend,
      startedAt,
      durationMs: performance.now() - t0,
      sites: described.map((d) => ({ site: d.site, quality: d.quality })),
      result,
      baselines,
    });
    return { report, layout: prepared.layout, weights: result.global, tfjsModel };
  } finally {
    await pool.close();
  }
}

function agreeOnShape(described: SiteDescription[]): number[] {
  const first = described[0]!;
  for (const d of described) {
    // Columns by name first (which ones differ says more than how many), then the shape; the same
    // count of features is not enough either: a weight belongs to a column by position.
    const differ = featuresDiffer(first.features, d.features, { a: `"${first.site}"`, b: `"${d.site}"` });
    if (differ) throw new CliError('CONSORT_CLI_DATA', `sites disagree on the feature columns: "${first.site}" and "${d.site}": ${differ}`);
    if (d.sampleShape.join('x') !== first.sampleShape.join('x')) {
      throw new CliError(
        'CONSORT_CLI_DATA',
        `sites disagree on the shape of an example: "${first.site}" has [${first.sampleShape.join(', ')}], "${d.site}" has [${d.sampleShape.join(', ')}]`,
      );
    }
  }
  return first.sampleShape;
}

/**
 * Site-alone and pooled baselines under one compute budget: the pooled model trains for the
 * federated run's total local epochs; each site alone takes as many optimizer steps as that
 * (so a small site is not short-changed by having few batches per epoch). Scored the same way
 * as the federated model: on each site's own test split, sample-weighted.
 */
async function trainBaselines(
  pool: SitePool,
  described: SiteDescription[],
  initial: Float32Array,
  epochs: number,
  batchSize: number,
  federated: SiteEvaluation[],
): Promise<Pick<RunReport['final'], 'siteAlone' | 'siteAloneMean' | 'pooled'>> {
  const all = described.map((_, i) => i);
  const batches = (n: number) => Math.max(1, Math.ceil(n / batchSize));
  const pooledSteps = batches(described.reduce((n, d) => n + d.quality.trainSamples, 0)) * epochs;
  const [pooled, ...alone] = await Promise.all([
    pool.trainCentral(all, initial, epochs, 0),
    ...described.map((d, i) => pool.trainCentral([i], initial, Math.ceil(pooledSteps / batches(d.quality.trainSamples)), i + 1)),
  ]);
  const siteAlone = Object.fromEntries(alone.map((r) => [r[0]!.site, r[0]!.accuracy]));
  const weights = new Map(federated.map((s) => [s.site, s.samples]));
  return {
    siteAlone,
    siteAloneMean: weightedMean(alone.map((r) => ({ samples: weights.get(r[0]!.site) ?? r[0]!.samples, value: r[0]!.accuracy }))),
    pooled: weightedMean(pooled!.map((s) => ({ samples: s.samples, value: s.accuracy }))),
  };
}

/** Whether the job's model is a Layers file that carries weights; a file that cannot be read is the sites' to report. */
function modelFileHasWeights(model: ModelSpec, baseDir: string): boolean {
  if (model.type !== 'layers') return false;
  try {
    return carriesWeights(JSON.parse(readFileSync(resolve(baseDir, model.path), 'utf8')));
  } catch {
    return false;
  }
}
