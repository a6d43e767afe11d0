// Every message of protocol v1 as a zod schema: what crosses the wire is parsed with these on
// receipt and refused, with a reason, when it does not fit.
import { FeatureMoments, InputScaler } from '../data/moments.ts';
import { z } from 'zod';
import { DataQuality } from '../data/quality.ts';
import { ParameterLayout } from '../model/layout.ts';
import { newNonce } from './signing.ts';
import { PROTOCOL_VERSION } from './subjects.ts';

const name = z
  .string()
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/)
  .max(63);
const jobKey = z
  .string()
  .regex(/^[a-z0-9-]+_[a-z0-9-]+$/)
  .max(127);
const sha256 = z.string().regex(/^[0-9a-f]{64}$/);
const nonce = z.string().regex(/^[A-Za-z0-9_-]{16,64}$/);
const round = z.number().int().min(0).max(1_000_000);
const base64 = z
  .string()
  .regex(/^[A-Za-z0-9+/_-]+={0,2}$/)
  .max(512);
/** The longest reason a Welcome, an Ack or a RoundNotice carries. */
export const REASON_MAX_CHARS = 1000;
const reasonText = z.string().max(REASON_MAX_CHARS);

/**
 * A reason cut to what the schema takes (marked "…"): a site parses what it is answered, and one
 * whose Welcome said more (the column names that differ, of a wide table) dropped it as
 * malformed, and said hello for ever without learning that it was refused.
 */
export function fitReason(reason: string): string {
  return reason.length <= REASON_MAX_CHARS ? reason : `${reason.slice(0, REASON_MAX_CHARS - 1)}…`;
}

/** Envelopes say which version they speak; a coordinator refuses others by name. */
const protocol = z.number().int().min(1).max(1000);

export const ObjectRef = z
  .object({
    bucket: z
      .string()
      .regex(/^[-_A-Za-z0-9]+$/)
      .max(255),
    name: z.string().min(1).max(255),
    sha256,
    size: z
      .number()
      .int()
      .min(0)
      .max(2 ** 50),
  })
  .strict();
export type ObjectRef = z.infer<typeof ObjectRef>;

export const Hello = z
  .object({
    type: z.literal('hello'),
    protocol,
    job: jobKey,
    site: name,
    nonce,
    sentAt: z.number().int().min(0),
    /**
     * A random id of the site's process, the same in each of its hellos: a new one tells the
     * coordinator that the site started again, and lost any task it had been sent.
     */
    instance: nonce.optional(),
    /**
     * The site keeps what only it holds between rounds (top-k residual, SCAFFOLD's c_i) on its
     * disk (`consort site --state`): a restart of its process loses none of it.
     */
    keepsState: z.boolean().optional(),
    sampleShape: z.array(z.number().int().positive()).min(1).max(8),
    labels: z.array(z.string().max(256)).max(10_000),
    /** The names of the input's features, in the model's order (tabular data): every site must send the same. */
    features: z.array(z.string().max(256)).max(100_000).optional(),
    /** The job's terms as the site read them (core/job/terms.ts): the coordinator's must be the same. */
    terms: z.string().max(65_536).optional(),
    layout: ParameterLayout.max(10_000),
    codecs: z.array(z.enum(['none', 'fp16', 'int8', 'topk'])),
    /** Counts only: the site's data-quality report, for the job's report and model card. */
    quality: DataQuality.optional(),
    /** Tabular data: its train split's moments per feature (counts, means, squared deviations), pooled into the federation's scaling. */
    moments: FeatureMoments.optional(),
    /**
     * The site's model file carries weights (a pre-trained model): their safetensors object
     * (objectNames.initial, in the site's updates bucket), which every site's must equal and
     * which round 1 starts from.
     */
    initial: z
      .object({ sha256: z.string().regex(/^[0-9a-f]{64}$/), size: z.number().int().positive() })
      .strict()
      .optional(),
    /** The TF.js backend the site trains on, and why. */
    backend: z
      .object({ name: z.string().max(64), reason: z.string().max(1000) })
      .strict()
      .optional(),
    signature: base64,
  })
  .strict();
export type Hello = z.infer<typeof Hello>;

export const Welcome = z
  .object({
    type: z.literal('welcome'),
    protocol,
    accepted: z.boolean(),
    reason: reasonText.optional(),
    code: z.string().max(64).optional(),
    /** The round the job is in (0 before the first). */
    round,
    done: z.boolean(),
  })
  .strict();
export type Welcome = z.infer<typeof Welcome>;

