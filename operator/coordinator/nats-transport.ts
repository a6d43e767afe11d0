// The coordinator's side of protocol v1: tasks out to each sampled site on its own subject,
// signed envelopes in, each checked by the UpdateIngestor before its payload is fetched from the
// site's updates bucket and handed to the round loop. A rejected message is answered with its
// reason, counted, logged once per (site, reason), and changes nothing.
//
// Two ways to take an update. A small model's is read whole, checked and handed over in memory
// (the round loop folds it at once). A large model's (storedUpdates) is never held: it is checked
// as it streams in, chunk by chunk, and handed over as a stored result, read again from the
// bucket a range at a time when the round closes (stored-updates.ts).
import type { InputScaler } from '../../core/data/moments.ts';
import { type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { printable } from '../../core/printable.ts';
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import { type ObjectStore, setSha256Backend } from '@nats-io/obj';
import type { FederatedJobSpec } from '../../core/job/federated-job.ts';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { objectStoreDigest, sha256Hex } from '../../core/protocol/digest.ts';
import { type ObjectPutWire, putObject } from '../../core/protocol/object-put.ts';
import type { UpdateIngestor } from '../../core/protocol/ingestion.ts';
import type { RejectionCode } from '../../core/protocol/rejections.ts';
import { connectionFailed, retrying, storedObjectMismatch } from '../../core/protocol/retry.ts';
import { Ack, type EvaluateTask, type FitTask, fitReason, type ObjectRef, type UpdateEnvelope } from '../../core/protocol/messages.ts';
import { newNonce } from '../../core/protocol/signing.ts';
import { buckets, OBJECT_PUT, OBJECT_READ_BATCH_BYTES, objectNames, PROTOCOL_VERSION, type subjects } from '../../core/protocol/subjects.ts';
import type { Outcome, SiteEvaluation, SiteFailure, SiteTransport } from '../../core/protocol/transport.ts';
import type { FitInstructions, SiteFitResult } from '../../core/strategies/strategy.ts';
import type { StoredFitResult, StoredUpdateError } from '../../core/aggregation/stored-round.ts';
import { storedResult } from '../../core/protocol/update-stream.ts';
import { ObjectReadError, StoredObjects } from './stored-updates.ts';
import { safetensorsHeaderBytes, safetensorsParts } from '../../core/tensor/safetensors.ts';
import { Channel } from './channel.ts';
import { decodeJson as parseJson, encodeJson as json } from '../../core/protocol/wire.ts';
import { objectWire } from '../../core/protocol/object-wire.ts';
import { ObjectChunkingError, ObjectMismatchError, type ObjectReadWire, readObject } from '../../core/protocol/object-read.ts';
import { type BucketKind, RetentionMarks } from '../../core/protocol/retention.ts';

// The Object Store checks every object it streams against its digest: with node's native SHA-256
// (the JS fallback is 3-4x slower), and the only hash of an update's bytes the coordinator makes.
setSha256Backend('native');

/** How long an update read interrupted by the connection is tried again. */
const READ_RETRY_MS = 30_000;
/**
 * Bytes of update objects held at once, read or waiting to be folded (one update alone may be
 * larger): small updates are read several at a time, a large one alone, so that the coordinator
 * holds one model, its exact sum and one update, whatever the number of sites. (Folding is fast
 * beside reading: a second update in memory would hardly shorten the round.) Stored updates
 * (storedUpdates) are never held: only the read window bounds them.
 */
export const UPDATE_MEMORY_BUDGET_BYTES = 64 * 1024 * 1024;
/**
 * Bytes the server may be sending the coordinator's connection at once for its update reads, well
 * under nats-server's 64 MiB max_pending (past it, the connection is dropped as a slow consumer).
 * A read asks for at most OBJECT_READ_BATCH_BYTES at a time by direct get (the server sends
 * exactly that) and counts min(size, that): several reads run together, their round trips
 * overlapping.
 */
export const UPDATE_READ_WINDOW_BYTES = 32 * 1024 * 1024;
/**
 * Stored updates: bytes asked for at once by their direct gets (exactly what the server sends).
 * One read at a time already keeps a core busy here; more in flight is only more memory.
 */
const STORED_READ_WINDOW_BYTES = 16 * 1024 * 1024;

/** A bound on bytes (in memory, or on the way): a taker waits for room (one alone may exceed it), and frees its share when done. */
class ByteBudget {
  private used = 0;
  private readonly limit: number;
  private waiting: Array<() => void> = [];

  constructor(limit: number) {
    this.limit = limit;
  }

  /** Waits until `bytes` fit (or nothing else is held); resolves to the function that frees them (idempotent). */
  async acquire(bytes: number): Promise<() => void> {
    while (this.used > 0 && this.used + bytes > this.limit) await new Promise<void>((r) => this.waiting.push(r));
    this.used += bytes;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.used -= bytes;
      for (const wake of this.waiting.splice(0)) wake();
    };
  }
}

/**
 * Update buffers used again from one read to the next (a fresh 100 MB array costs ten times its
 * copy in page faults), up to `limit` bytes of them kept; a buffer is taken while its update is
 * read and folded, and given back after.
 */
class BufferPool {
  private readonly free: Uint8Array[] = [];
  private readonly limit: number;
  private readonly shared: boolean;

  /** `shared`: new buffers are SharedArrayBuffers (what the aggregation's helper threads can read). */
  constructor(limit: number, shared: boolean) {
    this.limit = limit;
    this.shared = shared;
  }

