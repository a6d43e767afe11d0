// report.json: what `consort run` (and later the operator) writes about a finished job.
// Other tools read it, so it is versioned and documented in core/report/README.md.
import { InputScaler } from '../data/moments.ts';
import { z } from 'zod';
import { DataQuality } from '../data/quality.ts';
import { AggregationSpec, CompressionSpec, EvaluationSpec, ModelSpec, SamplingSpec, StoppingSpec, StrategySpec, TrainingSpec } from '../job/federated-job.ts';

export const REPORT_FORMAT = 'consort.dev/run-report/v1';

export const SiteMetrics = z.object({
  site: z.string(),
  /** Test examples the metric was computed on. */
  samples: z.number().int().min(0),
  loss: z.number(),
  accuracy: z.number(),
  auc: z.number().optional(),
});
export type SiteMetrics = z.infer<typeof SiteMetrics>;

export const Spread = z.object({ min: z.number(), max: z.number(), std: z.number() });
export type Spread = z.infer<typeof Spread>;

export const RoundRecord = z.object({
  round: z.number().int().min(1),
  /** Sample-weighted means over the evaluating sites' test splits. */
  globalLoss: z.number(),
  globalAccuracy: z.number(),
  globalAuc: z.number().optional(),
  /** Loss of the global model on the train splits (evaluation.trainLoss). */
  trainLoss: z.number().optional(),
  /** Mean local training loss reported by the sites that trained. */
  fitLoss: z.number(),
  participants: z.array(z.string()),
  sites: z.array(SiteMetrics),
  accuracySpread: Spread,
  durationMs: z.number(),
});
export type RoundRecord = z.infer<typeof RoundRecord>;

export const RunReport = z.object({
  format: z.literal(REPORT_FORMAT),
  job: z.string(),
  namespace: z.string().optional(),
  seed: z.number().int(),
  backend: z.string(),
  backendReason: z.string(),
  strategy: z.string(),
  /** How the job trained, as its spec said (defaults filled in): what it takes to reproduce it beside the seed. */
  settings: z
    .object({
      strategy: StrategySpec,
      training: TrainingSpec,
      sampling: SamplingSpec,
      aggregation: AggregationSpec,
      compression: CompressionSpec,
      // Since report format 1's later runs (absent from earlier reports): the model's architecture, the rounds asked for, and when to evaluate and stop.
      model: ModelSpec.optional(),
      rounds: z.number().int().optional(),
      evaluation: EvaluationSpec.optional(),
      stopping: StoppingSpec.optional(),
    })
    .optional(),
  model: z.object({
    type: z.string(),
    parameters: z.number().int(),
    inputShape: z.array(z.number().int()),
    classes: z.array(z.string()),
    /** Tabular data: the feature columns, in the model's input order. */
    features: z.array(z.string()).optional(),
    /** Tabular data scaled by the federation: (x - mean) / std per feature, what the model's inputs must be (core/data/moments.ts). */
    inputScaler: InputScaler.optional(),
    /** Where inputScaler comes from: pooled from the sites' training moments, or fixed reference values every site scales by (the synthetic hospital generator's). */
    inputScalerFrom: z.enum(['pooled', 'reference']).optional(),
    /** tfjs/model.json has inputScaler folded into its first layer, so it takes raw values (model.safetensors holds the weights as trained, for scaled values). */
    tfjsTakesRawInputs: z.boolean().optional(),
    /** Round 1 started from the weights the model file carries (a pre-trained model), or from seeded ones. */
    initialWeights: z.enum(['model file', 'seeded']).optional(),
    /** Image data: how a picture becomes the model's input (what a user of the exported model must do to one). */
    imageInput: z
      .object({
        height: z.number().int(),
        width: z.number().int(),
        channels: z.number().int(),
        /** grayscale: 0.299 R + 0.587 G + 0.114 B (ITU-R 601-2, as PIL's convert("L")); rgb: alpha dropped. */
        color: z.enum(['grayscale', 'rgb']),
        /** Bilinear, half-pixel centres (TF's resizeBilinear with halfPixelCenters), to height x width. */
        resize: z.literal('bilinear-half-pixel'),
        /** Each value divided by 255, into [0, 1]. */
        scale: z.literal('divide-by-255'),
        layout: z.literal('NHWC'),
      })
      .optional(),
  }),
  startedAt: z.string(),
  durationMs: z.number(),
  /** The run went on from its checkpoint after this round (its coordinator was started again): startedAt and durationMs are then the last process's. */
  resumedAfterRound: z.number().int().min(1).optional(),
  sites: z.array(z.object({ site: z.string(), quality: DataQuality })),
  rounds: z.array(RoundRecord),
  final: z.object({
    rounds: z.number().int().min(0),
    stoppedBy: z.enum(['rounds', 'target', 'patience']),
    accuracy: z.number(),
    loss: z.number(),
    auc: z.number().optional(),
    perSite: z.record(z.string(), SiteMetrics.omit({ site: true })),
    /** Sites asked to score the final model that did not, and why: the figures above leave them out. */
    missing: z.array(z.object({ site: z.string(), reason: z.string() })).optional(),
    accuracySpread: Spread,
    /** --baselines: each site trained alone on its own data, scored on its own test split. */
    siteAlone: z.record(z.string(), z.number()).optional(),
    /** Sample-weighted mean of siteAlone, comparable with `accuracy`. */
    siteAloneMean: z.number().optional(),
    /** --baselines: one model trained on all sites' data pooled (what the law forbids), same scoring. */
    pooled: z.number().optional(),
    modelSha256: z.string().regex(/^[0-9a-f]{64}$/),
  }),
});
export type RunReport = z.infer<typeof RunReport>;