const taskBase = {
  protocol,
  job: jobKey,
  site: name,
  round,
  taskId: nonce,
  model: ObjectRef,
  /** Epoch milliseconds after which the coordinator no longer waits (on the coordinator's clock). */
  deadline: z.number().int().min(0),
  /**
   * Milliseconds from this message's sending to `deadline`. A site counts them from receipt on its
   * own clock, so that one whose clock is minutes off still works to the round's deadline (absent:
   * a coordinator that does not send it; `deadline` is then taken as it is).
   */
  validForMs: z.number().int().min(0).optional(),
  /** Tabular data: the federation's input scaling, which the site's inputs take before the task (core/data/moments.ts). */
  scaler: InputScaler.optional(),
};

export const FitTask = z
  .object({
    type: z.literal('fit'),
    ...taskBase,
    proximalMu: z.number().min(0),
    /** SCAFFOLD's server control variate, stored beside the model. */
    control: ObjectRef.optional(),
  })
  .strict();
export type FitTask = z.infer<typeof FitTask>;

export const EvaluateTask = z
  .object({
    type: z.literal('evaluate'),
    ...taskBase,
    trainLoss: z.boolean(),
  })
  .strict();
export type EvaluateTask = z.infer<typeof EvaluateTask>;

export const Task = z.discriminatedUnion('type', [FitTask, EvaluateTask]);
export type Task = z.infer<typeof Task>;

/**
 * A task's deadline on the clock of the site that received it at `receivedAt` (its own clock),
 * and how far the coordinator's clock was ahead of the site's at that moment (the message's
 * transit counts against it: a few milliseconds on a working network). Without `validForMs` the
 * coordinator's deadline is all there is, taken as it is, and the offset is unknown.
 */
export function deadlineOnSite(task: Pick<Task, 'deadline' | 'validForMs'>, receivedAt: number): { deadline: number; coordinatorAheadMs?: number } {
  if (task.validForMs === undefined) return { deadline: task.deadline };
  return { deadline: receivedAt + task.validForMs, coordinatorAheadMs: task.deadline - task.validForMs - receivedAt };
}

/** A clock difference from which a site says that its clock or the coordinator's is off. */
export const CLOCK_OFFSET_WORTH_SAYING_MS = 5_000;

/**
 * A loss a site reports (cross-entropy: never negative). Bounded so that samples × loss, summed
 * over every site, stays finite: one site's 1e308 made the round's mean loss Infinity, which the
 * checkpoint wrote as null, and the coordinator could resume the job from it no more.
 */
const loss = z
  .number()
  .min(0)
  .max(2 ** 40);
/** Examples a site reports: bounded like `loss`, for the same sums. */
const samplesCount = z
  .number()
  .int()
  .min(0)
  .max(2 ** 40);

/** What every signed envelope from a site carries: who, for which task, and a fresh nonce. */
const envelopeBase = {
  protocol,
  job: jobKey,
  site: name,
  round,
  taskId: nonce,
  nonce,
  signature: base64.optional(),
};

export const UpdateEnvelope = z
  .object({
    type: z.literal('update'),
    ...envelopeBase,
    samples: z
      .number()
      .int()
      .positive()
      .max(2 ** 40),
    trainLoss: loss,
    steps: z.number().int().min(0),
    codec: z.enum(['none', 'fp16', 'int8', 'topk']),
    /** The encoded update (safetensors) in the site's update bucket. */
    object: ObjectRef,
  })
  .strict();
export type UpdateEnvelope = z.infer<typeof UpdateEnvelope>;

export const EvaluationEnvelope = z
  .object({
    type: z.literal('evaluation'),
    ...envelopeBase,
    samples: samplesCount,
    loss,
    accuracy: z.number().min(0).max(1),
    auc: z.number().min(0).max(1).optional(),
    trainLoss: loss.optional(),
    trainSamples: samplesCount.optional(),
  })
  .strict();
export type EvaluationEnvelope = z.infer<typeof EvaluationEnvelope>;

/**
 * A site could not carry out its task (its training or evaluation threw): it says so at once, on
 * the subject its answer would have gone to, so that the round counts it as failed rather than
 * waiting for the deadline. Signed like an answer, so that no one can fail a site's task for it.
 */
export const TaskFailureEnvelope = z
  .object({
    type: z.literal('failure'),
    ...envelopeBase,
    task: z.enum(['fit', 'evaluate']),
    reason: z.string().min(1).max(2000),
  })
  .strict();
export type TaskFailureEnvelope = z.infer<typeof TaskFailureEnvelope>;

