// `consort coordinator`: the round loop of one job over NATS. It creates the job's buckets,
// admits sites by their signed hello (and keeps track of who is alive), waits for the sites to
// join, resumes from the last checkpoint if there is one, runs the RoundCoordinator over the
// NatsTransport, and announces the end. A checkpoint goes into the job's state bucket after
// every round, so a coordinator killed at any point carries on where it stopped.
import { availableParallelism, totalmem } from 'node:os';
import { type FeatureMoments, federationScaler, InputScaler } from '../../core/data/moments.ts';
import { fixedInputScaler } from '../../core/data/reference-scalers.ts';
import { featuresDiffer } from '../../core/data/features.ts';
import { jobTerms, termsDiffer } from '../../core/job/terms.ts';
import { type Msg, type NatsConnection, nuid, type Subscription } from '@nats-io/transport-node';
import { Objm, type ObjectStore, setSha256Backend, StorageType } from '@nats-io/obj';
import { jetstreamManager } from '@nats-io/jetstream';
import type { DataQuality } from '../../core/data/quality.ts';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import { initialParameters, layoutSize, type ParameterLayout } from '../../core/model/layout.ts';
import { builtInParameters, gigabytes } from '../../core/model/size.ts';
import { UpdateIngestor } from '../../core/protocol/ingestion.ts';
import { CoordinatorStatus, fitReason, Hello, type RoundNotice, STATUS_ROUND_SECONDS, type Welcome } from '../../core/protocol/messages.ts';
import { emptyTally, type RoundTally, tallyRounds } from './round-tally.ts';
import { REJECTION_CODES, type RejectionCode } from '../../core/protocol/rejections.ts';
import { retrying } from '../../core/protocol/retry.ts';
import { maxUpdateBytes as maxUpdateBytesFor, preLayoutBucketCap, updateBucketCap } from '../../core/protocol/update-size.ts';
import { verifyEnvelope } from '../../core/protocol/signing.ts';
import { buckets, jobKey, OBJECT_PUT, OBJECT_READ_BATCH_BYTES, objectNames, PROTOCOL_VERSION, subjects } from '../../core/protocol/subjects.ts';
import { ObjectMismatchError, readObject } from '../../core/protocol/object-read.ts';
import { decodeSafetensors, safetensorsParts } from '../../core/tensor/safetensors.ts';
import { type ObjectPutWire, putObject } from '../../core/protocol/object-put.ts';
import { OperatorError } from '../errors.ts';
import { weightsSha256 } from '../../core/report/assemble.ts';
import { aucTargetWarnings, dataWarnings, scaleWarnings } from '../../core/job/warnings.ts';
import { tuneGcForModel } from '../../core/gc-tuning.ts';
import { type Checkpoint, type CheckpointStore, encodeRecordSegment, loadCheckpoint, readRecordSegment } from './checkpoint.ts';
import type { RoundRecord } from '../../core/report/run-report.ts';
import { type LateEnvelopes, NatsTransport, type ResumedLate } from './nats-transport.ts';
import { askAbsentSites } from './absent-sites.ts';
import { AGGREGATION_RANGE, type CoordinatorResult, RoundCoordinator, type RoundEvents } from './round-coordinator.ts';
import { decodeJson as parseJson, encodeJson as json } from '../../core/protocol/wire.ts';
import { objectWire } from '../../core/protocol/object-wire.ts';

setSha256Backend('native');

/** Object name of the final model in the job's models bucket. */
export const FINAL_MODEL = 'global/final';
/** The final model object's metadata key for the SHA-256 of its weights (weightsSha256). */
export const WEIGHTS_SHA256_KEY = 'consort-weights-sha256';

export interface NatsCoordinatorOptions {
  job: FederatedJob;
  nc: NatsConnection;
  /** Public NKeys of the sites: the only keys whose signatures are accepted. */
  siteKeys: Record<string, string>;
  log: (line: string) => void;
  events?: RoundEvents;
  /** How long to wait for every site before starting with a quorum (sampling.minSites). */
  joinTimeoutMs?: number;
  /**
   * Sites known not to come (their own operator refused the job, site mode): the rounds start
   * once every other site has joined, and a quorum is there, without waiting out joinTimeoutMs.
   */
  notComing?: () => ReadonlySet<string>;
  /** A site not heard from for this long is not sampled. */
  aliveMs?: number;
  /** How often to say who is still missing while the sites join (tests: shorter). */
  waitingLogMs?: number;
  /** Largest update object accepted (default: the exact largest of the model and codec, update-size.ts; tests: larger). */
  maxUpdateBytes?: number;
  signal?: AbortSignal;
  /** Asked after each round: true pauses the job there (OperatorError CONSORT_C_PAUSED). */
  pauseRequested?: () => boolean;
  /** Object name of the final model in the models bucket (default global/final). */
  finalModelName?: string;
  /** Called once the round loop starts, with live views of its counters (for metrics). */
  onCounters?: (view: CoordinatorCounters) => void;
  /**
   * Models of at least this many parameters keep no update in memory: each is checked as it
   * streams in and read again from its bucket, a range at a time, when its round closes (default
   * STORED_UPDATES_FROM; 0: every model). CONSORT_AGGREGATION_RANGE=<parameters> in the
   * environment sets this to 0 and the range to that (how the tests run small jobs this way).
   */
  storedUpdatesFrom?: number;
  /** Parameters aggregated at a time from stored updates (default AGGREGATION_RANGE). */
  aggregationRange?: number;
  /**
   * Threads folding the updates into the round's exact sums (default: CONSORT_AGGREGATION_THREADS,
   * else defaultAggregationThreads()): the updates are read into SharedArrayBuffers, and each
   * thread folds a run of blocks. 1: this one alone.
   */
  aggregationThreads?: number;
  /**
   * Keep a tally of the rounds (who was asked, who answered, update norms, durations) and give it
   * in status replies: what the operator's metrics read of a loop that runs in a Pod of its own.
   * It makes the loop compute each update's norm.
   */
  tally?: boolean;
}

/**
 * From this many parameters (16 MB of float32) a job's updates stay in their buckets. Folded as
 * they arrive, updates cost 24 bytes a parameter beside the model (the exact sum 16, an update
 * 4, the next model 4): below this that is under 100 MB, less than reading every update twice
 * costs in time; above it, the coordinator would outgrow 1.5 x the model + 200 MB.
 */
