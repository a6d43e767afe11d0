// The FederatedJob resource: the single source of truth for the job's shape. Its inferred types
// drive the CLI, the local runner and (later) the CRD's openAPIV3Schema.
import { z } from 'zod';
import { className } from '../data/labels.ts';

export const API_GROUP = 'consort.dev';
export const API_VERSION = `${API_GROUP}/v1alpha1`;
export const KIND = 'FederatedJob';

export const dnsLabel = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'must be a DNS label: lower-case letters, digits and "-"')
  .describe('A DNS-1123 label.');

const positiveInt = z.number().int().positive();
const fraction01 = z.number().gt(0).lte(1);

// ---- model -------------------------------------------------------------------------------

export const ModelSpec = z
  .discriminatedUnion('type', [
    z
      .object({ type: z.literal('logistic') })
      .strict()
      .describe('Multinomial logistic regression (one dense softmax layer).'),
    z
      .object({
        type: z.literal('mlp'),
        hidden: z.array(positiveInt).min(1).max(16).default([64, 32]).describe('Units of each hidden layer.'),
        activation: z.enum(['relu', 'tanh', 'sigmoid']).default('relu'),
        dropout: z.number().min(0).lt(1).default(0).describe('Dropout rate after each hidden layer.'),
      })
      .strict()
      .describe('Multi-layer perceptron for tabular features.'),
    z
      .object({
        type: z.literal('cnn'),
        filters: z.array(positiveInt).min(1).max(8).default([16, 32]).describe('Filters of each conv block.'),
        kernelSize: positiveInt.max(11).default(3),
        dense: positiveInt.default(64).describe('Units of the dense layer before the classifier.'),
      })
      .strict()
      .describe('Small convolutional network for images: conv+maxpool blocks, then dense.'),
    z
      .object({
        type: z.literal('layers'),
        path: z
          .string()
          .min(1)
          .describe(
            'A TF.js Layers or Keras model JSON file: its topology, and its weights (weightsManifest) when it has them, which training starts from (fine-tuning a pre-trained model); without them, from seeded weights.',
          ),
      })
      .strict()
      .describe('A model defined by a TF.js/Keras Layers JSON file.'),
  ])
  .describe('The model every site trains. Input shape and classes come from the data.');
export type ModelSpec = z.infer<typeof ModelSpec>;

// ---- data --------------------------------------------------------------------------------

/** The share of train held out when a site names no test set and no testFraction. */
export const DEFAULT_TEST_FRACTION = 0.2;

const splitFields = {
  test: z.string().min(1).optional().describe('Held-out file/folder; when absent, testFraction of train is held out.'),
  // No default in the schema: a testFraction beside a test set would be ignored, and is refused.
  testFraction: z.number().gt(0).lt(1).optional().describe(`Share of train held out when no test set is given (default ${DEFAULT_TEST_FRACTION}).`),
};

export const CsvData = z
  .object({
    type: z.literal('csv'),
    train: z.string().min(1).describe('CSV file with a header row; relative paths resolve against the job file.'),
    ...splitFields,
    labelColumn: z.string().min(1).describe('Header name of the label column.'),
    featureColumns: z
      .array(z.string().min(1))
      .min(1)
      .max(100_000)
      .refine((f) => new Set(f).size === f.length, 'lists a column twice')
      .optional()
      .describe(
        "Header names of the feature columns, in the order the model takes them; other columns (an ID, a date) are left out. Default: every column but the label, in the header's order, which must then be the same at every site.",
      ),
    delimiter: z.string().length(1).default(','),
  })
  .strict();

export const ImageFolderData = z
  .object({
    type: z.literal('imageFolder'),
    train: z.string().min(1).describe('Folder with one sub-folder per class, named for it, holding its PNG/JPEG images (at any depth below it).'),
    ...splitFields,
    width: positiveInt.max(1024).default(28),
    height: positiveInt.max(1024).default(28),
    channels: z.union([z.literal(1), z.literal(3)]).default(1),
  })
  .strict();