  /** The smallest free buffer of at least `bytes`, or a new one. */
  take(bytes: number): Uint8Array {
    let best = -1;
    this.free.forEach((b, i) => {
      if (b.length >= bytes && (best < 0 || b.length < this.free[best]!.length)) best = i;
    });
    if (best >= 0) return this.free.splice(best, 1)[0]!;
    return new Uint8Array(this.shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
  }

  give(buffer: Uint8Array): void {
    this.free.push(buffer);
    this.free.sort((a, b) => b.length - a.length);
    let kept = 0;
    for (let i = 0; i < this.free.length; i++) {
      kept += this.free[i]!.length;
      // Always keep the largest one; the rest while they fit.
      if (i > 0 && kept > this.limit) {
        this.free.length = i;
        break;
      }
    }
  }
}

/** How often an open round says whom it still waits for. */
const WAITING_LOG_MS = 10_000;

interface OpenRound<T> {
  round: number;
  kind: 'fit' | 'evaluate';
  sites: Set<string>;
  answered: Set<string>;
  channel: Channel<Outcome<T>>;
  timer: NodeJS.Timeout;
  /** Says, while the round waits, for whom (a site whose process died is otherwise silent until the deadline). */
  waiting: NodeJS.Timeout;
  opened: number;
  /** A site's task of this round, once what it refers to is published (to send it again to a site that restarted). */
  taskFor?: (site: string) => FitTask | EvaluateTask;
  /** Sites whose task is being sent again: one resend at a time reaches whichever process listens now. */
  resending: Set<string>;
}

export interface NatsTransportOptions {
  nc: NatsConnection;
  spec: FederatedJobSpec;
  job: string;
  subjects: ReturnType<typeof subjects>;
  layout: ParameterLayout;
  models: ObjectStore;
  modelsBucket: string;
  updates: (site: string) => Promise<ObjectStore>;
  ingestor: UpdateIngestor;
  /** Sites heard from lately. */
  alive: () => string[];
  /** When a site was last heard from (epoch ms), if ever. */
  lastSeen?: (site: string) => number | undefined;
  /** Why a site is not here, when the coordinator knows (its hello was refused: the reason and code). */
  whyAbsent?: (site: string) => string | undefined;
  /** How often an open round says whom it still waits for (default 10 s). */
  waitingLogMs?: number;
  /** Whether the connection to the server was interrupted since `t` (epoch ms): a read that failed meanwhile is tried again. */
  interruptedSince?: (t: number) => boolean;
  /** Updates stay in their buckets: checked as they stream in, handed over as stored results (for large models). */
  storedUpdates?: boolean;
  /** The federation's input scaling (tabular data), sent with every task. */
  inputScaler?: InputScaler;
  /** Updates are read into SharedArrayBuffers, which the aggregation's helper threads can read. */
  sharedBuffers?: boolean;
  /**
   * Buffered mode: where a late update's signed envelope is kept, from before it is acknowledged
   * until the round that folds it is checkpointed. The site, told its update is taken, never sends
   * it again: a coordinator killed before that checkpoint takes it again from here (resumedLate).
   */
  lateEnvelopes?: LateEnvelopes;
  /** Late envelopes a coordinator that stopped had kept: taken again, as sent, once the first round opens. */
  resumedLate?: ReadonlyArray<ResumedLate>;
  log: (line: string) => void;
}

/** A late update's envelope a stopped coordinator kept: its site, the round it was trained for, the bytes as sent. */
export interface ResumedLate {
  site: string;
  round: number;
  data: Uint8Array;
}

/** The keeping of late updates' envelopes (buffered mode) between their acknowledgement and their round's checkpoint. */
export interface LateEnvelopes {
  keep(round: number, site: string, data: Uint8Array): Promise<void>;
  drop(round: number, site: string): Promise<void>;
}

type FitAnswer = SiteFitResult | StoredFitResult;

export class NatsTransport implements SiteTransport {
  private readonly o: NatsTransportOptions;
  private fitRound: OpenRound<FitAnswer> | undefined;
  private evalRound: OpenRound<SiteEvaluation> | undefined;
  /** Buffered mode: late updates that arrived between rounds, folded into the next one (with their share of the memory budget). */
  private late: Array<{ result: FitAnswer & { round: number }; release: () => void; env: UpdateEnvelope }> = [];
  /** Kept late envelopes (lateEnvelopes) folded into an open round: dropped once that round is checkpointed. */
  private readonly keptLate = new Map<string, { round: number; site: string; into: number }>();
  /** Envelopes of a stopped coordinator's late updates, not yet taken again. */
  private resumedLate: ReadonlyArray<ResumedLate>;
  private readonly memory = new ByteBudget(UPDATE_MEMORY_BUDGET_BYTES);
  private readonly buffers: BufferPool;
  private readonly window = new ByteBudget(UPDATE_READ_WINDOW_BYTES);
  /** Each site's envelopes, one after the other; and all of them under way. */
  private readonly siteQueues = new Map<string, Promise<void>>();
  /** Per site, the last refusal of one of its messages since a round opened: why it may never have answered. */
  private readonly refusals = new Map<string, string>();
  private readonly reads = new Set<Promise<void>>();
  /** Bytes of updates accepted, per round (for the compression table and metrics). */
  readonly bytesIn = new Map<number, number>();
  readonly bytesOut = new Map<number, number>();
  /** Stored updates: their reads. */
  private readonly objects: StoredObjects | undefined;
  /** Models being published: a stored aggregation, which steps the model in place, waits for them. */
  private readonly publishing = new Set<Promise<unknown>>();

