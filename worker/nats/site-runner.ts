// A site as its own process: joins the job over NATS (signed hello, repeated as a heartbeat),
// takes fit and evaluate tasks addressed to it alone, fetches the global model from the job's
// models bucket, trains and scores with a SiteWorker, and sends back a signed update whose
// payload sits in its own updates bucket. Raw data never leaves; only updates, metrics, counts
// (and tabular data's per-column moments, core/data/moments.ts).
import { layoutSize } from '../../core/model/layout.ts';
import { tuneGcForModel } from '../../core/gc-tuning.ts';
import { type Msg, type NatsConnection, RequestError, type Subscription } from '@nats-io/transport-node';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import { jobTerms } from '../../core/job/terms.ts';
import { encodeUpdateParts } from '../../core/protocol/codecs.ts';
import { putObject } from '../../core/protocol/object-put.ts';
import { type ObjectReadWire, readObject } from '../../core/protocol/object-read.ts';
import { objectWire } from '../../core/protocol/object-wire.ts';

import { refusedForGood } from '../../core/protocol/rejections.ts';
import { retrying } from '../../core/protocol/retry.ts';
import { SiteStateStore } from './site-state.ts';
import {
  Ack,
  CLOCK_OFFSET_WORTH_SAYING_MS,
  deadlineOnSite,
  type EvaluateTask,
  evaluationEnvelope,
  type FitTask,
  fitReason,
  type Hello,
  type TaskFailureEnvelope,
  type ObjectRef,
  RoundNotice,
  Task,
  updateEnvelope,
  Welcome,
} from '../../core/protocol/messages.ts';
import { newNonce, signEnvelope } from '../../core/protocol/signing.ts';
import { buckets, jobKey, OBJECT_PUT, OBJECT_READ_BATCH_BYTES, objectNames, PROTOCOL_VERSION, subjects } from '../../core/protocol/subjects.ts';
import { decodeSafetensors, safetensorsParts } from '../../core/tensor/safetensors.ts';
import type { BackendPreference } from '../backend.ts';
import { WorkerError } from '../errors.ts';
import { SiteWorker } from '../site-worker.ts';
import { ArmedFailpoints, type Failpoint } from './failpoints.ts';
import { decodeJson as parseJson, encodeJson as json } from '../../core/protocol/wire.ts';

/**
 * The bytes of a model object a task refers to, read into one array (`into` when it is large
 * enough), by direct get (readObject: no consumer). The stored object must be the referenced one
 * (bucket, name, size, digest), and its chunks are checked against that digest as they come: no
 * second SHA-256 pass over the model.
 */
export async function readModelObject(wire: ObjectReadWire, ref: ObjectRef, into?: Uint8Array): Promise<Uint8Array> {
  return await readObject(wire, ref.bucket, ref.name, {
    expect: ref,
    maxBytes: ref.size,
    batchBytes: OBJECT_READ_BATCH_BYTES,
    ...(into && into.length >= ref.size ? { into } : {}),
  });
}

export interface SiteRunnerOptions {
  job: FederatedJob;
  site: string;
  nc: NatsConnection;
  /** The site's NKey seed: signs every hello, update and evaluation. */
  seed: string;
  baseDir: string;
  backend: BackendPreference;
  log: (line: string) => void;
  heartbeatMs?: number;
  /**
   * Where the site keeps what only it holds between rounds (top-k residual, SCAFFOLD's c_i), so
   * that a restarted process carries on (site-state.ts); absent: they start over at a restart.
   */
  stateDir?: string;
  /** Points at which the process stops itself (SIGSTOP), or a task fails, for crash tests (failpoints.ts). */
  failpoints?: readonly Failpoint[];
  /** Ends the runner early (tests, signals). */
  signal?: AbortSignal;
}

export interface SiteRunSummary {
  site: string;
  fits: number;
  evaluations: number;
  rejected: number;
}

/** Refusals of a hello that the same site cannot turn around by saying hello again. */
const PERMANENT_REFUSALS = new Set([
  'CONSORT_R_UNKNOWN_PROTOCOL',
  'CONSORT_R_UNKNOWN_SITE',
  'CONSORT_R_WRONG_JOB',
  'CONSORT_R_WRONG_SHAPE',
  'CONSORT_R_SITE_TWICE',
]);