export const SyntheticData = z.discriminatedUnion('generator', [
  z
    .object({
      type: z.literal('synthetic'),
      generator: z.literal('hospital'),
      samples: positiveInt.max(10_000_000).default(400).describe('Patients at this hospital.'),
      prevalence: z.number().gt(0).lt(1).default(0.3).describe('Share of patients with the diagnosis.'),
      shift: z.number().min(-3).max(3).default(0).describe('Covariate shift of the patient mix (sd units).'),
      testFraction: z.number().gt(0).lt(1).default(0.25),
      seed: z.number().int().min(0).optional().describe('Data seed; defaults to a hash of the site name.'),
    })
    .strict()
    .describe("Vitals and lab values of a hospital's patients, labelled sepsis or not."),
  z
    .object({
      type: z.literal('synthetic'),
      generator: z.literal('fedprox'),
      alpha: z.number().min(0).default(1),
      beta: z.number().min(0).default(1),
      device: z.number().int().min(0).describe('Which device of the FedProx Synthetic(alpha,beta) set.'),
      seed: z.number().int().min(0).default(0).describe('Seed shared by all devices of one data set.'),
    })
    .strict()
    .describe('FedProx Synthetic(alpha, beta): d = 60, 10 classes, one device per site.'),
  z
    .object({
      type: z.literal('synthetic'),
      generator: z.literal('iid'),
      device: z.number().int().min(0),
      samples: positiveInt.max(10_000_000).optional().describe('Defaults to int(lognormal(4, 2)) + 50.'),
      features: positiveInt.max(100_000).default(60),
      classes: z.number().int().min(2).max(1000).default(10),
      seed: z.number().int().min(0).default(0),
    })
    .strict()
    .describe('IID counterpart of the FedProx set: v = 0, one shared W, b ~ N(0, 1).'),
]);

export const DataSpec = z
  .discriminatedUnion('type', [CsvData, ImageFolderData, SyntheticData])
  .describe('Where and how the site reads its own data. It never leaves the site.');
export type DataSpec = z.infer<typeof DataSpec>;
export type CsvData = z.infer<typeof CsvData>;
export type ImageFolderData = z.infer<typeof ImageFolderData>;
export type SyntheticData = z.infer<typeof SyntheticData>;

// ---- where the work runs (Kubernetes) --------------------------------------------------------

const quantity = z
  .string()
  .regex(/^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$/, 'must be a Kubernetes quantity, e.g. 500m, 2, 4Gi')
  .describe('A Kubernetes resource quantity.');

export const ResourcesSpec = z
  .object({
    cpu: quantity.optional().describe('CPU request (and limit), e.g. "2" or "500m".'),
    memory: quantity.optional().describe('Memory request (and limit), e.g. "4Gi".'),
    gpus: z.number().int().min(0).max(16).default(0).describe('NVIDIA GPUs (nvidia.com/gpu), requested and limited.'),
  })
  .strict();
export type ResourcesSpec = z.infer<typeof ResourcesSpec>;

export const Toleration = z
  .object({
    key: z.string().max(253).optional(),
    operator: z.enum(['Exists', 'Equal']).default('Equal'),
    value: z.string().max(63).optional(),
    effect: z.enum(['NoSchedule', 'PreferNoSchedule', 'NoExecute']).optional(),
    tolerationSeconds: z.number().int().optional(),
  })
  .strict();

export const DataVolume = z
  .object({
    claimName: dnsLabel.optional().describe("A PersistentVolumeClaim in the job's namespace that holds the site's data."),
    hostPath: z.string().startsWith('/', 'must be an absolute path').optional().describe('A folder on the node that holds the data.'),
    mountPath: z
      .string()
      .startsWith('/', 'must be an absolute path')
      .default('/data')
      .describe('Where the worker sees the volume; relative data paths resolve against it.'),
    readOnly: z.boolean().default(true),
  })
  .strict()
  .refine((v) => (v.claimName === undefined) !== (v.hostPath === undefined), { message: 'set exactly one of claimName and hostPath', path: ['claimName'] });
export type DataVolume = z.infer<typeof DataVolume>;