export const STORED_UPDATES_FROM = 4 * 1024 * 1024;

/** The environment's CONSORT_AGGREGATION_RANGE: every model's updates stored, aggregated this many parameters at a time. */
function aggregationFromEnv(): { from: number; range: number } | undefined {
  const raw = process.env.CONSORT_AGGREGATION_RANGE;
  if (raw === undefined || raw === '') return undefined;
  const range = Number(raw);
  if (!Number.isSafeInteger(range) || range < 1) throw new RangeError(`CONSORT_AGGREGATION_RANGE: a positive integer, not ${JSON.stringify(raw)}`);
  return { from: 0, range };
}

/**
 * CONSORT_AGGREGATION_THREADS=<n>: the threads that fold updates (1: the coordinator's own
 * alone). Default (defaultAggregationThreads): half the cores, up to 4, from 4 cores.
 */
/**
 * Half the cores, up to 4, on a machine of 4 cores or more; else 1. A helper thread costs ~50 MB
 * (its own heap, and the shared sums it holds), and on a small machine the cores it would take
 * are the nats-server's and the sites' while a round closes.
 */
export function defaultAggregationThreads(): number {
  const cores = availableParallelism();
  return cores >= 4 ? Math.min(4, Math.floor(cores / 2)) : 1;
}

function aggregationThreadsFromEnv(): number | undefined {
  const raw = process.env.CONSORT_AGGREGATION_THREADS;
  if (raw === undefined || raw === '') return undefined;
  const threads = Number(raw);
  if (!Number.isInteger(threads) || threads < 1 || threads > 64)
    throw new RangeError(`CONSORT_AGGREGATION_THREADS: an integer from 1 to 64, not ${JSON.stringify(raw)}`);
  return threads;
}

/** Live counters of a running coordinator: refusals per code, bytes in and out per round. */
export interface CoordinatorCounters {
  rejections(): Record<string, number>;
  bytesIn: ReadonlyMap<number, number>;
  bytesOut: ReadonlyMap<number, number>;
}

export interface JoinedSite {
  labels: string[];
  sampleShape: number[];
  /** Its input's feature names, in the model's order (tabular data). */
  features?: string[];
  quality?: DataQuality;
  backend?: { name: string; reason: string };
  /** Tabular data: its train split's moments, which the federation's scaling pools. */
  moments?: FeatureMoments;
  /** Its model file carries weights (a pre-trained model): their safetensors object's SHA-256. */
  initialSha256?: string;
}

export interface NatsCoordinatorResult extends CoordinatorResult {
  layout: ParameterLayout;
  /** What each site said of itself when it joined (counts and shapes only). */
  sites: Record<string, JoinedSite>;
  resumedFrom: number;
  rejections: Record<string, number>;
  bytesIn: Record<number, number>;
  bytesOut: Record<number, number>;
  /** The federation's input scaling (tabular data scaled by its train splits). */
  inputScaler?: InputScaler;
  /** Round 1 started from the weights the sites' model file carries (a pre-trained model), or from seeded ones. */
  initialWeights: 'model file' | 'seeded';
  /** The final model as stored: bucket, object name, SHA-256 and size of its safetensors bytes, SHA-256 of its weights (weightsSha256). */
  model: { bucket: string; object: string; sha256: string; weightsSha256: string; bytes: number };
}

/**
 * Caps each site's update bucket at `bytes`: a site may write into its own bucket, and nothing
 * stopped it filling the server's disk within a round (40 MiB of garbage chunks were all taken).
 * The streams discard new messages when full, so a site past its cap only fails its own writes.
 * The cap is what a bucket can legitimately hold at once (update-size.ts): before the model is
 * known, next to nothing, or a model file's weights; then the updates of the rounds still open
 * at their exact largest size.
 */
async function capUpdateBuckets(nc: NatsConnection, names: readonly string[], bytes: number): Promise<void> {
  const jsm = await jetstreamManager(nc);
  for (const name of names) {
    const info = await jsm.streams.info(`OBJ_${name}`);
    if (info.config.max_bytes === bytes) continue;
    await jsm.streams.update(`OBJ_${name}`, { ...info.config, max_bytes: bytes });
  }
}

async function openOrCreate(objm: Objm, name: string): Promise<ObjectStore> {
  try {
    return await objm.create(name, { storage: StorageType.File });
  } catch {
    return await objm.open(name);
  }
}

/** How long a write of the coordinator's own (checkpoint, final model) is tried again before the job fails. */
const WRITE_RETRY_MS = 60_000;

/**
 * A site's restarts (hellos from a new process) logged in a minute; more are counted and said in
 * the next line logged. A genuine restart takes seconds, so a few a minute is already odd; a site
 * whose every hello names a new process (each costs it only a signature) would otherwise write a
 * line per hello.
 */
export const RESTART_LOGS_PER_MINUTE = 5;
/** The processes of a site that replaced one another, remembered to tell a second process from a restart: the latest few. */
const REPLACED_KEPT = 16;

/**
 * What a site's hellos may cost the coordinator: a hello is read whole (JSON, schema, signature:
 * about 20 ms for one of 1 MiB, which a wide table's column names and moments may make), and
 * a site sending them back to back held the coordinator's only thread. Each hello costs its bytes
 * (at least HELLO_MIN_COST_BYTES) from a budget of HELLO_BURST_BYTES a site, refilled at
 * HELLO_BYTES_PER_SECOND: a heartbeat of 1 MiB a second passes, a flood is refused unread.
 */
const HELLO_BURST_BYTES = 8 * 1024 * 1024;
const HELLO_BYTES_PER_SECOND = 2 * 1024 * 1024;
const HELLO_MIN_COST_BYTES = 16 * 1024;