  private readonly modelWire: ObjectPutWire & ObjectReadWire;
  /** The object calls on each bucket's stream (puts, direct gets), made once per bucket. */
  private readonly wires = new Map<string, ObjectPutWire & ObjectReadWire>();
  /** The models and control variates put so far (the last few), by name. */
  private readonly published = new Map<string, ObjectRef>();
  /** Where each bucket stood after each checkpointed round: below what it may be purged (retention.ts). */
  private readonly retention: RetentionMarks;
  private jsm: Promise<JetStreamManager> | undefined;
  /** Purges under way (awaited by settled()). */
  private readonly purges = new Set<Promise<void>>();
  /** Why the last purge of a bucket failed (logged once per bucket and reason). */
  private readonly purgeFailures = new Map<string, string>();

  constructor(o: NatsTransportOptions) {
    this.o = o;
    this.resumedLate = o.resumedLate ?? [];
    this.buffers = new BufferPool(UPDATE_MEMORY_BUDGET_BYTES, o.sharedBuffers ?? false);
    if (o.storedUpdates) {
      this.objects = new StoredObjects({
        wire: (bucket) => this.wire(bucket),
        window: new ByteBudget(STORED_READ_WINDOW_BYTES),
        retryMs: READ_RETRY_MS,
        ...(o.interruptedSince ? { interruptedSince: o.interruptedSince } : {}),
      });
    }
    this.modelWire = this.wire(o.modelsBucket);
    this.retention = new RetentionMarks(o.spec.aggregation);
  }

  private wire(bucket: string): ObjectPutWire & ObjectReadWire {
    let wire = this.wires.get(bucket);
    if (!wire) this.wires.set(bucket, (wire = objectWire(this.o.nc, bucket)));
    return wire;
  }