export const WorkerSpec = z
  .object({
    image: z.string().min(1).max(512).default('ghcr.io/consort-dev/consort:0.1.0').describe('Container image of the worker (the consort command).'),
    imagePullPolicy: z.enum(['Always', 'IfNotPresent', 'Never']).default('IfNotPresent'),
    resources: ResourcesSpec.default({ gpus: 0 }),
    nodeSelector: z.record(z.string(), z.string()).optional().describe('Node labels the worker Pods must match.'),
    tolerations: z.array(Toleration).max(32).optional(),
    serviceAccountName: dnsLabel.optional(),
    schedulerName: z
      .string()
      .min(1)
      .max(253)
      .regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'must be a DNS subdomain (lower case letters, digits, - and .)')
      .optional()
      .describe("The scheduler that places the worker Pods (a gang or queueing scheduler such as Volcano's or Kueue's); the cluster's default when absent."),
  })
  .strict();
export type WorkerSpec = z.infer<typeof WorkerSpec>;

export const SiteSpec = z
  .object({
    name: dnsLabel.describe("The site's name, unique in the job."),
    data: DataSpec,
    volume: DataVolume.optional().describe("The site's data volume, mounted into its worker Pod."),
    resources: ResourcesSpec.optional().describe('Overrides spec.worker.resources for this site.'),
    nodeSelector: z.record(z.string(), z.string()).optional().describe('Overrides spec.worker.nodeSelector for this site.'),
    remote: z.boolean().default(false).describe('The site runs in its own cluster (consort operator --mode site): no Pod is created here.'),
  })
  .strict();
export type SiteSpec = z.infer<typeof SiteSpec>;

// ---- training, strategy, rounds ------------------------------------------------------------