/** The job's checkpoint as one object in its state bucket (replaced atomically each round). */
export class BucketCheckpointStore implements CheckpointStore {
  private readonly store: ObjectStore;
  private readonly wire: ObjectPutWire;
  private readonly bucket: string;
  constructor(store: ObjectStore, wire: ObjectPutWire, bucket: string) {
    this.store = store;
    this.wire = wire;
    this.bucket = bucket;
  }
  async load(): Promise<Uint8Array | undefined> {
    return (await retrying(() => this.store.getBlob(objectNames.checkpoint), { until: Date.now() + WRITE_RETRY_MS })) ?? undefined;
  }
  async save(parts: Uint8Array[]): Promise<void> {
    await retrying(() => putObject(this.wire, this.bucket, objectNames.checkpoint, parts, OBJECT_PUT), { until: Date.now() + WRITE_RETRY_MS });
  }
  async saveRecords(index: number, records: readonly RoundRecord[]): Promise<void> {
    const bytes = encodeRecordSegment(records);
    await retrying(() => putObject(this.wire, this.bucket, objectNames.records(index), [bytes], OBJECT_PUT), { until: Date.now() + WRITE_RETRY_MS });
  }
  async loadRecords(index: number): Promise<RoundRecord[]> {
    return readRecordSegment(this.store, index, WRITE_RETRY_MS);
  }
}

/** Ends of a run after which the same job goes on (paused, or stopped to be started again): the sites are not told to stop. */
const RESUMABLE = new Set(['CONSORT_C_PAUSED', 'CONSORT_C_ABORTED']);

/** How often a coordinator still waiting for its sites says so. */
const WAITING_LOG_MS = 10_000;

/** What the checkpoint keeps beside the model: the layout, replay protection, and what the sites said of themselves (the operator's report reads it). */
export interface TransportState {
  layout: ParameterLayout;
  ingestor: unknown;
  sites?: Record<string, JoinedSite>;
  /** The job's terms (core/job/terms.ts) it was trained on: a resume under other terms is refused. */
  terms?: string;
  /** The federation's input scaling, fixed when the rounds first started (core/data/moments.ts). */
  scaler?: InputScaler;
}

export async function runNatsCoordinator(o: NatsCoordinatorOptions): Promise<NatsCoordinatorResult> {
  const key = jobKey(o.job.metadata);
  const subject = subjects(key).status;
  // One coordinator per job: a second would resume from an older checkpoint and refuse, as from
  // the future, what the sites send the first (or, started together, both train the job).
  const me = { instance: nuid.next(), since: Date.now() };
  const status: StatusAnswer = { me, answer: (msg) => msg.respond(json({ ...IDLE_STATUS, job: key, coordinator: me } satisfies CoordinatorStatus)) };
  const sub = o.nc.subscribe(subject, {
    callback: (err, msg) => {
      if (!err) status.answer(msg);
    },
  });
  try {
    await refuseIfAnotherCoordinator(o.nc, subject, me, o.job.metadata.name);
    return await coordinate(o, status);
  } finally {
    sub.unsubscribe();
  }
}

/** Who answers on the job's status subject, and how (idle until the coordinator's state is loaded). */
interface StatusAnswer {
  readonly me: { instance: string; since: number };
  answer: (msg: Msg) => void;
}