  /**
   * The sites alive now; while fewer than sampling.minSites are (a site that crashed and is
   * coming back), waits for them, up to the round deadline, rather than start a round that cannot
   * reach its quorum.
   */
  async available(): Promise<string[]> {
    const { minSites } = this.o.spec.sampling;
    const until = Date.now() + this.deadlineMs;
    let alive = this.o.alive();
    if (alive.length >= minSites) return alive;
    const missing = () => this.o.spec.sites.map((s) => s.name).filter((s) => !alive.includes(s));
    this.o.log(`waiting for sites before the next round: ${alive.length} alive, sampling.minSites is ${minSites} (missing ${missing().join(', ')})`);
    while (alive.length < minSites && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 200));
      alive = this.o.alive();
    }
    return alive;
  }

  private get deadlineMs(): number {
    return this.o.spec.aggregation.roundDeadlineSeconds * 1000;
  }

  /**
   * Puts a model (or control variate) into the models bucket once; returns its reference. Tried
   * again until `until` (the round's deadline). A name always holds the same values (the global
   * model after a given round, a round's control variate), so one this transport put already is
   * not put again.
   */
  private async publishModel(name: string, values: Float32Array, until = Date.now() + this.deadlineMs): Promise<ObjectRef> {
    const known = this.published.get(name);
    if (known) return known;
    // Streamed from the model's own memory: no copy of a large model is made.
    const parts = safetensorsParts(this.o.layout, values);
    const size = parts.reduce((n, p) => n + p.length, 0);
    // The model is hashed as it is written, and here only when an object of that name is there
    // already (a restarted coordinator): an identical model is not written twice.
    let sha256: string | undefined;
    await retrying(
      async () => {
        const info = await this.o.models.info(name);
        if (info && !info.deleted && info.size === size) {
          sha256 ??= sha256Hex(parts);
          if (info.digest === objectStoreDigest(sha256)) return;
        }
        sha256 = (await putObject(this.modelWire, this.o.modelsBucket, name, parts, OBJECT_PUT)).sha256;
      },
      { until },
    );
    const ref = { bucket: this.o.modelsBucket, name, sha256: sha256 ?? sha256Hex(parts), size };
    this.published.set(name, ref);
    for (const old of this.published.keys()) if (this.published.size > 4) this.published.delete(old);
    return ref;
  }

  private open<T>(round: number, kind: 'fit' | 'evaluate', sites: readonly string[]): OpenRound<T> {
    this.refusals.clear();
    const channel = new Channel<Outcome<T>>();
    const r: OpenRound<T> = {
      round,
      kind,
      sites: new Set(sites),
      answered: new Set(),
      channel,
      timer: setTimeout(() => this.close(r, 'no answer before the round deadline'), this.deadlineMs),
      // Unref'd: a round left open by a run that stopped keeps no process alive.
      waiting: setInterval(() => this.sayWaiting(r), this.o.waitingLogMs ?? WAITING_LOG_MS).unref(),
      opened: Date.now(),
      resending: new Set(),
    };
    return r;
  }

  /** "round 4: still waiting for northgate (2 of 3 answered; deadline in 50 s); northgate not heard from for 12 s". */
  private sayWaiting<T>(r: OpenRound<T>): void {
    const missing = [...r.sites].filter((s) => !r.answered.has(s));
    if (missing.length === 0 || r.channel.isClosed) return;
    const now = Date.now();
    // Silent: no longer alive, by the coordinator's own rule (its hellos stopped).
    const alive = new Set(this.o.alive());
    const silent = missing.flatMap((s) => {
      if (alive.has(s)) return [];
      const seen = this.o.lastSeen?.(s);
      return [`${s} ${seen === undefined ? 'never heard from' : `not heard from for ${Math.round((now - seen) / 1000)} s`}`];
    });
    const left = Math.max(0, Math.round((r.opened + this.deadlineMs - now) / 1000));
    this.o.log(
      `round ${r.round}: ${r.kind === 'fit' ? 'updates' : 'evaluations'} still awaited from ${missing.join(', ')} (${r.answered.size} of ${r.sites.size} in; the round's deadline in ${left} s)${silent.length > 0 ? `; ${silent.join(', ')} (its process stopped, or lost its NATS connection?)` : ''}`,
    );
  }

  private close<T>(r: OpenRound<T>, reason: string): void {
    clearTimeout(r.timer);
    clearInterval(r.waiting);
    if (r.kind === 'fit' && !r.channel.isClosed) this.o.ingestor.closeRound(r.round);
    for (const site of r.sites) {
      if (r.answered.has(site)) continue;
      // A site whose answer was refused did answer: say why it does not count.
      const refused = this.refusals.get(site);
      r.channel.push({ ok: false, failure: { site, code: 'CONSORT_C_DEADLINE', reason: refused ? `${reason}; its answer was refused: ${refused}` : reason } });
    }
    r.channel.close();
  }

  private answered<T>(r: OpenRound<T>, site: string): void {
    r.answered.add(site);
    if ([...r.sites].every((s) => r.answered.has(s))) this.close(r, '');
  }

  /** Sends a task; a site that is not alive (no hello lately) fails at once, others are retried until the deadline. */
  private async sendTask<T>(r: OpenRound<T>, site: string, task: FitTask | EvaluateTask): Promise<void> {
    // The time left, as of each sending: the site counts it on its own clock (clocks differ).
    const body = () => json({ ...task, validForMs: Math.max(0, task.deadline - Date.now()) });
    const until = Date.now() + this.deadlineMs;
    let wait = 200;
    let lastError = '';
    while (Date.now() < until && !r.channel.isClosed) {
      let answer: Msg;
      try {
        answer = await this.o.nc.request(this.o.subjects.task(site), body(), { timeout: 2000 });
      } catch (err) {
        lastError = (err as Error).message;
        // A site that never joined or stopped saying hello is not waited for: it fails now
        // (one that is alive and momentarily unreachable is tried again until the deadline).
        if (!this.o.alive().includes(site)) break;
        await new Promise((res) => setTimeout(res, wait));
        wait = Math.min(wait * 2, 2000);
        continue;
      }
      // A site that could not read its task says so at once (another protocol version, another
      // job's file): the round counts it as failed now instead of waiting out its deadline.
      const ack = Ack.safeParse(parseJson(answer.data));
      if (!ack.success || ack.data.accepted) return;
      if (r.answered.has(site) || r.channel.isClosed) return;
      const why = `the site refused its ${task.type} task: ${printable(ack.data.reason ?? 'no reason given')}${ack.data.code ? ` [${printable(ack.data.code)}]` : ''}`;
      this.o.log(`site "${site}": ${why}`);
      return this.taskFailed(r, { site, code: 'CONSORT_C_TASK_REFUSED', reason: why });
    }
    // A site refused at its hello (other columns, another job file) says so, not "no responders".
    const refused = this.o.whyAbsent?.(site);
    this.taskFailed(r, { site, code: 'CONSORT_C_UNREACHABLE', reason: refused ? `its hello was refused: ${refused}` : `task not delivered: ${lastError}` });
  }

  /** The site's task failed before it could answer: the round counts it at once (once). */
  private taskFailed<T>(r: OpenRound<T>, failure: SiteFailure): void {
    if (r.answered.has(failure.site) || r.channel.isClosed) return;
    r.channel.push({ ok: false, failure });
    this.answered(r, failure.site);
  }

  /**
   * Publishes what a round's tasks refer to (prepare), then sends each site its task, all with
   * one deadline; a failure to publish closes the round with that reason.
   */
  private dispatch<T>(
    r: OpenRound<T>,
    prepare: () => Promise<
      | Omit<FitTask, 'protocol' | 'job' | 'site' | 'round' | 'taskId' | 'deadline'>
      | Omit<EvaluateTask, 'protocol' | 'job' | 'site' | 'round' | 'taskId' | 'deadline'>
    >,
  ): void {
    void (async () => {
      const prepared = prepare();
      this.publishing.add(prepared);
      void prepared.then(
        () => this.publishing.delete(prepared),
        () => this.publishing.delete(prepared),
      );
      const body = await prepared;
      const deadline = Date.now() + this.deadlineMs;
      r.taskFor = (site) =>
        ({
          ...body,
          protocol: PROTOCOL_VERSION,
          job: this.o.job,
          site,
          round: r.round,
          taskId: newNonce(),
          deadline,
          ...(this.o.inputScaler ? { scaler: this.o.inputScaler } : {}),
        }) as FitTask | EvaluateTask;
      const taskFor = r.taskFor;
      await Promise.all([...r.sites].map((site) => this.sendTask(r, site, taskFor(site))));
    })().catch((err: unknown) => {
      this.o.log(`round ${r.round}: cannot send the ${r.kind} tasks: ${(err as Error).message}`);
      this.close(r, `tasks not sent: ${(err as Error).message}`);
    });
  }

  /** Puts the model round `round + 1`'s fit tasks will name, in one try (fit finds it put, or tries again until its deadline). */
  async prepareNext(round: number, global: Float32Array): Promise<void> {
    await this.publishModel(objectNames.global(round), global, Date.now());
  }

  fit(round: number, sites: readonly string[], global: Float32Array, instructions: FitInstructions): AsyncIterable<Outcome<FitAnswer>> {
    const r = this.open<FitAnswer>(round, 'fit', sites);
    this.fitRound = r;
    this.o.ingestor.beginRound(round, [...sites]);
    // Nobody is asked to evaluate round `round` before its updates are in: an evaluation that
    // arrives earlier (a site resending after a coordinator restart) is refused, and taken once
    // its task comes, rather than taken now and then answered as a duplicate and lost.
    this.o.ingestor.beginEvaluation(round, []);
    // Their staleness is the rounds between the one they were trained for and this one, counted
    // here once: the ingestor's already counted the round they would be folded into, and adding
    // one on top made a round-2 update folded into round 4 three rounds late (past maxStaleness 2).
    for (const { result, release, env } of this.late) {
      r.channel.push({ ok: true, value: { ...result, staleness: round - result.round } }, release);
      this.foldedLate(env, round);
    }
    this.late = [];
    // A stopped coordinator's late updates, as their sites sent them: judged and read again, and
    // folded into this round as they would have been (one it had folded already is a duplicate).
    for (const { site, round: trained, data } of this.resumedLate) {
      // Not needed once this round is checkpointed: folded into it, or refused.
      this.keepUntil(site, trained, round);
      void this.onUpdate(site, { data, subject: this.o.subjects.update(site), reply: '', respond: () => true } as unknown as Msg);
    }
    this.resumedLate = [];
    this.dispatch(r, async () => {
      const model = await this.publishModel(objectNames.global(round - 1), global);
      const control = instructions.serverControl ? await this.publishModel(objectNames.control(round), instructions.serverControl) : undefined;
      this.bytesOut.set(round, model.size * sites.length);
      return { type: 'fit', model, proximalMu: instructions.proximalMu, ...(control ? { control } : {}) };
    });
    return r.channel;
  }

  evaluate(round: number, sites: readonly string[], global: Float32Array, opts: { trainLoss: boolean }): AsyncIterable<Outcome<SiteEvaluation>> {
    const r = this.open<SiteEvaluation>(round, 'evaluate', sites);
    this.evalRound = r;
    this.o.ingestor.beginEvaluation(round, sites);
    this.dispatch(r, async () => ({ type: 'evaluate', model: await this.publishModel(objectNames.global(round), global), trainLoss: opts.trainLoss }));
    return r.channel;
  }

  private reply(msg: Msg, ack: Ack): void {
    // A site parses what it is answered: a reason past the schema's length would make it drop the answer.
    if (msg.reply) msg.respond(json(ack.reason === undefined ? ack : { ...ack, reason: fitReason(ack.reason) }));
  }

  private reject(msg: Msg, site: string, code: RejectionCode, reason: string): void {
    this.refusals.set(site, `${reason} [${code}]`);
    if (this.o.ingestor.rejectedSites.shouldLog(site, code)) {
      this.o.log(`refused a message from site "${site}": ${reason} [${code}] (logged once per site and reason)`);
    }
    this.reply(msg, { type: 'ack', accepted: false, code, reason });
  }

  /**
   * An update envelope from `site` (the subject's last token, never the envelope's word). A site's
   * envelopes are taken one after the other, as they came (the next one is judged once the
   * previous one's object is taken or refused); different sites' objects are read at the same
   * time, within the read budget. This resolves at once: `settled()` waits for what it started.
   */
  async onUpdate(site: string, msg: Msg): Promise<void> {
    if (isFailure(msg)) return this.onFailure(site, msg);
    const previous = this.siteQueues.get(site) ?? Promise.resolve();
    const mine = previous.then(() => this.admitUpdate(site, msg)).catch((err: unknown) => this.o.log(`update of site "${site}": ${(err as Error).message}`));
    this.siteQueues.set(site, mine);
    this.reads.add(mine);
    void mine.finally(() => {
      this.reads.delete(mine);
      if (this.siteQueues.get(site) === mine) this.siteQueues.delete(site);
    });
  }

  private async admitUpdate(site: string, msg: Msg): Promise<void> {
    const checked = this.o.ingestor.checkEnvelope(site, msg.data);
    if (!checked.ok) return this.reject(msg, site, checked.rejection.code, checked.rejection.reason);
    if ('duplicate' in checked && checked.duplicate) return this.reply(msg, { type: 'ack', accepted: true, duplicate: true });
    const env = checked.envelope;
    if (this.objects) {
      try {
        await this.takeStored(site, msg, env, this.objects);
      } catch (err) {
        const rej = this.o.ingestor.reject(
          env,
          'CONSORT_R_OBJECT_MISSING',
          `update object ${env.object.name} in ${env.object.bucket}: ${(err as Error).message}`,
        );
        this.reject(msg, site, rej.code, rej.reason);
      }
      return;
    }
    const freeMemory = await this.memory.acquire(env.object.size);
    const buffer = this.buffers.take(env.object.size);
    let held = true;
    const release = () => {
      if (!held) return;
      held = false;
      this.buffers.give(buffer);
      freeMemory();
    };
    try {
      await this.takeUpdate(site, msg, env, buffer, release);
    } catch (err) {
      release();
      this.o.log(`update of site "${site}" for round ${env.round}: ${(err as Error).message}`);
    }
  }

  /** Resolves once every update read (and purge) started so far is over. */
  async settled(): Promise<void> {
    while (this.reads.size > 0 || this.purges.size > 0) await Promise.all([...this.reads, ...this.purges]);
  }

  /** The job's buckets whose objects pile up round after round: the models, and each site's updates. */
  private storedBuckets(): Array<{ bucket: string; kind: BucketKind }> {
    const b = buckets(this.o.job);
    return [
      { bucket: this.o.modelsBucket, kind: 'models' as const },
      ...this.o.spec.sites.map((s) => ({ bucket: b.updates(s.name), kind: 'updates' as const })),
    ];
  }

  /** Each bucket's next stream sequence (undefined where the bucket cannot be asked: say, a site's not made yet). */
  /** The JetStream manager of the purges, made once (and again after it could not be made). */
  private manager(): Promise<JetStreamManager> {
    this.jsm ??= jetstreamManager(this.o.nc, { checkAPI: false }).catch((err: unknown) => {
      this.jsm = undefined;
      throw err;
    });
    return this.jsm;
  }

  private async nextSequences(): Promise<Array<{ bucket: string; kind: BucketKind; next: number | undefined }>> {
    return Promise.all(
      this.storedBuckets().map(async (t) => {
        try {
          return { ...t, next: (await (await this.manager()).streams.info(`OBJ_${t.bucket}`)).state.last_seq + 1 };
        } catch (err) {
          this.purgeFailed(t.bucket, err);
          return { ...t, next: undefined };
        }
      }),
    );
  }

  private purgeFailed(bucket: string, err: unknown): void {
    const why = (err as Error).message;
    if (this.purgeFailures.get(bucket) === why) return;
    this.purgeFailures.set(bucket, why);
    this.o.log(`cannot free old objects of bucket ${bucket} (tried again after the next round): ${why}`);
  }

  /** Purges `bucket`'s messages below sequence `below`, without waiting (settled() does). */
  private purgeBelow(bucket: string, below: number): void {
    const p = (async () => {
      await (await this.manager()).streams.purge(`OBJ_${bucket}`, { seq: below });
      this.purgeFailures.delete(bucket);
    })().catch((err: unknown) => this.purgeFailed(bucket, err));
    this.purges.add(p);
    void p.finally(() => this.purges.delete(p));
  }

  /**
   * Once round `round`'s checkpoint and the next round's model are saved, and before any task of
   * the next round goes out: notes where each bucket stands, and purges (without waiting) the
   * objects no later round can ask for (retention.ts). A failure costs storage only: logged, and
   * the next round's purge takes what this one left.
   */
  async checkpointed(round: number): Promise<void> {
    this.dropKeptLate((into) => into <= round);
    for (const { bucket, kind, next } of await this.nextSequences()) {
      if (next === undefined) continue;
      const below = this.retention.note(bucket, kind, round, next);
      if (below !== undefined) this.purgeBelow(bucket, below);
    }
  }

  /**
   * The job is over, before its final model is put: every model and update object goes (the final
   * model, put next, stays), and this waits for the purges.
   */
  async finished(): Promise<void> {
    // The job is over: no kept late envelope is needed any more, one never folded included.
    for (const { env } of this.late) this.foldedLate(env, Number.POSITIVE_INFINITY);
    for (const { site, round } of this.resumedLate) this.keepUntil(site, round, Number.POSITIVE_INFINITY);
    this.dropKeptLate(() => true);
    for (const { bucket, next } of await this.nextSequences()) if (next !== undefined && next > 1) this.purgeBelow(bucket, next);
    await this.settled();
  }

  /** Reads an admitted update's object, checks it and hands it to the round; `release` frees its share of the memory budget once it is folded or refused. */
  private async takeUpdate(site: string, msg: Msg, env: UpdateEnvelope, buffer: Uint8Array, release: () => void): Promise<void> {
    // Read within bounds: no more than the envelope declares, and not for ever (a direct get
    // that brings nothing gives up); a read cut by a connection interruption is tried again.
    // readObject refuses a link and metadata that is not the envelope's (digest, size, bucket,
    // name), and checks the chunks against that digest, so the bytes are the ones the site signed.
    let bytes: Uint8Array | null = null;
    let failure = 'not found';
    let code: RejectionCode = 'CONSORT_R_OBJECT_MISSING';
    const reading = await this.window.acquire(Math.min(env.object.size, OBJECT_READ_BATCH_BYTES));
    try {
      // From the site's own bucket: an envelope naming another is a mismatch, never a read of it.
      const own = buckets(this.o.job).updates(site);
      bytes = await retrying(
        () =>
          readObject(this.wire(own), own, env.object.name, {
            expect: env.object,
            maxBytes: env.object.size,
            into: buffer,
            batchBytes: OBJECT_READ_BATCH_BYTES,
          }),
        {
          until: Date.now() + READ_RETRY_MS,
          retryable: (err, startedAt) =>
            !(err instanceof ObjectMismatchError) && !(err instanceof RangeError) && ((this.o.interruptedSince?.(startedAt) ?? false) || connectionFailed(err)),
        },
      );
    } catch (err) {
      failure = (err as Error).message;
      if (err instanceof ObjectChunkingError) code = 'CONSORT_R_BAD_ENCODING';
      else if (err instanceof RangeError || err instanceof ObjectMismatchError) code = 'CONSORT_R_HASH_MISMATCH';
    } finally {
      reading();
    }
    if (!bytes) {
      release();
      const rej = this.o.ingestor.reject(env, code, `update object ${env.object.name} in ${env.object.bucket}: ${failure}`);
      return this.reject(msg, site, rej.code, rej.reason);
    }
    const obj = this.o.ingestor.checkObject(env, bytes, { sha256: 'verified' });
    if (!obj.ok) {
      release();
      return this.reject(msg, site, obj.rejection.code, obj.rejection.reason);
    }
    await this.deliver(site, msg, env, obj.result, release, bytes.length);
  }

  /**
   * A stored update (storedUpdates): its object read once, in order, through the ingestor's
   * scanner (size, SHA-256, codec, shapes, values), a few chunks at a time; handed to the round
   * as a stored result that reads it again, chunk by checked chunk, when the round closes.
   */
  private async takeStored(site: string, msg: Msg, env: UpdateEnvelope, objects: StoredObjects): Promise<void> {
    const scanner = this.o.ingestor.scanner(env);
    let index: Awaited<ReturnType<StoredObjects['readOnce']>>;
    try {
      const store = await this.o.updates(site);
      const info = await retrying(() => store.info(env.object.name), {
        until: Date.now() + READ_RETRY_MS,
        retryable: (err, startedAt) => (this.o.interruptedSince?.(startedAt) ?? false) || connectionFailed(err),
      });
      if (!info || info.deleted) throw new ObjectReadError('CONSORT_R_OBJECT_MISSING', 'not found');
      // The store's metadata must be the envelope's (a link, another size or digest is another object).
      const link = info.options?.link;
      const mismatch = link ? `a link to ${link.bucket}/${link.name ?? ''}` : storedObjectMismatch(info, env.object);
      if (mismatch) throw new ObjectReadError('CONSORT_R_HASH_MISMATCH', mismatch);
      index = await objects.readOnce(env.object.bucket, info, env.object.sha256, (chunk) => scanner.push(chunk));
    } catch (err) {
      const code = err instanceof ObjectReadError ? err.code : 'CONSORT_R_OBJECT_MISSING';
      const rej = this.o.ingestor.reject(env, code, `update object ${env.object.name} in ${env.object.bucket}: ${(err as Error).message}`);
      return this.reject(msg, site, rej.code, rej.reason);
    }
    // Refused by the scanner part-way (no index): checkScanned gives its reason.
    const obj = this.o.ingestor.checkScanned(env, scanner);
    if (!obj.ok) return this.reject(msg, site, obj.rejection.code, obj.rejection.reason);
    // (A scan stopped part-way has no index, and checkScanned refused it.)
    const chunks = index!;
    const { scanned, round, staleness, samples, trainLoss } = obj.result;
    let counted = false;
    const fault = (err: StoredUpdateError) => {
      if (counted) return;
      counted = true;
      const rej = this.o.ingestor.exclude(
        env,
        err.code,
        `update object ${env.object.name} in ${env.object.bucket}, read again for the aggregate: ${err.message}`,
      );
      this.o.log(`left out the update of site "${site}" for round ${round}: ${rej.reason} [${rej.code}]`);
    };
    // A read back waits for the models being published: the aggregate steps the model in place.
    const result = storedResult(
      { site, samples, trainLoss, staleness },
      scanned,
      (position) => objects.cursor(chunks, position, { before: () => Promise.allSettled([...this.publishing]), fault }),
      chunks.ends,
    );
    await this.deliver(site, msg, env, { ...result, round }, () => {}, env.object.size);
  }

  /** Hands a checked update to its round (or, buffered, the next), or refuses it as stale; then commits and acknowledges it. */
  private async deliver(site: string, msg: Msg, env: UpdateEnvelope, result: FitAnswer & { round: number }, release: () => void, bytes: number): Promise<void> {
    let r = this.fitRound;
    const onTime = r && r.round === result.round && !r.channel.isClosed && r.sites.has(site) && !r.answered.has(site);
    if (onTime) {
      r!.channel.push({ ok: true, value: result }, release);
      this.answered(r!, site);
    } else if (this.o.spec.aggregation.mode === 'buffered' && (result.staleness ?? 0) >= 0) {
      // Kept before it is acknowledged: the site will not send it again.
      if (this.o.lateEnvelopes) {
        try {
          await this.o.lateEnvelopes.keep(result.round, site, msg.data);
        } catch (err) {
          this.o.log(`the late update of site "${site}" for round ${result.round} is not kept for a restart: ${(err as Error).message}`);
        }
      }
      // FedBuff: folded into the open round if there is one, else into the next.
      r = this.fitRound;
      if (r && !r.channel.isClosed) {
        r.channel.push({ ok: true, value: { ...result, staleness: Math.max(1, r.round - result.round) } }, release);
        this.foldedLate(env, r.round);
      } else {
        this.late.push({ result, release, env });
        // Kept until it is folded (a kept envelope taken again may have been due to go with this round).
        this.keepUntil(site, result.round, Number.POSITIVE_INFINITY);
      }
    } else {
      release();
      const rej = this.o.ingestor.reject(env, 'CONSORT_R_STALE_ROUND', `round ${result.round} is closed`);
      this.reject(msg, site, rej.code, rej.reason);
      return;
    }
    this.o.ingestor.commit(env);
    this.bytesIn.set(result.round, (this.bytesIn.get(result.round) ?? 0) + bytes);
    this.reply(msg, { type: 'ack', accepted: true });
  }

  /**
   * Stored updates: values [0, end) of the model as it was sent for round `round` (its fit task's
   * object, global/r<round - 1>, read back from the models bucket) into `into`.
   */
  async restoreGlobal(round: number, into: Float32Array, end: number): Promise<void> {
    if (!this.objects) throw new Error('restoreGlobal: this transport keeps no stored updates');
    await Promise.allSettled([...this.publishing]);
    const name = objectNames.global(round - 1);
    const info = await retrying(() => this.o.models.info(name), { until: Date.now() + READ_RETRY_MS });
    if (!info || info.deleted) throw new Error(`restoreGlobal: ${name} is not in ${this.o.modelsBucket}`);
    // A safetensors object of the layout in order (publishModel's): 8 bytes of header length, the header, the values.
    const target = new Uint8Array(into.buffer, into.byteOffset, 4 * end);
    const head = new Uint8Array(8);
    let dataStart = -1;
    let copied = 0;
    let at = 0;
    await this.objects.readOnce(this.o.modelsBucket, info, undefined, (chunk) => {
      if (at < 8) head.set(chunk.subarray(0, 8 - at), at);
      if (dataStart < 0 && at + chunk.length >= 8)
        dataStart = safetensorsHeaderBytes(head, info.size, { maxBytes: info.size, maxTensors: this.o.layout.length });
      if (dataStart >= 0) {
        const from = Math.max(0, dataStart - at);
        const n = Math.min(chunk.length - from, target.length - copied);
        if (n > 0) {
          target.set(chunk.subarray(from, from + n), copied);
          copied += n;
        }
      }
      at += chunk.length;
      return copied < target.length;
    });
    if (copied < target.length) throw new Error(`restoreGlobal: ${name} holds ${copied} of the ${target.length} bytes wanted`);
  }

  onEvaluation(site: string, msg: Msg): void {
    if (isFailure(msg)) {
      this.onFailure(site, msg);
      return;
    }
    const checked = this.o.ingestor.checkEvaluation(site, msg.data);
    if (!checked.ok) {
      this.reject(msg, site, checked.rejection.code, checked.rejection.reason);
      return;
    }
    const e = checked.envelope;
    const r = this.evalRound;
    if (!r || r.round !== e.round || r.channel.isClosed || !r.sites.has(site) || r.answered.has(site)) {
      this.reply(msg, { type: 'ack', accepted: true, duplicate: true });
      return;
    }
    r.channel.push({
      ok: true,
      value: {
        site,
        samples: e.samples,
        loss: e.loss,
        accuracy: e.accuracy,
        ...(e.auc !== undefined ? { auc: e.auc } : {}),
        ...(e.trainLoss !== undefined ? { trainLoss: e.trainLoss } : {}),
        ...(e.trainSamples !== undefined ? { trainSamples: e.trainSamples } : {}),
      },
    });
    this.answered(r, site);
    this.reply(msg, { type: 'ack', accepted: true });
  }

  /**
   * A site's signed report that its task failed: the open round of that task stops waiting for
   * it, and counts it as failed with its reason (the quorum then decides, at once if no one else
   * is awaited). One for a round already answered or closed changes nothing.
   */
  private onFailure(site: string, msg: Msg): void {
    const checked = this.o.ingestor.checkFailure(site, msg.data);
    if (!checked.ok) {
      this.reject(msg, site, checked.rejection.code, checked.rejection.reason);
      return;
    }
    const f = checked.envelope;
    const r = (f.task === 'fit' ? this.fitRound : this.evalRound) as OpenRound<unknown> | undefined;
    if (!r || r.round !== f.round || r.channel.isClosed || !r.sites.has(site) || r.answered.has(site)) {
      this.reply(msg, { type: 'ack', accepted: true, duplicate: true });
      return;
    }
    // The site's own words, signed but not to be trusted with a terminal.
    this.o.log(`site "${site}" could not ${f.task === 'fit' ? 'train' : 'evaluate'} in round ${f.round}: ${printable(f.reason)}`);
    r.channel.push({ ok: false, failure: { site, code: 'CONSORT_C_SITE_FAILED', reason: f.reason } });
    this.answered(r, site);
    this.reply(msg, { type: 'ack', accepted: true });
  }

  /**
   * A site started again (its hellos name another process) while an open round waits for its
   * answer: the task it lost is sent again, with the round's deadline, rather than the round
   * waiting for that deadline. A site that trains deterministically gives the update it would have.
   */
  siteRestarted(site: string): void {
    for (const r of [this.fitRound, this.evalRound] as Array<OpenRound<unknown> | undefined>) {
      if (!r?.taskFor || r.channel.isClosed || !r.sites.has(site) || r.answered.has(site)) continue;
      // A resend under way is taken by the newest process: a site naming a new process in every
      // hello gets one sending at a time, not one per hello (each tried until the deadline).
      if (r.resending.has(site)) continue;
      r.resending.add(site);
      this.o.log(`round ${r.round}: site "${site}" started again; its ${r.kind} task is sent again`);
      void this.sendTask(r, site, r.taskFor(site)).finally(() => r.resending.delete(site));
    }
  }

  /** The late updates acknowledged and not yet folded into a round: what a checkpoint must not count (ingestor.snapshot). */
  unfolded(): Array<{ round: number; site: string; nonce: string }> {
    return this.late.map(({ env }) => ({ round: env.round, site: env.site, nonce: env.nonce }));
  }

  private foldedLate(env: UpdateEnvelope, into: number): void {
    this.keepUntil(env.site, env.round, into);
  }

  /** The kept envelope of `site`'s late update for `round` goes once round `into` is checkpointed. */
  private keepUntil(site: string, round: number, into: number): void {
    if (this.o.lateEnvelopes) this.keptLate.set(`${round}/${site}`, { round, site, into });
  }

  /** Drops the kept envelopes of late updates folded into a round `done` says is checkpointed (a failure leaves an object, logged). */
  private dropKeptLate(done: (into: number) => boolean): void {
    const keeper = this.o.lateEnvelopes;
    if (!keeper) return;
    const drop = [...this.keptLate].filter(([, k]) => done(k.into));
    for (const [key, { round, site }] of drop) {
      this.keptLate.delete(key);
      const p = keeper
        .drop(round, site)
        .catch((err: unknown) => this.o.log(`the kept late update of site "${site}" for round ${round} stays: ${(err as Error).message}`));
      this.purges.add(p);
      void p.finally(() => this.purges.delete(p));
    }
  }

  shutdown(): void {
    for (const r of [this.fitRound, this.evalRound]) if (r) this.close(r as OpenRound<unknown>, 'coordinator stopping');
    for (const { release } of this.late.splice(0)) release();
  }
}

/** A site's report of a failed task (TaskFailureEnvelope), told from an answer before the ingestor reads it. */
function isFailure(msg: Msg): boolean {
  return (parseJson(msg.data) as { type?: unknown } | undefined)?.type === 'failure';
}