export const TrainingSpec = z
  .object({
    epochs: positiveInt.max(10_000).default(1).describe('Local epochs per round.'),
    batchSize: positiveInt.max(1_000_000).default(32),
    optimizer: z.enum(['sgd', 'momentum', 'adam']).default('sgd').describe('Local optimizer (reset each round).'),
    learningRate: z.number().gt(0).lte(10).default(0.05),
    backend: z
      .enum(['auto', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'])
      .default('auto')
      .describe('TF.js backend; auto picks the fastest available for the model and says why.'),
  })
  .strict();
export type TrainingSpec = z.infer<typeof TrainingSpec>;

const serverLearningRate = z.number().gt(0).lte(100).default(1).describe('Server step size on the mean update.');
const adaptive = {
  serverLearningRate: z.number().gt(0).lte(100).default(0.1),
  beta1: z.number().min(0).lt(1).default(0.9),
  beta2: z.number().min(0).lt(1).default(0.99),
  tau: z.number().gt(0).default(1e-3).describe('Adaptivity: the floor of the per-coordinate step denominator.'),
};

export const StrategySpec = z
  .discriminatedUnion('name', [
    z.object({ name: z.literal('fedavg'), serverLearningRate }).strict(),
    z
      .object({
        name: z.literal('fedprox'),
        mu: z.number().min(0).default(0.01).describe('Weight of the proximal term mu/2 ||w - w_global||^2.'),
        serverLearningRate,
      })
      .strict(),
    z
      .object({
        name: z.literal('fedavgm'),
        serverLearningRate,
        momentum: z.number().min(0).lt(1).default(0.9),
      })
      .strict(),
    z.object({ name: z.literal('fedadam'), ...adaptive }).strict(),
    z.object({ name: z.literal('fedyogi'), ...adaptive }).strict(),
    // Adagrad's accumulator only grows; with momentum on top its first steps are a tenth of
    // Adam's, so its default has none (as Flower's). It sums every squared delta (v <- v + D^2):
    // there is no beta2 to set, and one given is refused, as any field another strategy takes.
    z
      .object({
        name: z.literal('fedadagrad'),
        serverLearningRate: adaptive.serverLearningRate,
        beta1: z.number().min(0).lt(1).default(0),
        tau: adaptive.tau,
      })
      .strict(),
    z.object({ name: z.literal('scaffold'), serverLearningRate }).strict(),
  ])
  .describe('How the coordinator turns site updates into the next global model.');
export type StrategySpec = z.infer<typeof StrategySpec>;

export const SamplingSpec = z
  .object({
    fraction: fraction01.optional().describe('Share of sites asked to train each round.'),
    sitesPerRound: positiveInt.optional().describe('Number of sites asked to train each round.'),
    minSites: positiveInt.default(1).describe('Fewest updates that close a round.'),
  })
  .strict()
  .refine((s) => !(s.fraction !== undefined && s.sitesPerRound !== undefined), {
    message: 'set fraction or sitesPerRound, not both',
    path: ['sitesPerRound'],
  })
  // A round of sitesPerRound sites can never close with more updates than that.
  .refine((s) => s.sitesPerRound === undefined || s.minSites <= s.sitesPerRound, {
    message: 'must not exceed sitesPerRound: a round asks only that many sites',
    path: ['minSites'],
  });
export type SamplingSpec = z.infer<typeof SamplingSpec>;

export const EvaluationSpec = z
  .object({
    every: positiveInt.default(1).describe("Evaluate the global model on the sites' test splits every N rounds."),
    fraction: fraction01.default(1).describe('Share of sites that evaluate (the final evaluation uses all).'),
    trainLoss: z.boolean().default(false).describe("Also report the global model's loss on the train splits."),
  })
  .strict();

export const StoppingSpec = z
  .object({
    target: z
      .object({ metric: z.enum(['accuracy', 'loss', 'auc']), value: z.number() })
      .strict()
      // A target no evaluation can reach (accuracy 95 for 95%, a negative loss) would run every round unnoticed.
      .refine((t) => (t.metric === 'loss' ? t.value >= 0 : t.value > 0 && t.value <= 1), {
        message: 'out of reach: accuracy and auc are fractions in (0, 1] (0.95, not 95), a loss is at least 0',
        path: ['value'],
      })
      .optional()
      .describe('Stop once the global metric reaches this value (loss: falls to it).'),
    patience: positiveInt
      .optional()
      .describe(
        "Stop after this many evaluations without improvement of the target's metric (accuracy without a target); the model is the last round's, not the best one's.",
      ),
  })
  .strict();

export const CompressionSpec = z
  .object({
    codec: z.enum(['none', 'fp16', 'int8', 'topk']).default('none').describe('How sites encode their updates on the wire.'),
    topkFraction: z.number().gt(0).lte(1).default(0.01).describe('topk: share of coordinates sent; the rest stays on the site as error feedback.'),
  })
  .strict();
export type CompressionSpec = z.infer<typeof CompressionSpec>;

export const AggregationSpec = z
  .object({
    mode: z
      .enum(['sync', 'buffered'])
      .default('sync')
      .describe('sync: a late update is refused; buffered (after FedBuff): folded into the next round with a staleness weight.'),
    maxStaleness: z.number().int().min(1).max(1000).default(4).describe('buffered: rounds after which a late update is refused.'),
    roundDeadlineSeconds: z
      .number()
      .gt(0)
      .max(7 * 24 * 3600)
      .default(600)
      .describe('A round closes at this deadline with whatever quorum it has.'),
  })
  .strict();
export type AggregationSpec = z.infer<typeof AggregationSpec>;

export const CoordinatorSpec = z
  .object({
    placement: z
      .enum(['operator', 'pod'])
      .default('operator')
      .describe('operator: the round loop runs inside the operator; pod: in a Pod of its own (for models too large to aggregate beside other jobs).'),
    resources: ResourcesSpec.optional().describe("placement pod: the coordinator Pod's resources."),
    joinTimeoutSeconds: z.number().int().min(1).max(86_400).default(300).describe('How long to wait for every site before starting with a quorum.'),
  })
  .strict();
export type CoordinatorSpec = z.infer<typeof CoordinatorSpec>;

/**
 * The rules between a job's sites (a name twice; test and testFraction both) on the sites as
 * written. FederatedJobSpec applies them; a reader of a job file that fails on another field
 * (cli/job-file.ts) applies them too, since zod skips an object's refinements once a field is
 * wrong: one validate names every problem (behind a bad spec.seed, a duplicate site name used to
 * show only once the seed was fixed). Each rule guards what it reads.
 */
export function siteRuleIssues(sites: unknown): Array<{ path: Array<string | number>; message: string }> {
  if (!Array.isArray(sites)) return [];
  const issues: Array<{ path: Array<string | number>; message: string }> = [];
  const seen = new Map<string, number>();
  sites.forEach((site: unknown, i) => {
    const s = site as { name?: unknown; data?: { type?: unknown; test?: unknown; testFraction?: unknown } } | null;
    if (typeof s?.name === 'string') {
      const prev = seen.get(s.name);
      if (prev !== undefined) issues.push({ path: ['sites', i, 'name'], message: `duplicate site name "${s.name}" (also sites[${prev}])` });
      seen.set(s.name, i);
    }
    // A test set and a share of train to hold out: one of them would be ignored.
    const d = s?.data;
    if ((d?.type === 'csv' || d?.type === 'imageFolder') && d.test !== undefined && d.testFraction !== undefined) {
      issues.push({ path: ['sites', i, 'data', 'testFraction'], message: 'set test or testFraction, not both: with a test set, none of train is held out' });
    }
  });
  return issues;
}

export const FederatedJobSpec = z
  .object({
    model: ModelSpec,
    classes: z
      .array(
        // YAML reads 0, 1, 2 as numbers: say how to write them, rather than only what was expected.
        z.string({ error: (iss) => (typeof iss.input === 'number' ? `a class name is text: write it in quotes ("${iss.input}")` : undefined) }).min(1),
      )
      .min(2)
      .optional()
      .describe(
        'Label values in class-index order. Required for CSV and image data when sites run apart (Kubernetes, consort site); consort run in one process defaults them to the sorted labels seen.',
      ),
    // A FederatedJob object must fit etcd's 1.5 MiB, and the CRD's CEL rules run once per site
    // within the API server's cost budget: 10,000 sites is what a cluster can hold.
    sites: z.array(SiteSpec).min(1).max(10_000),
    rounds: positiveInt.max(100_000).default(20),
    sampling: SamplingSpec.default({ minSites: 1 }),
    training: TrainingSpec.default(TrainingSpec.parse({})),
    strategy: StrategySpec.default({ name: 'fedavg', serverLearningRate: 1 }),
    evaluation: EvaluationSpec.default(EvaluationSpec.parse({})),
    stopping: StoppingSpec.default({}),
    aggregation: AggregationSpec.default(AggregationSpec.parse({})),
    compression: CompressionSpec.default(CompressionSpec.parse({})),
    seed: z
      .number()
      .int()
      .min(0)
      .max(2 ** 31 - 1)
      .default(0)
      .describe('Seeds every source of randomness.'),
    suspend: z.boolean().default(false).describe('Pause after the current round (the checkpoint stays); false resumes.'),
    worker: WorkerSpec.default(WorkerSpec.parse({})).describe('How the operator runs the site workers as Pods.'),
    coordinator: CoordinatorSpec.default(CoordinatorSpec.parse({})),
  })
  .strict()
  .superRefine((spec, ctx) => {
    for (const issue of siteRuleIssues(spec.sites)) ctx.addIssue({ code: 'custom', ...issue });
    // One model, one input: what the job file alone says of the sites' examples.
    const images = spec.sites.flatMap((s, i) => (s.data.type === 'imageFolder' ? [{ i, name: s.name, d: s.data }] : []));
    const tables = spec.sites.filter((s) => s.data.type !== 'imageFolder');
    if (images.length > 0 && tables.length > 0) {
      const table = spec.sites.findIndex((s) => s.data.type !== 'imageFolder');
      ctx.addIssue({
        code: 'custom',
        path: ['sites', table, 'data', 'type'],
        message: `sites of one job all give images or all give tables: site "${images[0]!.name}" has an imageFolder, site "${spec.sites[table]!.name}" ${spec.sites[table]!.data.type} data`,
      });
    }
    const first = images[0];
    for (const img of images.slice(1)) {
      const a = first!.d;
      const b = img.d;
      if (a.width !== b.width || a.height !== b.height || a.channels !== b.channels) {
        ctx.addIssue({
          code: 'custom',
          path: ['sites', img.i, 'data'],
          message: `every imageFolder site gives the model images of one size: site "${first!.name}" ${a.width}x${a.height}x${a.channels}, site "${img.name}" ${b.width}x${b.height}x${b.channels} (width x height x channels)`,
        });
      }
    }
    if (spec.model.type === 'cnn') {
      if (tables.length > 0) {
        const at = spec.sites.findIndex((s) => s.data.type !== 'imageFolder');
        ctx.addIssue({
          code: 'custom',
          path: ['model', 'type'],
          message: `a cnn takes images: site "${spec.sites[at]!.name}" has ${spec.sites[at]!.data.type} data (use mlp or logistic for tables)`,
        });
      } else if (first) {
        const side = Math.min(first.d.width, first.d.height);
        const blocks = spec.model.filters.length;
        if (side / 2 ** blocks < 1) {
          ctx.addIssue({
            code: 'custom',
            path: ['model', 'filters'],
            message: `a cnn of ${blocks} blocks halves a ${first.d.height}x${first.d.width} image ${blocks} times, below one pixel; use at most ${Math.floor(Math.log2(side))} blocks, or larger images`,
          });
        }
      }
    }
    // The label among the features: the model would be given the answer (the loader refuses it, but only once it runs).
    spec.sites.forEach((s, i) => {
      if (s.data.type !== 'csv' || !s.data.featureColumns) return;
      const at = s.data.featureColumns.indexOf(s.data.labelColumn);
      if (at >= 0) {
        ctx.addIssue({
          code: 'custom',
          path: ['sites', i, 'data', 'featureColumns', at],
          message: `"${s.data.labelColumn}" is the labelColumn: a feature must not be the label`,
        });
      }
    });
    // Two classes of one name: an output unit no label could ever be.
    const classes = new Map<string, number>();
    spec.classes?.forEach((c, i) => {
      const prev = classes.get(className(c));
      if (prev !== undefined) {
        const spelled = spec.classes![prev] === c ? '' : `, "${spec.classes![prev]}": a number is one class however it is written`;
        ctx.addIssue({ code: 'custom', path: ['classes', i], message: `duplicate class "${c}" (also classes[${prev}]${spelled})` });
      }
      classes.set(className(c), i);
    });
    if (spec.sampling.sitesPerRound !== undefined && spec.sampling.sitesPerRound > spec.sites.length) {
      ctx.addIssue({ code: 'custom', path: ['sampling', 'sitesPerRound'], message: `exceeds the ${spec.sites.length} sites` });
    }
    if (spec.sampling.minSites > spec.sites.length) {
      ctx.addIssue({ code: 'custom', path: ['sampling', 'minSites'], message: `exceeds the ${spec.sites.length} sites` });
    }
    // Stopping compares one evaluation with the next: each must score the same sites, or a round
    // whose random group of sites happens to be easy would stop the job.
    const stopsEarly = spec.stopping.target !== undefined || spec.stopping.patience !== undefined;
    if (stopsEarly && spec.evaluation.fraction < 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['evaluation', 'fraction'],
        message: `is ${spec.evaluation.fraction}, but stopping.${spec.stopping.target !== undefined ? 'target' : 'patience'} compares evaluations from round to round, which then score different random groups of sites: set it to 1, or drop the stopping rule`,
      });
    }
  });