async function coordinate(o: NatsCoordinatorOptions, status: StatusAnswer): Promise<NatsCoordinatorResult> {
  const { job, nc, log } = o;
  const spec = job.spec;
  const key = jobKey(job.metadata);
  const subj = subjects(key);
  const bucket = buckets(key);
  const siteNames = spec.sites.map((s) => s.name);
  const objm = new Objm(nc);
  const models = await openOrCreate(objm, bucket.models);
  const state = await openOrCreate(objm, bucket.state);
  const updateStores = new Map<string, ObjectStore>();
  for (const s of siteNames) updateStores.set(s, await openOrCreate(objm, bucket.updates(s)));
  const checkpoints = new BucketCheckpointStore(state, objectWire(nc, bucket.state), bucket.state);
  // When the connection to the server was last interrupted: a read that failed since is tried again.
  let interrupted = 0;
  void (async () => {
    for await (const s of nc.status()) if (s.type === 'disconnect' || s.type === 'reconnect') interrupted = Date.now();
  })();

  // What every process of this job must share; a checkpoint of other terms is another training.
  const terms = jobTerms(job.spec);
  let resume: Checkpoint | undefined;
  /** The checkpoint is of a job that was over, its final scores in it: no site is needed to end it again. */
  let finishedBefore = false;
  const saved = await loadCheckpoint(checkpoints).catch((err: unknown) => {
    throw err instanceof OperatorError && err.code === 'CONSORT_C_CHECKPOINT'
      ? new OperatorError(err.code, `state bucket ${bucket.state}: ${err.message}`, { cause: err })
      : err;
  });
  if (saved) {
    resume = saved;
    const savedTerms = (resume.transport as Partial<TransportState> | undefined)?.terms;
    const differ = savedTerms !== undefined ? termsDiffer(savedTerms, terms, { here: 'in the checkpoint', there: 'now' }) : undefined;
    if (differ) {
      throw new OperatorError(
        'CONSORT_C_CHECKPOINT',
        `the job's state bucket ${bucket.state} holds a checkpoint (after round ${resume.round}) of ${job.metadata.name} trained on other terms: ${differ}; run the job as it was, or under another name (or delete that bucket) to start over`,
      );
    }
    log(`resuming ${job.metadata.name} from its checkpoint after round ${resume.round}`);
    const over = resume.round >= spec.rounds || (resume.stoppedBy !== undefined && resume.stoppedBy !== 'rounds');
    finishedBefore = over && resume.final !== undefined;
    if (finishedBefore) {
      log(
        `${job.metadata.name} was over (its final model scored by its sites, its scores in the checkpoint): it ends again without its sites; to train anew, run it under another name, or delete its state bucket ${bucket.state}`,
      );
    } else if (over) {
      log(
        `${job.metadata.name} already finished training (after round ${resume.round}${resume.stoppedBy && resume.stoppedBy !== 'rounds' ? `, stopped by ${resume.stoppedBy}` : ''}): its sites are needed only to score the final model again; to train anew, run it under another name, or delete its state bucket ${bucket.state}`,
      );
    }
  }
  const resumedState = resume?.transport as TransportState | undefined;
  let layout: ParameterLayout | undefined = resumedState?.layout;
  let ingestor: UpdateIngestor | undefined;
  let round = resume?.round ?? 0;
  let done = false;
  const tally: RoundTally | undefined = o.tally ? emptyTally() : undefined;
  const lastSeen = new Map<string, number>();
  // Kept across a resume: a site that does not come back is still described in the report.
  const joined: Record<string, JoinedSite> = { ...(resumedState?.sites ?? {}) };
  const aliveMs = o.aliveMs ?? 5000;
  const alive = () => siteNames.filter((s) => (lastSeen.get(s) ?? 0) > Date.now() - aliveMs);

  /** The buckets capped for the model (makeIngestor): awaited before any task goes out, whose update the cap must let in. */
  let bucketsCapped: Promise<void> = Promise.resolve();
  const makeIngestor = (l: ParameterLayout) => {
    const maxUpdateBytes = o.maxUpdateBytes ?? maxUpdateBytesFor(l, spec);
    const cap = updateBucketCap(l, spec, maxUpdateBytes);
    bucketsCapped = retrying(() => capUpdateBuckets(nc, siteNames.map(bucket.updates), cap), { until: Date.now() + WRITE_RETRY_MS }).catch((err: unknown) =>
      log(`warning: the sites' update buckets could not be capped at ${cap} bytes for the model (their updates may be refused): ${(err as Error).message}`),
    );
    const ing = new UpdateIngestor({
      job: key,
      protocol: PROTOCOL_VERSION,
      siteKeys: new Map(Object.entries(o.siteKeys)),
      layout: l,
      codec: spec.compression.codec,
      topkFraction: spec.compression.topkFraction,
      control: spec.strategy.name === 'scaffold',
      maxUpdateBytes,
      mode: spec.aggregation.mode,
      maxStaleness: spec.aggregation.maxStaleness,
    });
    if (resumedState?.ingestor !== undefined) ing.restore(resumedState.ingestor);
    return ing;
  };
  if (layout) ingestor = makeIngestor(layout);
  else {
    // Until a hello says what the model is, a bucket holds only what a site may put there before it.
    const cap = preLayoutBucketCap(spec);
    if (cap !== undefined) {
      await capUpdateBuckets(nc, siteNames.map(bucket.updates), cap).catch((err: unknown) =>
        log(`warning: the sites' update buckets keep no size limit until the model is known: ${(err as Error).message}`),
      );
    }
  }

  // Refusals the ingestor never sees (hellos, envelopes before the round loop runs), counted
  // beside its own: every refused message is counted once, whichever part refused it.
  const refusedHere = new Map<RejectionCode, number>();
  const countRefusal = (code: RejectionCode) => refusedHere.set(code, (refusedHere.get(code) ?? 0) + 1);
  const rejections = (): Record<RejectionCode, number> => {
    const counts = ingestor?.counts();
    return Object.fromEntries(REJECTION_CODES.map((c) => [c, (counts?.[c] ?? 0) + (refusedHere.get(c) ?? 0)])) as Record<RejectionCode, number>;
  };

  const welcome = (msg: Msg, w: Omit<Welcome, 'type' | 'protocol' | 'round' | 'done'>) =>
    msg.respond(
      json({
        type: 'welcome',
        protocol: PROTOCOL_VERSION,
        round,
        done,
        ...w,
        ...(w.reason !== undefined ? { reason: fitReason(w.reason) } : {}),
      } satisfies Welcome),
    );
  const refusedHello = new Set<string>();
  /** Per site, why its latest hello was refused (cleared when one is taken): what a task it cannot get fails with. */
  const helloRefusals = new Map<string, string>();
  /**
   * What the sites' model files carry, as the first site accepted said: a pre-trained model's
   * weights (their object's digest), or 'seeded' (a topology alone). Every site must say the same;
   * those that carry weights each hold a copy round 1 can start from.
   */
  let startsFrom: string | undefined;
  /** Round 1 started (or starts) from the weights the sites' model file carries: as their hellos say, or as they said before a resume. */
  const pretrained = () => (startsFrom !== undefined ? startsFrom !== 'seeded' : Object.values(joined).some((j) => j.initialSha256 !== undefined));
  const initialCopies = new Map<string, NonNullable<Hello['initial']>>();
  /** Each site's process, as its hellos name it. */
  const instances = new Map<string, string>();
  /**
   * Per site, the processes a newer one replaced (a restart), and those refused for running
   * beside an earlier one: the latest REPLACED_KEPT of each, since a site may name a new process
   * in every hello.
   */
  const replaced = new Map<string, Set<string>>();
  const twice = new Map<string, Set<string>>();
  const remember = (m: Map<string, Set<string>>, site: string, instance: string) => {
    const kept = m.get(site) ?? new Set<string>();
    m.set(site, kept.add(instance));
    for (const oldest of kept) if (kept.size > REPLACED_KEPT) kept.delete(oldest);
  };
  /** Per site, the restarts logged in the current minute (from `since`), and those past RESTART_LOGS_PER_MINUTE, counted. */
  const restartLogs = new Map<string, { since: number; logged: number; unsaid: number }>();
  const logRestart = (site: string, line: string) => {
    const now = Date.now();
    let w = restartLogs.get(site);
    const unsaid = w && now - w.since >= 60_000 ? w.unsaid : 0;
    if (!w || now - w.since >= 60_000) restartLogs.set(site, (w = { since: now, logged: 0, unsaid: 0 }));
    if (w.logged < RESTART_LOGS_PER_MINUTE) {
      w.logged++;
      return log(unsaid > 0 ? `${line} (and ${unsaid} restarts before, not logged)` : line);
    }
    if (w.unsaid++ === 0)
      log(
        `site "${site}" started again more than ${RESTART_LOGS_PER_MINUTE} times within a minute: its further restarts are counted, and said in its next restart logged`,
      );
  };
  /** Per site, the bytes its hellos may still cost, as of `at`. */
  const helloBudget = new Map<string, { bytes: number; at: number }>();
  const helloAffordable = (site: string, size: number): boolean => {
    if (!siteNames.includes(site)) return true;
    const now = Date.now();
    const b = helloBudget.get(site) ?? { bytes: HELLO_BURST_BYTES, at: now };
    b.bytes = Math.min(HELLO_BURST_BYTES, b.bytes + ((now - b.at) / 1000) * HELLO_BYTES_PER_SECOND);
    b.at = now;
    helloBudget.set(site, b);
    const cost = Math.max(size, HELLO_MIN_COST_BYTES);
    if (b.bytes < cost) return false;
    b.bytes -= cost;
    return true;
  };
  const onHello = (msg: Msg) => {
    const site = msg.subject.split('.').pop() ?? '';
    const refuse = (code: RejectionCode, reason: string) => {
      countRefusal(code);
      if (siteNames.includes(site)) helloRefusals.set(site, `${reason} [${code}]`);
      // Once per site and code, however many hellos come (a hostile stream of them cannot flood the log).
      if (!refusedHello.has(`${site}\u0000${code}`)) {
        refusedHello.add(`${site}\u0000${code}`);
        log(`refused site "${site}": ${reason} [${code}]`);
      }
      welcome(msg, { accepted: false, code, reason });
    };
    if (!helloAffordable(site, msg.data.length)) {
      return refuse(
        'CONSORT_R_HELLO_RATE',
        `the site's hellos come at more than ${HELLO_BYTES_PER_SECOND / (1024 * 1024)} MiB a second (each counted as at least ${HELLO_MIN_COST_BYTES / 1024} KiB): refused unread; one a second is plenty`,
      );
    }
    const raw = parseJson(msg.data) as { protocol?: unknown } | undefined;
    if (raw && typeof raw.protocol === 'number' && raw.protocol !== PROTOCOL_VERSION) {
      return refuse('CONSORT_R_UNKNOWN_PROTOCOL', `the site speaks protocol v${raw.protocol}; this coordinator speaks v${PROTOCOL_VERSION}`);
    }
    const h = Hello.safeParse(raw);
    if (!h.success) return refuse('CONSORT_R_MALFORMED', `not a hello: ${h.error.issues[0]?.path.join('.')}: ${h.error.issues[0]?.message}`);
    if (h.data.site !== site) return refuse('CONSORT_R_SUBJECT_MISMATCH', `hello for "${h.data.site}" on ${msg.subject}`);
    if (h.data.job !== key) return refuse('CONSORT_R_WRONG_JOB', `hello for job ${h.data.job}`);
    const pk = o.siteKeys[site];
    if (!pk || !siteNames.includes(site)) return refuse('CONSORT_R_UNKNOWN_SITE', `"${site}" is not a site of ${job.metadata.name}`);
    if (!verifyEnvelope(h.data, pk)) return refuse('CONSORT_R_BAD_SIGNATURE', "the hello is not signed by the site's key");
    const otherTerms = h.data.terms !== undefined ? termsDiffer(terms, h.data.terms, { here: 'at the coordinator', there: 'at the site' }) : undefined;
    if (otherTerms)
      return refuse('CONSORT_R_WRONG_JOB', `the site runs another version of the job: ${otherTerms}; every process must run the same job file and --seed`);
    // Only a model file (layers) can carry weights. Taken, such a hello would make round 1 start
    // from the site's weights, had it joined first, and every honest site be refused (and stop).
    if (h.data.initial && spec.model.type !== 'layers') {
      return refuse(
        'CONSORT_R_WRONG_JOB',
        `the site's hello names pre-trained weights, but the job's model (${spec.model.type}) is built from its spec and carries none`,
      );
    }
    // The first layout taken is the model: one the job's spec does not build, or one this process
    // cannot hold (a hello may name 2^40 parameters), is refused before it becomes the reference.
    const parameters = layoutSize(h.data.layout);
    const classes = spec.classes?.length ?? h.data.labels.length;
    const expected = builtInParameters(spec.model, h.data.sampleShape, classes);
    if (expected !== undefined && parameters !== expected) {
      return refuse(
        'CONSORT_R_WRONG_SHAPE',
        `the site's model has ${parameters} parameters; the job's ${spec.model.type} model for ${h.data.sampleShape.join('x')} inputs and ${classes} classes has ${expected}`,
      );
    }
    if (4 * parameters > totalmem()) {
      return refuse(
        'CONSORT_R_OVERSIZED',
        `the site's model has ${parameters} parameters (${gigabytes(4 * parameters)} of weights), more than this coordinator's ${gigabytes(totalmem())} of memory`,
      );
    }
    if (!layout) {
      layout = h.data.layout;
      ingestor = makeIngestor(layout);
      log(`model layout from site "${site}": ${layout.length} tensors`);
    } else if (JSON.stringify(layout) !== JSON.stringify(h.data.layout)) {
      return refuse('CONSORT_R_WRONG_SHAPE', 'the site builds a different model (check its data shape and classes)');
    }
    // The same layout is not enough: a first-layer weight belongs to a feature by its position.
    const other = Object.entries(joined).find(([s, j]) => s !== site && j.features);
    const differ = other && featuresDiffer(other[1].features, h.data.features, { a: `site "${other[0]}"`, b: `site "${site}"` });
    // Which of the two is wrong is the user's to say: the first to join is only the reference.
    if (differ) return refuse('CONSORT_R_WRONG_SHAPE', `the site's feature columns are not those of site "${other[0]}", which joined first: ${differ}`);
    const from = h.data.initial?.sha256 ?? 'seeded';
    if (startsFrom !== undefined && from !== startsFrom) {
      const what = (d: string) => (d === 'seeded' ? 'no weights (a seeded start)' : `weights of SHA-256 ${d.slice(0, 12)}…`);
      return refuse(
        'CONSORT_R_WRONG_JOB',
        `the site's model file carries ${what(from)}, the other sites' ${what(startsFrom)}; every site must have the same model file`,
      );
    }
    startsFrom = from;
    if (h.data.initial) initialCopies.set(site, h.data.initial);
    const instance = h.data.instance;
    if (instance !== undefined && twice.get(site)?.has(instance)) {
      return refuse(
        'CONSORT_R_SITE_TWICE',
        `another process of site "${site}", started before this one, is still running (both say hello, and both would take its tasks): this one stops; a site runs once`,
      );
    }
    // A process this site's newer one replaced is still saying hello: two run at once. The first
    // stays the site; the later one is refused from its next hello on (it stops).
    const before = instances.get(site);
    if (instance !== undefined && before !== undefined && before !== instance && replaced.get(site)?.has(instance)) {
      remember(twice, site, before);
      instances.set(site, instance);
      lastSeen.set(site, Date.now());
      welcome(msg, { accepted: true });
      return;
    }
    if (!lastSeen.has(site)) log(`site "${site}" joined`);
    // Another process of a site already here: it lost whatever task it had been sent (a round waiting for it gets it again).
    if (instance !== undefined) instances.set(site, instance);
    if (before !== undefined && instance !== undefined && before !== instance) {
      // Site state that lives only in the site: a restart starts it over, unless the site keeps it on its disk (--state).
      const held = [
        // Every lossy codec keeps one (error feedback): int8's and fp16's rounding is sent later as top-k's left-out values are.
        ...(spec.compression.codec !== 'none'
          ? [`its ${spec.compression.codec === 'topk' ? 'top-k' : spec.compression.codec} residual (what its earlier updates left unsent)`]
          : []),
        ...(spec.strategy.name === 'scaffold' ? ['its SCAFFOLD control variate'] : []),
      ];
      logRestart(
        site,
        `site "${site}" started again${
          held.length === 0
            ? ''
            : h.data.keepsState
              ? `; it keeps ${held.join(' and ')} on its disk, and carries on from there`
              : `: ${held.join(' and ')} ended with the old process and start over, so the run no longer ends in the bytes of an uninterrupted one (consort site --state DIR keeps them)`
        }`,
      );
      remember(replaced, site, before);
      transport?.siteRestarted(site);
    }
    joined[site] = {
      labels: h.data.labels,
      sampleShape: h.data.sampleShape,
      ...(h.data.features ? { features: h.data.features } : {}),
      ...(h.data.quality ? { quality: h.data.quality } : {}),
      ...(h.data.moments ? { moments: h.data.moments } : {}),
      ...(h.data.backend ? { backend: h.data.backend } : {}),
      ...(h.data.initial ? { initialSha256: h.data.initial.sha256 } : {}),
    };
    lastSeen.set(site, Date.now());
    helloRefusals.delete(site);
    welcome(msg, { accepted: true });
  };

  /**
   * A pre-trained model's weights, read from the first site's copy that reads whole and is what
   * its hello said; undefined for a seeded start.
   */
  const initialFromSites = async (): Promise<Float32Array | undefined> => {
    if (initialCopies.size === 0) return undefined;
    const problems: string[] = [];
    for (const [site, copy] of initialCopies) {
      const b = bucket.updates(site);
      try {
        const bytes = await retrying(
          () =>
            readObject(objectWire(nc, b), b, objectNames.initial, {
              expect: { bucket: b, name: objectNames.initial, ...copy },
              maxBytes: copy.size,
              batchBytes: OBJECT_READ_BATCH_BYTES,
            }),
          { until: Date.now() + WRITE_RETRY_MS, retryable: (err) => !(err instanceof ObjectMismatchError) },
        );
        const decoded = decodeSafetensors(bytes);
        if (JSON.stringify(decoded.layout) !== JSON.stringify(layout)) throw new Error('its tensors are not the model layout');
        const bad = decoded.values.findIndex((v) => !Number.isFinite(v));
        if (bad >= 0) throw new Error(`element ${bad} is ${decoded.values[bad]}`);
        log(`round 1 starts from the weights of the sites' model file (site "${site}"'s copy, SHA-256 ${copy.sha256.slice(0, 12)}…)`);
        return decoded.values;
      } catch (err) {
        problems.push(`site "${site}": ${(err as Error).message}`);
      }
    }
    throw new OperatorError(
      'CONSORT_C_INITIAL_WEIGHTS',
      `the sites' model file carries weights, but no site's copy of them could be read: ${problems.join('; ')}`,
    );
  };

  let transport: NatsTransport | undefined;
  // Envelopes are handled one at a time, so the ingestor's view never races.
  let inbox: Promise<void> = Promise.resolve();
  const serially = (fn: () => Promise<void> | void) => {
    inbox = inbox.then(fn).catch((err: unknown) => log(`message handling failed: ${(err as Error).message}`));
  };
  const notReady = (msg: Msg): void => {
    countRefusal('CONSORT_R_NOT_READY');
    if (msg.reply) msg.respond(json({ type: 'ack', accepted: false, code: 'CONSORT_R_NOT_READY', reason: 'no round is open yet' }));
  };
  const lastToken = (msg: Msg) => msg.subject.split('.').pop() ?? '';
  // A site may have JetStream push model chunks onto any subject it can name (the server does not
  // check a consumer's delivery subject): only a message whose own subject is the one subscribed
  // to is looked at; the rest are dropped and counted.
  let stray = 0;
  const on = (subject: string, handle: (msg: Msg) => void) => {
    const pattern = new RegExp(`^${subject.replaceAll('.', '\\.').replace(/\*$/, '[a-z0-9-]+')}$`);
    return nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return;
        if (pattern.test(msg.subject)) handle(msg);
        else stray++;
      },
    });
  };
  const statusNow = (): CoordinatorStatus => {
    const sum = (m: ReadonlyMap<number, number> | undefined) => [...(m?.values() ?? [])].reduce((a, b) => a + b, 0);
    return {
      job: key,
      round,
      done,
      joined: [...lastSeen.keys()].sort(),
      alive: alive(),
      // Updates counted in the current round, redeliveries answered as duplicates, refusals per code.
      accepted: ingestor?.acceptedIn(round) ?? 0,
      duplicates: ingestor?.duplicates() ?? 0,
      rejections: rejections(),
      stray,
      bytesIn: sum(transport?.bytesIn),
      bytesOut: sum(transport?.bytesOut),
      ...(tally
        ? {
            tally: {
              round: tally.round,
              sampled: tally.sampled,
              participants: tally.participants,
              missed: tally.missed,
              norms: tally.norms,
              roundSeconds: tally.roundSeconds.slice(-STATUS_ROUND_SECONDS),
            },
          }
        : {}),
    };
  };
  const subs: Subscription[] = [
    on(subj.helloAll, onHello),
    on(subj.updateAll, (msg) => serially(() => (transport ? transport.onUpdate(lastToken(msg), msg) : notReady(msg)))),
    on(subj.evaluationAll, (msg) => serially(() => (transport ? transport.onEvaluation(lastToken(msg), msg) : notReady(msg)))),
  ];
  status.answer = (msg) => msg.respond(json({ ...statusNow(), coordinator: status.me }));
  await nc.flush();

  try {
    // Wait for the sites: all of them, or a quorum once the join window has passed.
    const joinDeadline = Date.now() + (o.joinTimeoutMs ?? 30_000);
    // Waiting is said, every WAITING_LOG_MS, with who is missing: a coordinator with no sites is not silent.
    let told = Date.now();
    // Told by the operator it runs in, or asked of the operator (a coordinator in a Pod).
    const asker = o.notComing ? undefined : askAbsentSites(nc, key, log);
    const notComing = o.notComing ?? asker!.current;
    try {
      for (;;) {
        if (o.signal?.aborted) throw new OperatorError('CONSORT_C_ABORTED', 'stopped before the sites joined');
        const n = alive().length;
        // A job that was over needs none of its sites: they were told so, and left.
        if (layout && (n === siteNames.length || finishedBefore)) break;
        const refused = notComing();
        if (layout && refused && refused.size > 0 && n >= spec.sampling.minSites) {
          const here = new Set(alive());
          if (siteNames.every((s) => here.has(s) || refused.has(s))) break;
        }
        if (layout && n >= spec.sampling.minSites && Date.now() > joinDeadline) break;
        if (Date.now() - told >= (o.waitingLogMs ?? WAITING_LOG_MS)) {
          told = Date.now();
          const here = new Set(alive());
          log(
            `waiting for sites: ${n} of ${siteNames.length} joined (at least ${spec.sampling.minSites} needed); missing ${siteNames.filter((s) => !here.has(s)).join(', ')}`,
          );
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      asker?.stop();
    }
    log(`${alive().length} of ${siteNames.length} sites joined; ${resume ? `resuming after round ${resume.round}` : 'starting'}`);
    // What each site said of its labels, for the warnings below.
    const labelCounts = Object.entries(joined).map(([site, j]) => ({ site, labels: j.quality?.labels, trainLabels: j.quality?.trainLabels }));
    if (job.spec.classes) for (const w of dataWarnings(job.spec.classes, labelCounts)) log(`warning: ${w}`);
    for (const w of aucTargetWarnings(job.spec, labelCounts)) log(`warning: ${w}`);
    if (!resume) for (const w of scaleWarnings(siteNames.flatMap((s) => (joined[s] ? [{ site: s, ...joined[s] }] : [])))) log(`warning: ${w}`);
    // One input scaling for the whole run (tabular data): pooled, in the job's site order, from the
    // moments of the sites here as the rounds first start; a resumed run keeps its own.
    const savedScaler = InputScaler.safeParse(resumedState?.scaler);
    // A pre-trained model was trained on the inputs as they are: scaled, its weights would be wasted.
    const inputScaler = savedScaler.success
      ? savedScaler.data
      : pretrained()
        ? undefined
        : (federationScaler(siteNames.map((s) => joined[s] ?? {})) ?? fixedInputScaler(job.spec));
    if (inputScaler && !savedScaler.success) {
      const pooled = siteNames.filter((s) => joined[s]?.moments).length;
      log(
        pooled > 0
          ? `inputs scaled by the pooled moments of ${pooled} sites`
          : 'inputs scaled by the clinical reference values every site uses (synthetic hospitals)',
      );
    }
    if (pretrained() && !inputScaler) log("inputs not scaled: the sites' model file carries weights, trained on the inputs as they are");
    await bucketsCapped;
    const fromEnv = aggregationFromEnv();
    const parameters = layoutSize(layout!);
    tuneGcForModel(4 * parameters);
    const storedUpdates = parameters >= (o.storedUpdatesFrom ?? fromEnv?.from ?? STORED_UPDATES_FROM);
    const aggregationRange = o.aggregationRange ?? fromEnv?.range ?? AGGREGATION_RANGE;
    if (storedUpdates) log(`${parameters} parameters: updates stay in their buckets, aggregated ${aggregationRange} parameters at a time`);
    const aggregationThreads = o.aggregationThreads ?? aggregationThreadsFromEnv() ?? defaultAggregationThreads();
    const late = spec.aggregation.mode === 'buffered' ? await keptLateEnvelopes(state, bucket.state, objectWire(nc, bucket.state), ingestor!, log) : undefined;
    transport = new NatsTransport({
      nc,
      spec,
      job: key,
      subjects: subj,
      layout: layout!,
      models,
      modelsBucket: bucket.models,
      updates: async (s) => updateStores.get(s) ?? (await objm.open(bucket.updates(s))),
      ingestor: ingestor!,
      alive,
      lastSeen: (s) => lastSeen.get(s),
      whyAbsent: (s) => helloRefusals.get(s),
      ...(o.waitingLogMs !== undefined ? { waitingLogMs: o.waitingLogMs } : {}),
      interruptedSince: (t) => interrupted >= t,
      storedUpdates,
      sharedBuffers: aggregationThreads > 1,
      ...(inputScaler ? { inputScaler } : {}),
      ...(late ? { lateEnvelopes: late.keeper, resumedLate: late.resumed } : {}),
      log,
    });
    o.onCounters?.({ rejections, bytesIn: transport.bytesIn, bytesOut: transport.bytesOut });
    const kept = tally ? tallyRounds(tally) : undefined;
    const events: RoundEvents = {
      ...o.events,
      roundStarted: (r, sites) => {
        round = r;
        kept?.roundStarted(r, sites);
        nc.publish(
          subj.round,
          json({ type: 'round', protocol: PROTOCOL_VERSION, job: key, round: r, phase: 'started', sites: [...sites] } satisfies RoundNotice),
        );
        o.events?.roundStarted?.(r, sites);
      },
      ...(kept
        ? {
            siteUpdate: (r, site, u) => {
              kept.siteUpdate(r, site, u);
              o.events?.siteUpdate?.(r, site, u);
            },
            roundFinished: (record, r) => {
              kept.roundFinished(record, r);
              o.events?.roundFinished?.(record, r);
            },
          }
        : {}),
    };
    const coordinator = new RoundCoordinator({
      spec,
      initial: resume?.global ?? (await initialFromSites()) ?? initialParameters(layout!, spec.seed),
      transport,
      events,
      checkpoints: {
        store: checkpoints,
        job: key,
        transportState: () =>
          ({
            layout: layout!,
            ingestor: ingestor!.snapshot(transport?.unfolded()),
            sites: joined,
            terms,
            ...(inputScaler ? { scaler: inputScaler } : {}),
          }) satisfies TransportState,
      },
      ...(resume ? { resume } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.pauseRequested ? { pauseRequested: o.pauseRequested } : {}),
      aggregationRange,
      aggregationThreads,
    });
    let result: Awaited<ReturnType<typeof coordinator.run>>;
    try {
      result = await coordinator.run();
    } catch (err) {
      // The job failed (not stopped, not paused: a run that can go on): the sites are told, and stop.
      if (err instanceof OperatorError && !RESUMABLE.has(err.code)) {
        // The last figures first: a watcher stops watching at the notice.
        nc.publish(subj.summary, json(statusNow()));
        const notice: RoundNotice = { type: 'round', protocol: PROTOCOL_VERSION, job: key, round, phase: 'failed', reason: fitReason(err.message) };
        nc.publish(subj.round, json(notice));
        await nc.flush().catch(() => {});
      }
      throw err;
    }
    // Nothing of the rounds is needed any more: only the checkpoint and the final model stay.
    await transport.finished();
    const final = safetensorsParts(layout!, result.global, { job: key });
    const modelsWire = objectWire(nc, bucket.models);
    // The weights' own hash rides in the object's metadata: what `consort run` prints, for whoever reads the store (a coordinator Pod's operator).
    const weightsSha = weightsSha256(result.global);
    const putFinal = { ...OBJECT_PUT, metadata: { [WEIGHTS_SHA256_KEY]: weightsSha } };
    const stored = await retrying(() => putObject(modelsWire, bucket.models, o.finalModelName ?? FINAL_MODEL, final, putFinal), {
      until: Date.now() + WRITE_RETRY_MS,
    });
    done = true;
    nc.publish(subj.summary, json(statusNow()));
    nc.publish(subj.round, json({ type: 'round', protocol: PROTOCOL_VERSION, job: key, round: result.roundsCompleted, phase: 'done' } satisfies RoundNotice));
    await nc.flush();
    return {
      ...result,
      layout: layout!,
      sites: joined,
      resumedFrom: resume?.round ?? 0,
      rejections: rejections(),
      bytesIn: Object.fromEntries(transport.bytesIn),
      bytesOut: Object.fromEntries(transport.bytesOut),
      ...(inputScaler ? { inputScaler } : {}),
      initialWeights: pretrained() ? 'model file' : 'seeded',
      model: {
        bucket: bucket.models,
        object: o.finalModelName ?? FINAL_MODEL,
        // Hashed as it was written.
        sha256: stored.sha256,
        weightsSha256: weightsSha,
        bytes: final.reduce((n, p) => n + p.length, 0),
      },
    };
  } finally {
    transport?.shutdown();
    for (const s of subs) s.unsubscribe();
    await inbox;
    await transport?.settled();
  }
}

/**
 * Buffered mode: the late updates' envelopes in the job's state bucket (LateEnvelopes), and those a
 * coordinator that stopped kept there and its checkpoint does not count (to take again); those it
 * counts were folded into a checkpointed round, and go.
 */
async function keptLateEnvelopes(
  state: ObjectStore,
  bucket: string,
  wire: ObjectPutWire,
  ingestor: UpdateIngestor,
  log: (line: string) => void,
): Promise<{ keeper: LateEnvelopes; resumed: ResumedLate[] }> {
  const keeper: LateEnvelopes = {
    keep: async (round, site, data) => {
      await retrying(() => putObject(wire, bucket, objectNames.late(round, site), [data], OBJECT_PUT), { until: Date.now() + WRITE_RETRY_MS });
    },
    drop: async (round, site) => {
      await retrying(() => state.delete(objectNames.late(round, site)), { until: Date.now() + WRITE_RETRY_MS });
    },
  };
  const resumed: ResumedLate[] = [];
  const kept = (await retrying(() => state.list(), { until: Date.now() + WRITE_RETRY_MS })).filter((i) => !i.deleted && i.name.startsWith('late/'));
  for (const info of kept) {
    const m = /^late\/r(\d+)\/(.+)$/.exec(info.name);
    const data = m ? await retrying(() => state.getBlob(info.name), { until: Date.now() + WRITE_RETRY_MS }) : null;
    if (!m || !data || ingestor.counted(Number(m[1]), m[2]!)) {
      await state.delete(info.name).catch(() => {});
      continue;
    }
    resumed.push({ site: m[2]!, round: Number(m[1]), data });
  }
  if (resumed.length > 0) log(`${resumed.length} late update(s) acknowledged before the restart and not yet folded into a round: taken again`);
  return { keeper, resumed };
}

/** A status with nothing counted yet: what a coordinator answers before its state is loaded. */
const IDLE_STATUS = { round: 0, done: false, joined: [], alive: [], accepted: 0, duplicates: 0, rejections: {}, stray: 0 };

/** How long a coordinator listens for others of its job before it starts: at most, and after the last answer (its own comes first). */
const PEER_PROBE_MS = 2000;
const PEER_PROBE_STALL_MS = 300;

/**
 * Asks the job's status subject who answers. Every coordinator answers there from the moment it
 * starts (`me.since`, taken once it listens, before it asks): of two that hear each other the
 * later one stops, and of two where only the later one hears the other, again the later one. A
 * coordinator that listens after another asked is later than it, and asks in its turn.
 */
async function refuseIfAnotherCoordinator(nc: NatsConnection, subject: string, me: { instance: string; since: number }, job: string): Promise<void> {
  await nc.flush();
  let replies: AsyncIterable<Msg>;
  try {
    replies = await nc.requestMany(subject, new Uint8Array(0), { maxWait: PEER_PROBE_MS, strategy: 'stall', stall: PEER_PROBE_STALL_MS });
  } catch {
    return; // no responders at all: not even this one yet (a server that drops the request): nobody to refuse for
  }
  for await (const m of replies) {
    const other = CoordinatorStatus.safeParse(parseJson(m.data)).data?.coordinator;
    if (!other || other.instance === me.instance) continue;
    const earlier = other.since < me.since || (other.since === me.since && other.instance < me.instance);
    if (earlier) {
      throw new OperatorError(
        'CONSORT_C_ANOTHER_COORDINATOR',
        `another coordinator of ${job} has been running on this NATS server since ${new Date(other.since).toISOString()}: a job has one coordinator; stop that one first (its checkpoint is kept, and a coordinator started then resumes from it)`,
      );
    }
  }
}