export async function runSite(opts: SiteRunnerOptions): Promise<SiteRunSummary> {
  const { job, site, nc, log } = opts;
  const spec = job.spec;
  const key = jobKey(job.metadata);
  const subj = subjects(key);
  const bucket = buckets(key);
  const siteIndex = spec.sites.findIndex((s) => s.name === site);
  if (siteIndex < 0) throw new WorkerError('CONSORT_W_DATA_SCHEMA', `site "${site}" is not in spec.sites of job ${job.metadata.name}`);
  const siteSpec = spec.sites[siteIndex]!;

  const worker = new SiteWorker({ spec, baseDir: opts.baseDir, backend: opts.backend });
  const described = await worker.describe(siteIndex);
  const classes = spec.classes ?? (siteSpec.data.type === 'synthetic' ? described.labels : undefined);
  if (!classes) {
    throw new WorkerError(
      'CONSORT_W_DATA_SCHEMA',
      'spec.classes is required when sites run as separate processes with CSV or image data (each site only sees its own labels)',
    );
  }
  const prepared = await worker.prepare(classes, described.sampleShape);
  tuneGcForModel(4 * layoutSize(prepared.layout));
  log(
    `site ${site}: ${described.quality.trainSamples} train / ${described.quality.testSamples} test examples; backend ${prepared.backend.name} (${prepared.backend.reason})`,
  );

  const modelsWire = objectWire(nc, bucket.models);
  const updatesWire = objectWire(nc, bucket.updates(site));
  const summary: SiteRunSummary = { site, fits: 0, evaluations: 0, rejected: 0 };
  /** The last envelope sent per round: a repeated task (coordinator restarted) is answered with it, not retrained. */
  const sent = new Map<string, Uint8Array>();
  /** Keeps the most recent envelopes only: a repeated task is always one of the last few. */
  const remember = (key: string, body: Uint8Array) => {
    sent.set(key, body);
    for (const old of sent.keys()) {
      if (sent.size <= 64) break;
      sent.delete(old);
    }
  };
  /** Error feedback of a lossy codec (top-k, int8, fp16): what compression left out stays here. */
  let residual: Float32Array | undefined;
  // What only the site holds between rounds, kept on its disk when asked (--state) and the job has any.
  const stateStore =
    opts.stateDir !== undefined && (spec.compression.codec !== 'none' || spec.strategy.name === 'scaffold')
      ? new SiteStateStore(opts.stateDir, { job: key, site, parameters: layoutSize(prepared.layout) })
      : undefined;
  /** The round whose state (residual, c_i) this process holds; undefined until a fit task reads the kept one. */
  let stateRound: number | undefined;
  /**
   * The last update this process trained, its envelope once signed, and the state before it: put
   * back when the coordinator refuses that update, since the state already counts it as sent.
   * Cleared by the next fit (whose state builds on it) or once taken back.
   */
  let lastFit: { round: number; body?: Uint8Array; before: { round: number | undefined; residual?: Float32Array; control?: Float32Array } } | undefined;
  const holdsState = spec.compression.codec !== 'none' || spec.strategy.name === 'scaffold';
  /** Before round `round`'s training: this site's state after its last round before it, from disk (a new process, or a round trained again). */
  const restoreState = (round: number) => {
    if (!stateStore || (stateRound !== undefined && stateRound < round)) return;
    const kept = stateStore.before(round, (file, why) => log(`site ${site}: ${file} not used (${why}); its state starts over`));
    residual = kept?.residual;
    worker.restoreControl(siteIndex, kept?.control);
    if (kept && stateRound === undefined) log(`site ${site}: carries on from its state after round ${kept.round} (${stateStore.dir})`);
    stateRound = kept?.round ?? 0;
  };

  let finish: () => void = () => {};
  const finished = new Promise<void>((resolve) => {
    finish = resolve;
  });
  // Stops the retries and the queued tasks: asked by the caller (a signal), or on a refusal no
  // second hello can change (another process of this site runs: this one must not keep training).
  const halt = new AbortController();
  opts.signal?.addEventListener('abort', () => halt.abort(opts.signal?.reason), { once: true });
  halt.signal.addEventListener('abort', () => finish(), { once: true });

  // A pre-trained model file's weights go to the coordinator as an object in this site's bucket,
  // which the hello then names (round 1 starts from it). Written before the first hello that is
  // sent: the coordinator makes the buckets, and may start after this site.
  const initialParts = prepared.initial ? safetensorsParts(prepared.layout, prepared.initial) : undefined;
  let initial: Hello['initial'];
  const putInitial = async (): Promise<boolean> => {
    if (!initialParts || initial) return true;
    try {
      const put = await putObject(updatesWire, bucket.updates(site), objectNames.initial, initialParts, OBJECT_PUT);
      initial = { sha256: put.sha256, size: initialParts.reduce((n, p) => n + p.length, 0) };
      return true;
    } catch {
      return false;
    }
  };
  // The same every heartbeat: computed once. The instance tells a restart of this site from a heartbeat.
  const terms = jobTerms(spec);
  const instance = newNonce();
  const hello = (): Uint8Array => {
    const h: Omit<Hello, 'signature'> = {
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      job: key,
      site,
      nonce: newNonce(),
      sentAt: Date.now(),
      instance,
      ...(stateStore ? { keepsState: true } : {}),
      sampleShape: described.sampleShape,
      labels: described.labels,
      ...(described.features ? { features: described.features } : {}),
      terms,
      layout: prepared.layout,
      codecs: ['none', 'fp16', 'int8', 'topk'],
      quality: described.quality,
      ...(described.moments ? { moments: described.moments } : {}),
      backend: { name: prepared.backend.name, reason: prepared.backend.reason },
      ...(initial ? { initial } : {}),
    };
    return json(signEnvelope(h, opts.seed));
  };

  // Join, then keep saying hello: the coordinator samples only sites it has heard from lately.
  let joined = false;
  let clockOffsetSaid = false;
  /** A refusal no second hello can change (another job, protocol or model): the site stops with it. */
  let refused: string | undefined;
  /** The coordinator ended the job in a failure (its reason). */
  let jobFailed: string | undefined;
  let lastRefusal = '';
  /** Since when no coordinator has answered (a site started before it, or after the job ended); when that was last said. */
  let unanswered: number | undefined;
  let saidAt = 0;
  const heartbeat = async (): Promise<void> => {
    try {
      if (!(await putInitial())) return;
      const reply = await nc.request(subj.hello(site), hello(), { timeout: 2000 });
      const w = Welcome.safeParse(parseJson(reply.data));
      if (!w.success) return;
      if (!w.data.accepted) {
        const why = `refused by the coordinator: ${w.data.reason ?? ''} [${w.data.code ?? 'no code'}]`;
        // Said once, not at every heartbeat.
        if (why !== lastRefusal) log(`site ${site}: ${why}`);
        lastRefusal = why;
        if (PERMANENT_REFUSALS.has(w.data.code ?? '')) {
          refused = why;
          halt.abort(why);
        }
        return;
      }
      lastRefusal = '';
      unanswered = undefined;
      if (!joined) log(`site ${site}: joined ${job.metadata.name} at round ${w.data.round}`);
      joined = true;
      if (w.data.done) finish();
    } catch {
      // No coordinator yet (or a restart under way): keep trying, and say so now and then
      // (after ten heartbeats, then every 5 minutes), so that a site waiting for a job that already
      // ended, or whose coordinator never started, is not silent.
      const now = Date.now();
      unanswered ??= now;
      if (now - unanswered >= 10 * (opts.heartbeatMs ?? 1000) && now - saidAt >= (saidAt === 0 ? 0 : 300_000)) {
        saidAt = now;
        log(
          `site ${site}: no coordinator of ${job.metadata.name} has answered for ${Math.round((now - unanswered) / 1000)} s; still waiting (is it running, on this NATS server? a job that already ended is not run again)`,
        );
      }
    }
  };

  // Reads and writes are tried again until the task's deadline: a server that restarts takes
  // the requests in flight with it, and the work is not lost for that.
  const patience = (deadline: number) => ({ until: deadline, signal: halt.signal });
  // The model (and SCAFFOLD's control variate) are read into the same arrays every round: a fresh
  // one costs page faults worth several times the copy. Tasks run one at a time, and nothing
  // keeps a task's model once it is done, so the next task may overwrite it.
  const buffers: Record<'model' | 'control', Uint8Array | undefined> = { model: undefined, control: undefined };
  // A model object is this model's weights in safetensors: 4 bytes a parameter and a header. A
  // task declaring more is refused before anything is allocated (2^50 bytes was attempted).
  const modelBytesAtMost = 4 * layoutSize(prepared.layout) + 65_536 + 256 * prepared.layout.length;
  const fetchModel = async (ref: ObjectRef, deadline: number, slot: 'model' | 'control' = 'model'): Promise<Float32Array> => {
    if (ref.size > modelBytesAtMost) {
      throw new WorkerError('CONSORT_W_TRAIN', `the task names a ${slot} object of ${ref.size} bytes; this model's are at most ${modelBytesAtMost}`);
    }
    const buffer = buffers[slot] && buffers[slot].length >= ref.size ? buffers[slot] : (buffers[slot] = new Uint8Array(ref.size));
    const bytes = await retrying(() => readModelObject(modelsWire, ref, buffer), patience(deadline));
    return decodeSafetensors(bytes).values;
  };

  /**
   * Sends an envelope until the coordinator answers, or the deadline passes (undefined; so is an
   * answer that is no Ack). `alone`: no earlier copy sent by this call may have reached the
   * coordinator unanswered, so the answer is about the only copy it saw.
   */
  const deliver = async (subject: string, body: Uint8Array, deadline: number, what: string): Promise<{ ack: Ack; alone: boolean } | undefined> => {
    let wait = 250;
    let alone = true;
    while (Date.now() < deadline + 60_000 && !halt.signal.aborted) {
      try {
        const reply = await nc.request(subject, body, { timeout: 5000 });
        const ack = Ack.safeParse(parseJson(reply.data));
        if (ack.success && !ack.data.accepted) {
          summary.rejected++;
          log(`site ${site}: ${what} refused: ${ack.data.reason ?? ack.data.code}`);
        }
        return ack.success ? { ack: ack.data, alone } : undefined;
      } catch (err) {
        // Only "no responders" says that no coordinator took the copy; one that timed out may have
        // been counted, its answer lost.
        if (!(err instanceof RequestError && err.isNoResponders())) alone = false;
        await new Promise((r) => setTimeout(r, wait));
        wait = Math.min(wait * 2, 5000);
      }
    }
    return undefined;
  };

  /**
   * Takes back what a fit did to the site's state (residual, c_i; the file on disk too) when its
   * update will never count: refused for good, or never sent. Otherwise the residual has lost what
   * the update carried, and c_i has moved by a control delta the server's c never got, for the
   * rest of the job. The round's envelope is forgotten too: asked for that round again (a
   * coordinator that resumed before it), the site trains it again from the state put back, and
   * gives the same bytes. Nothing when a later fit has moved the state on since.
   */
  const takeBack = (fit: NonNullable<typeof lastFit>, why: string): void => {
    if (lastFit !== fit) return;
    lastFit = undefined;
    residual = fit.before.residual;
    worker.restoreControl(siteIndex, fit.before.control);
    stateStore?.drop(fit.round);
    stateRound = fit.before.round;
    sent.delete(`fit/${fit.round}`);
    if (holdsState) log(`site ${site}: ${why}: its state goes back to before round ${fit.round}${stateStore ? ' (on its disk too)' : ''}`);
  };
  /**
   * After an update's answer: taken back when refused for good. Not when an earlier copy went
   * unanswered: that copy may have been counted, and the coordinator forgets a round's updates a
   * few rounds on (then refusing a copy of a counted one as stale). An unanswered or open-ended one
   * stays counted too (core/protocol/README.md).
   */
  const settle = (fit: NonNullable<typeof lastFit>, answer: { ack: Ack; alone: boolean } | undefined): void => {
    if (!answer?.alone || answer.ack.accepted || !refusedForGood(answer.ack.code)) return;
    takeBack(fit, `its update of round ${fit.round} was refused [${answer.ack.code}]`);
  };

  const train = async (task: FitTask): Promise<void> => {
    const already = sent.get(`fit/${task.round}`);
    if (already) {
      const fit = lastFit;
      const ack = await deliver(subj.update(site), already, task.deadline, `update of round ${task.round}`);
      // Only the last update's state can be taken back: one before it has a later round's state built on it.
      if (fit?.body === already) settle(fit, ack);
      return;
    }
    if (task.scaler) worker.useScaler(task.scaler);
    restoreState(task.round);
    const global = await fetchModel(task.model, task.deadline);
    const serverControl = task.control ? await fetchModel(task.control, task.deadline, 'control') : undefined;
    const control = worker.controlOf(siteIndex);
    const fit: NonNullable<typeof lastFit> = {
      round: task.round,
      before: { round: stateRound, ...(residual ? { residual } : {}), ...(control ? { control } : {}) },
    };
    lastFit = fit;
    try {
      await fitAndPut(task, fit, global, serverControl);
    } catch (err) {
      takeBack(fit, `its fit of round ${task.round} sent no update`);
      throw err;
    }
    summary.fits++;
    if (failpoints.beforeAnswer(task)) {
      log(`site ${site}: failpoint: stopped before answering the fit task of round ${task.round} (its update written${stateStore ? ', its state kept' : ''})`);
      process.kill(process.pid, 'SIGSTOP');
    }
    if (failpoints.holdsAnswer(task)) {
      const resumed = new Promise((resolve) => process.once('SIGCONT', resolve));
      log(
        `site ${site}: failpoint: holds its answer to the fit task of round ${task.round} until SIGCONT (its update written${stateStore ? ', its state kept' : ''})`,
      );
      await resumed;
    }
    settle(fit, await deliver(subj.update(site), fit.body!, task.deadline, `update of round ${task.round}`));
  };

  /** Trains, moves the state on (kept on disk first), writes the update object and signs its envelope into `fit.body`. */
  const fitAndPut = async (task: FitTask, fit: NonNullable<typeof lastFit>, global: Float32Array, serverControl: Float32Array | undefined): Promise<void> => {
    const r = await worker.fit({ round: task.round, siteIndex, global, proximalMu: task.proximalMu, ...(serverControl ? { serverControl } : {}) });
    // Streamed from the delta itself (codec none): no copy of a large update is made.
    const encoded = encodeUpdateParts(r.delta, prepared.layout, spec.compression, {
      ...(residual ? { residual } : {}),
      ...(r.controlDelta ? { control: r.controlDelta } : {}),
    });
    if (encoded.residual) residual = encoded.residual;
    // On disk before the update is announced: no update the coordinator counts is ahead of the kept state.
    if (stateStore) {
      const control = worker.controlOf(siteIndex);
      stateStore.save({ round: task.round, ...(residual ? { residual } : {}), ...(control ? { control } : {}) });
      stateRound = task.round;
    }
    const nonce = newNonce();
    const name = objectNames.update(task.round, nonce);
    // Hashed as it is written: that is the envelope's SHA-256, with no second pass.
    const { sha256 } = await retrying(() => putObject(updatesWire, bucket.updates(site), name, encoded.parts, OBJECT_PUT), patience(task.deadline));
    const envelope = updateEnvelope(key, site, task, nonce, {
      samples: r.samples,
      trainLoss: r.trainLoss,
      steps: r.steps,
      codec: spec.compression.codec,
      object: { bucket: bucket.updates(site), name, sha256, size: encoded.size },
    });
    fit.body = json(signEnvelope(envelope, opts.seed));
    remember(`fit/${task.round}`, fit.body);
  };

  const score = async (task: EvaluateTask): Promise<void> => {
    const already = sent.get(`eval/${task.taskId}`);
    if (already) {
      await deliver(subj.evaluation(site), already, task.deadline, `evaluation of round ${task.round}`);
      return;
    }
    if (task.scaler) worker.useScaler(task.scaler);
    const global = await fetchModel(task.model, task.deadline);
    const m = await worker.evaluate({ siteIndex, global, trainLoss: task.trainLoss });
    const envelope = evaluationEnvelope(key, site, task, {
      samples: m.samples,
      loss: m.loss,
      accuracy: m.accuracy,
      ...(m.auc !== undefined ? { auc: m.auc } : {}),
      ...(m.trainLoss !== undefined ? { trainLoss: m.trainLoss } : {}),
      ...(m.trainSamples !== undefined ? { trainSamples: m.trainSamples } : {}),
    });
    const body = json(signEnvelope(envelope, opts.seed));
    remember(`eval/${task.taskId}`, body);
    summary.evaluations++;
    await deliver(subj.evaluation(site), body, task.deadline, `evaluation of round ${task.round}`);
  };

  // Tasks run one at a time, in arrival order: the site has one model.
  let queue: Promise<void> = Promise.resolve();
  const failpoints = new ArmedFailpoints(opts.failpoints ?? []);
  const onTask = (msg: Msg) => {
    let task: Task;
    try {
      task = Task.parse(parseJson(msg.data));
      if (task.site !== site || task.job !== key) throw new Error(`task for ${task.job}/${task.site}`);
    } catch (err) {
      msg.respond(json({ type: 'ack', accepted: false, code: 'CONSORT_R_MALFORMED', reason: fitReason((err as Error).message) }));
      return;
    }
    msg.respond(json({ type: 'ack', accepted: true }));
    // The deadline from here on is on this machine's clock: counted from receipt.
    const { deadline, coordinatorAheadMs } = deadlineOnSite(task, Date.now());
    task = { ...task, deadline };
    if (coordinatorAheadMs !== undefined && Math.abs(coordinatorAheadMs) >= CLOCK_OFFSET_WORTH_SAYING_MS && !clockOffsetSaid) {
      clockOffsetSaid = true;
      const s = Math.round(Math.abs(coordinatorAheadMs) / 1000);
      log(
        `site ${site}: this machine's clock is about ${s} s ${coordinatorAheadMs > 0 ? 'behind' : 'ahead of'} the coordinator's (or its tasks take that long to arrive); each task's deadline is counted from its arrival, but set the clocks right (NTP): logs and metrics on the two sides will not line up`,
      );
    }
    const work = async () => {
      if (failpoints.fails(task)) throw new Error(`failpoint: the ${task.type} task of round ${task.round} fails`);
      return task.type === 'fit' ? train(task) : score(task);
    };
    const run = () => {
      if (halt.signal.aborted) return Promise.resolve();
      // A task whose round closed while this site was stopped or busy: nothing to answer (but a
      // late update, which buffered aggregation folds into a later round).
      if (Date.now() > task.deadline && (task.type === 'evaluate' || spec.aggregation.mode === 'sync')) {
        log(
          `site ${site}: the ${task.type} task of round ${task.round} skipped: its deadline passed ${Math.round((Date.now() - task.deadline) / 1000)} s ago, while this site was busy or stopped`,
        );
        return Promise.resolve();
      }
      return work().catch(async (err: unknown) => {
        const message = (err as Error).message || String(err);
        log(`site ${site}: ${task.type} of round ${task.round} failed: ${message}`);
        // Said to the coordinator at once: the round counts this site as failed rather than waiting for its deadline.
        const failure: Omit<TaskFailureEnvelope, 'signature'> = {
          type: 'failure',
          protocol: PROTOCOL_VERSION,
          job: key,
          site,
          round: task.round,
          taskId: task.taskId,
          nonce: newNonce(),
          task: task.type,
          reason: message.slice(0, 2000),
        };
        const subject = task.type === 'fit' ? subj.update(site) : subj.evaluation(site);
        await deliver(subject, json(signEnvelope(failure, opts.seed)), task.deadline, `the failure report of round ${task.round}`).catch(() => {});
      });
    };
    if (failpoints.hit(task)) {
      // The acknowledgement out first (or the coordinator would give the site up as unreachable),
      // then stopped before the task is even queued: it cannot be answered until SIGCONT.
      const stopped = nc
        .flush()
        .catch(() => {})
        .then(() => {
          log(`site ${site}: failpoint: stopped after acknowledging the ${task.type} task of round ${task.round}`);
          process.kill(process.pid, 'SIGSTOP');
        });
      queue = queue.then(() => stopped).then(run);
      return;
    }
    queue = queue.then(run);
  };
  const subs: Subscription[] = [
    nc.subscribe(subj.task(site), { callback: (err, msg) => (err ? undefined : onTask(msg)) }),
    nc.subscribe(subj.round, {
      callback: (err, msg) => {
        if (err) return;
        const n = RoundNotice.safeParse(parseJson(msg.data));
        if (n.success && n.data.phase === 'failed') jobFailed = n.data.reason ?? 'no reason given';
        if (n.success && (n.data.phase === 'done' || n.data.phase === 'failed')) finish();
      },
    }),
  ];
  await nc.flush();
  // Subscribed first, then join: a task sent right after the welcome is not lost.
  await heartbeat();
  const beat = setInterval(() => void heartbeat(), opts.heartbeatMs ?? 1000);
  try {
    await finished;
    await queue;
  } finally {
    clearInterval(beat);
    for (const s of subs) s.unsubscribe();
    worker.dispose();
  }
  if (refused) throw new WorkerError('CONSORT_W_REFUSED', `site ${site}: ${refused}`);
  if (jobFailed !== undefined) throw new WorkerError('CONSORT_W_JOB_FAILED', `site ${site}: the coordinator ended the job in a failure: ${jobFailed}`);
  return summary;
}