/** The scores an evaluation envelope carries. */
export type EvaluationScores = Pick<EvaluationEnvelope, 'samples' | 'loss' | 'accuracy' | 'auc' | 'trainLoss' | 'trainSamples'>;

/** The (unsigned) evaluation envelope of `task` by `site` of job `job`: its scores, a fresh nonce. */
export function evaluationEnvelope(
  job: string,
  site: string,
  task: { round: number; taskId: string },
  scores: EvaluationScores,
): Omit<EvaluationEnvelope, 'signature'> {
  return { type: 'evaluation', protocol: PROTOCOL_VERSION, job, site, round: task.round, taskId: task.taskId, nonce: newNonce(), ...scores };
}

/** What an update envelope says of its update beside the task it answers: the site's counts, the codec and the object. */
export type UpdateFields = Pick<UpdateEnvelope, 'samples' | 'trainLoss' | 'steps' | 'codec' | 'object'>;

/** The (unsigned) update envelope of `task` by `site` of job `job`, under `nonce` (the one in its object's name). */
export function updateEnvelope(
  job: string,
  site: string,
  task: { round: number; taskId: string },
  nonce: string,
  fields: UpdateFields,
): Omit<UpdateEnvelope, 'signature'> {
  return { type: 'update', protocol: PROTOCOL_VERSION, job, site, round: task.round, taskId: task.taskId, nonce, ...fields };
}

/** The coordinator's answer to an update or evaluation. */
export const Ack = z
  .object({
    type: z.literal('ack'),
    accepted: z.boolean(),
    /** True when this exact envelope was already counted (a redelivery): do not send it again. */
    duplicate: z.boolean().optional(),
    code: z.string().max(64).optional(),
    reason: reasonText.optional(),
  })
  .strict();
export type Ack = z.infer<typeof Ack>;

export const RoundNotice = z
  .object({
    type: z.literal('round'),
    protocol,
    job: jobKey,
    round,
    phase: z.enum(['started', 'closed', 'done', 'failed']),
    sites: z.array(name).max(100_000).optional(),
    /** failed: why the coordinator ended the job (a quorum not met, say). */
    reason: reasonText.optional(),
  })
  .strict();
export type RoundNotice = z.infer<typeof RoundNotice>;

const count = z.number().int().min(0);
const perSite = <T extends z.ZodType>(v: T) => z.record(name, v);

/** Rounds of durations a status reply carries at most (the operator reads it every round). */
export const STATUS_ROUND_SECONDS = 64;

/**
 * The coordinator's answer on its status subject (operator → coordinator): its counters, and what
 * the operator's metrics need of the rounds when the loop runs in a Pod of its own. Not
 * strict: a newer coordinator may say more.
 */
export const CoordinatorStatus = z.object({
  job: jobKey,
  round: count,
  done: z.boolean(),
  joined: z.array(name).max(100_000),
  alive: z.array(name).max(100_000),
  accepted: count,
  duplicates: count,
  rejections: z.record(z.string().max(64), count),
  stray: count,
  /** Update bytes received, model bytes sent (each site counted), over the run. */
  bytesIn: count.optional(),
  bytesOut: count.optional(),
  /** The latest round's tally (operator/coordinator/round-tally.ts), from a coordinator that keeps one. */
  tally: z
    .object({
      /** The round the tally is of (rounds completed). */
      round: count,
      sampled: z.array(name).max(100_000),
      participants: z.array(name).max(100_000),
      missed: perSite(count),
      norms: perSite(z.number().min(0)),
      /** Durations in seconds of the last rounds, the latest last. */
      roundSeconds: z.array(z.number().min(0)).max(STATUS_ROUND_SECONDS),
    })
    .optional(),
  /**
   * Which coordinator process answers, and when it began answering (epoch ms): a job has one
   * coordinator, and of two that find each other the later one stops (nats-coordinator.ts).
   */
  coordinator: z.object({ instance: z.string().max(64), since: z.number() }).optional(),
});
export type CoordinatorStatus = z.infer<typeof CoordinatorStatus>;

/**
 * The operator's answer on the absent subject (coordinator → operator): the sites whose own
 * operator refused the job (site mode), with why. A coordinator in a Pod of its own learns them
 * so, and starts the rounds once every other site has joined instead of waiting out its join
 * timeout for sites that will not come.
 */
export const AbsentSites = z.object({
  type: z.literal('absent'),
  job: jobKey,
  sites: z.array(z.object({ site: name, reason: z.string().max(2000) })).max(100_000),
});
export type AbsentSites = z.infer<typeof AbsentSites>;
