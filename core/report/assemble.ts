// Builds report.json from what the round loop returns: shared by the local runner and the
// NATS coordinator, so both write the same document for the same run.
import type { InputScaler } from '../data/moments.ts';
import { fixedInputScaler } from '../data/reference-scalers.ts';
import type { FederatedJob } from '../job/federated-job.ts';
import { globalMetrics, spread } from '../metrics/aggregate.ts';
import { type ParameterLayout, layoutSize } from '../model/layout.ts';
import type { DataQuality } from '../data/quality.ts';
import type { SiteEvaluation } from '../protocol/transport.ts';
import { REPORT_FORMAT, type RoundRecord, type RunReport } from './run-report.ts';
import { sha256Hex } from '../protocol/digest.ts';

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** SHA-256 of the weights as little-endian float32 bytes in layout order. */
export function weightsSha256(weights: Float32Array): string {
  // The array's own bytes where the machine is little-endian (a 1 GB model is not copied).
  if (LITTLE_ENDIAN) return sha256Hex(new Uint8Array(weights.buffer, weights.byteOffset, weights.byteLength));
  const le = new Uint8Array(weights.length * 4);
  const view = new DataView(le.buffer);
  for (let i = 0; i < weights.length; i++) view.setFloat32(i * 4, weights[i]!, true);
  return sha256Hex(le);
}

export interface RunFacts {
  job: FederatedJob;
  layout: ParameterLayout;
  classes: string[];
  sampleShape: number[];
  /** Tabular data: the feature names, in input order. */
  features?: string[];
  /** The federation's input scaling (tabular data scaled by its train splits). */
  inputScaler?: InputScaler;
  /** The exported TF.js model has that scaling folded in, and takes raw values. */
  tfjsTakesRawInputs?: boolean;
  /** Where round 1 started: the model file's weights (a pre-trained model), or seeded ones. */
  initialWeights: 'model file' | 'seeded';
  backend: { name: string; reason: string };
  startedAt: Date;
  durationMs: number;
  /** The run went on from a checkpoint after this round (a coordinator started again): startedAt and durationMs are the last process's. */
  resumedAfterRound?: number;
  sites: Array<{ site: string; quality: DataQuality }>;
  result: {
    global: Float32Array;
    rounds: RoundRecord[];
    roundsCompleted: number;
    stoppedBy: RunReport['final']['stoppedBy'];
    final: SiteEvaluation[];
    /** Sites asked to score the final model that did not. */
    finalMissing?: Array<{ site: string; reason: string }>;
  };
  baselines?: Pick<RunReport['final'], 'siteAlone' | 'siteAloneMean' | 'pooled'>;
}

export function assembleRunReport(f: RunFacts): RunReport {
  const { job, result } = f;
  const g = globalMetrics(result.final);
  return {
    format: REPORT_FORMAT,
    job: job.metadata.name,
    ...(job.metadata.namespace ? { namespace: job.metadata.namespace } : {}),
    seed: job.spec.seed,
    backend: f.backend.name,
    backendReason: f.backend.reason,
    strategy: job.spec.strategy.name,
    settings: {
      strategy: job.spec.strategy,
      training: job.spec.training,
      sampling: job.spec.sampling,
      aggregation: job.spec.aggregation,
      compression: job.spec.compression,
      model: job.spec.model,
      rounds: job.spec.rounds,
      evaluation: job.spec.evaluation,
      stopping: job.spec.stopping,
    },
    model: {
      type: job.spec.model.type,
      parameters: layoutSize(f.layout),
      inputShape: f.sampleShape,
      classes: f.classes,
      ...(f.features ? { features: f.features } : {}),
      ...(f.inputScaler ? { inputScaler: f.inputScaler, inputScalerFrom: fixedInputScaler(job.spec) ? ('reference' as const) : ('pooled' as const) } : {}),
      ...(f.tfjsTakesRawInputs !== undefined ? { tfjsTakesRawInputs: f.tfjsTakesRawInputs } : {}),
      initialWeights: f.initialWeights,
      ...(f.sampleShape.length === 3
        ? {
            imageInput: {
              height: f.sampleShape[0]!,
              width: f.sampleShape[1]!,
              channels: f.sampleShape[2]!,
              color: f.sampleShape[2] === 1 ? ('grayscale' as const) : ('rgb' as const),
              resize: 'bilinear-half-pixel' as const,
              scale: 'divide-by-255' as const,
              layout: 'NHWC' as const,
            },
          }
        : {}),
    },
    startedAt: f.startedAt.toISOString(),
    durationMs: f.durationMs,
    ...(f.resumedAfterRound ? { resumedAfterRound: f.resumedAfterRound } : {}),
    sites: f.sites,
    rounds: result.rounds,
    final: {
      rounds: result.roundsCompleted,
      stoppedBy: result.stoppedBy,
      accuracy: g.accuracy,
      loss: g.loss,
      ...(g.auc !== undefined ? { auc: g.auc } : {}),
      perSite: Object.fromEntries(
        result.final.map((s) => [s.site, { samples: s.samples, loss: s.loss, accuracy: s.accuracy, ...(s.auc !== undefined ? { auc: s.auc } : {}) }]),
      ),
      ...(result.finalMissing && result.finalMissing.length > 0 ? { missing: result.finalMissing.map(({ site, reason }) => ({ site, reason })) } : {}),
      accuracySpread: spread(result.final.map((s) => s.accuracy)),
      ...(f.baselines ?? {}),
      modelSha256: weightsSha256(result.global),
    },
  };
}