export type FederatedJobSpec = z.infer<typeof FederatedJobSpec>;

export const ObjectMeta = z
  .object({
    name: dnsLabel,
    namespace: dnsLabel.optional(),
    uid: z.string().optional(),
    generation: z.number().int().optional(),
    labels: z.record(z.string(), z.string()).optional(),
    annotations: z.record(z.string(), z.string()).optional(),
  })
  .passthrough();

export const FederatedJob = z.object({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal(KIND),
  metadata: ObjectMeta,
  spec: FederatedJobSpec,
  status: z.record(z.string(), z.unknown()).optional(),
});
export type FederatedJob = z.infer<typeof FederatedJob>;

/** Sites asked to train in a round, from the sampling spec. */
export function sitesPerRound(spec: FederatedJobSpec): number {
  const n = spec.sites.length;
  const { fraction, sitesPerRound: k, minSites } = spec.sampling;
  const want = k ?? (fraction !== undefined ? Math.ceil(fraction * n) : n);
  return Math.min(n, Math.max(want, minSites));
}

/**
 * Why the job cannot run with its sites as separate processes (the operator's Pods, `consort
 * site`), or undefined: a site there sees only its own labels, so CSV and image data need
 * spec.classes (one process, `consort run`, gathers them from every site).
 */
export function separateProcessesProblem(spec: FederatedJobSpec): string | undefined {
  if (spec.classes !== undefined) return undefined;
  const needing = spec.sites.filter((s) => s.data.type === 'csv' || s.data.type === 'imageFolder').map((s) => s.name);
  if (needing.length === 0) return undefined;
  return `spec.classes: required when sites run apart with CSV or image data (sites ${needing.join(', ')}): each sees only its own labels; list the classes in output order`;
}
