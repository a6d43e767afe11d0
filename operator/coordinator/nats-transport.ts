// The coordinator's side of protocol v1: tasks out to each sampled site on its own subject,
// signed envelopes in, each checked by the UpdateIngestor before its payload is fetched from the
// site's updates bucket and handed to the round loop. A rejected message is answered with its
// reason, counted, logged once per (site, reason), and changes nothing.
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import type { ObjectStore } from '@nats-io/obj';
import type { FederatedJobSpec } from '../../core/job/federated-job.ts';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { sha256Hex } from '../../core/protocol/digest.ts';
import type { UpdateIngestor } from '../../core/protocol/ingestion.ts';
import type { RejectionCode } from '../../core/protocol/rejections.ts';
import { readObjectStream, retrying } from '../../core/protocol/retry.ts';
import type { Ack, EvaluateTask, FitTask, ObjectRef } from '../../core/protocol/messages.ts';
import { newNonce } from '../../core/protocol/signing.ts';
import { OBJECT_CHUNK_BYTES, objectNames, PROTOCOL_VERSION, type subjects } from '../../core/protocol/subjects.ts';
import type { Outcome, SiteEvaluation, SiteTransport } from '../../core/protocol/transport.ts';
import type { FitInstructions, SiteFitResult } from '../../core/strategies/strategy.ts';
import { encodeSafetensors } from '../../core/tensor/safetensors.ts';
import { Channel } from './channel.ts';
import { encodeJson as json } from '../../core/protocol/wire.ts';

/** An update read that receives nothing for this long is abandoned. */
const READ_IDLE_MS = 5000;
/** How long an update read interrupted by the connection is tried again. */
const READ_RETRY_MS = 30_000;

interface OpenRound<T> {
  round: number;
  kind: 'fit' | 'evaluate';
  sites: Set<string>;
  answered: Set<string>;
  channel: Channel<Outcome<T>>;
  timer: NodeJS.Timeout;
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
  /** Whether the connection to the server was interrupted since `t` (epoch ms): a read that failed meanwhile is tried again. */
  interruptedSince?: (t: number) => boolean;
  log: (line: string) => void;
}

export class NatsTransport implements SiteTransport {
  private readonly o: NatsTransportOptions;
  private fitRound: OpenRound<SiteFitResult> | undefined;
  private evalRound: OpenRound<SiteEvaluation> | undefined;
  /** Buffered mode: late updates that arrived between rounds, folded into the next one. */
  private late: SiteFitResult[] = [];
  /** Bytes of updates accepted, per round (for the compression table and metrics). */
  readonly bytesIn = new Map<number, number>();
  readonly bytesOut = new Map<number, number>();

  constructor(o: NatsTransportOptions) {
    this.o = o;
  }

  async available(): Promise<string[]> {
    return this.o.alive();
  }

  private get deadlineMs(): number {
    return this.o.spec.aggregation.roundDeadlineSeconds * 1000;
  }

  /** Puts a model (or control variate) into the models bucket once; returns its reference. Tried again until the round's deadline. */
  private async publishModel(name: string, values: Float32Array): Promise<ObjectRef> {
    const bytes = encodeSafetensors(this.o.layout, values);
    const sha256 = sha256Hex(bytes);
    // The store keeps its own SHA-256 (padded base64url): an identical model is not written twice.
    const b64 = Buffer.from(sha256, 'hex').toString('base64url');
    const digest = `SHA-256=${b64}${'='.repeat((4 - (b64.length % 4)) % 4)}`;
    await retrying(
      async () => {
        const info = await this.o.models.info(name);
        if (!info || info.deleted || info.digest !== digest) await this.o.models.putBlob({ name, options: { max_chunk_size: OBJECT_CHUNK_BYTES } }, bytes);
      },
      { until: Date.now() + this.deadlineMs },
    );
    return { bucket: this.o.modelsBucket, name, sha256, size: bytes.length };
  }

  private open<T>(round: number, kind: 'fit' | 'evaluate', sites: readonly string[]): OpenRound<T> {
    const channel = new Channel<Outcome<T>>();
    const r: OpenRound<T> = {
      round,
      kind,
      sites: new Set(sites),
      answered: new Set(),
      channel,
      timer: setTimeout(() => this.close(r, 'no answer before the round deadline'), this.deadlineMs),
    };
    return r;
  }

  private close<T>(r: OpenRound<T>, reason: string): void {
    clearTimeout(r.timer);
    if (r.kind === 'fit' && !r.channel.isClosed) this.o.ingestor.closeRound(r.round);
    for (const site of r.sites) {
      if (!r.answered.has(site)) r.channel.push({ ok: false, failure: { site, code: 'CONSORT_C_DEADLINE', reason } });
    }
    r.channel.close();
  }

  private answered<T>(r: OpenRound<T>, site: string): void {
    r.answered.add(site);
    if ([...r.sites].every((s) => r.answered.has(s))) this.close(r, '');
  }

  /** Sends a task; a site that is not alive (no hello lately) fails at once, others are retried until the deadline. */
  private async sendTask<T>(r: OpenRound<T>, site: string, task: FitTask | EvaluateTask): Promise<void> {
    const body = json(task);
    const until = Date.now() + this.deadlineMs;
    let wait = 200;
    let lastError = '';
    while (Date.now() < until && !r.channel.isClosed) {
      try {
        await this.o.nc.request(this.o.subjects.task(site), body, { timeout: 2000 });
        return;
      } catch (err) {
        lastError = (err as Error).message;
        // A site that never joined or stopped saying hello is not waited for: it fails now
        // (one that is alive and momentarily unreachable is tried again until the deadline).
        if (!this.o.alive().includes(site)) break;
        await new Promise((res) => setTimeout(res, wait));
        wait = Math.min(wait * 2, 2000);
      }
    }
    if (!r.answered.has(site) && !r.channel.isClosed) {
      r.answered.add(site);
      r.channel.push({ ok: false, failure: { site, code: 'CONSORT_C_UNREACHABLE', reason: `task not delivered: ${lastError}` } });
      if ([...r.sites].every((s) => r.answered.has(s))) this.close(r, '');
    }
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
      const body = await prepare();
      const deadline = Date.now() + this.deadlineMs;
      await Promise.all(
        [...r.sites].map((site) =>
          this.sendTask(r, site, { ...body, protocol: PROTOCOL_VERSION, job: this.o.job, site, round: r.round, taskId: newNonce(), deadline } as
            | FitTask
            | EvaluateTask),
        ),
      );
    })().catch((err: unknown) => {
      this.o.log(`round ${r.round}: cannot send the ${r.kind} tasks: ${(err as Error).message}`);
      this.close(r, `tasks not sent: ${(err as Error).message}`);
    });
  }

  fit(round: number, sites: readonly string[], global: Float32Array, instructions: FitInstructions): AsyncIterable<Outcome<SiteFitResult>> {
    const r = this.open<SiteFitResult>(round, 'fit', sites);
    this.fitRound = r;
    this.o.ingestor.beginRound(round, [...sites]);
    // Nobody is asked to evaluate round `round` before its updates are in: an evaluation that
    // arrives earlier (a site resending after a coordinator restart) is refused, and taken once
    // its task comes, rather than taken now and then answered as a duplicate and lost.
    this.o.ingestor.beginEvaluation(round, []);
    for (const late of this.late) r.channel.push({ ok: true, value: { ...late, staleness: (late.staleness ?? 0) + 1 } });
    this.late = [];
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
    if (msg.reply) msg.respond(json(ack));
  }

  private reject(msg: Msg, site: string, code: RejectionCode, reason: string): void {
    if (this.o.ingestor.rejectedSites.shouldLog(site, code)) {
      this.o.log(`refused a message from site "${site}": ${reason} [${code}] (logged once per site and reason)`);
    }
    this.reply(msg, { type: 'ack', accepted: false, code, reason });
  }

  /** An update envelope from `site` (the subject's last token, never the envelope's word). */
  async onUpdate(site: string, msg: Msg): Promise<void> {
    const checked = this.o.ingestor.checkEnvelope(site, msg.data);
    if (!checked.ok) return this.reject(msg, site, checked.rejection.code, checked.rejection.reason);
    if ('duplicate' in checked && checked.duplicate) return this.reply(msg, { type: 'ack', accepted: true, duplicate: true });
    const env = checked.envelope;
    // Read within bounds: no more than the envelope declares, and not for ever (an object whose
    // chunks were never written streams nothing); a read cut by a connection interruption is
    // tried again.
    let bytes: Uint8Array | null = null;
    let failure = 'not found';
    let code: RejectionCode = 'CONSORT_R_OBJECT_MISSING';
    try {
      bytes = await retrying(
        async () => {
          const object = await (await this.o.updates(site)).get(env.object.name);
          return object && (await readObjectStream(object, { idleMs: READ_IDLE_MS, maxBytes: env.object.size, what: 'the read' }));
        },
        { until: Date.now() + READ_RETRY_MS, retryable: (_err, startedAt) => this.o.interruptedSince?.(startedAt) ?? false },
      );
    } catch (err) {
      failure = (err as Error).message;
      if (err instanceof RangeError) code = 'CONSORT_R_HASH_MISMATCH';
    }
    if (!bytes) {
      const rej = this.o.ingestor.reject(env, code, `update object ${env.object.name} in ${env.object.bucket}: ${failure}`);
      return this.reject(msg, site, rej.code, rej.reason);
    }
    const obj = this.o.ingestor.checkObject(env, bytes);
    if (!obj.ok) return this.reject(msg, site, obj.rejection.code, obj.rejection.reason);
    const result = obj.result;
    const r = this.fitRound;
    const onTime = r && r.round === result.round && !r.channel.isClosed && r.sites.has(site) && !r.answered.has(site);
    if (onTime) {
      r.channel.push({ ok: true, value: result });
      this.answered(r, site);
    } else if (this.o.spec.aggregation.mode === 'buffered' && (result.staleness ?? 0) >= 0) {
      // FedBuff: folded into the open round if there is one, else into the next.
      if (r && !r.channel.isClosed) r.channel.push({ ok: true, value: { ...result, staleness: Math.max(1, result.staleness ?? 0) } });
      else this.late.push({ ...result, staleness: Math.max(0, result.staleness ?? 0) });
    } else {
      const rej = this.o.ingestor.reject(env, 'CONSORT_R_STALE_ROUND', `round ${result.round} is closed`);
      return this.reject(msg, site, rej.code, rej.reason);
    }
    this.o.ingestor.commit(env);
    this.bytesIn.set(result.round, (this.bytesIn.get(result.round) ?? 0) + bytes.length);
    this.reply(msg, { type: 'ack', accepted: true });
  }

  onEvaluation(site: string, msg: Msg): void {
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

  shutdown(): void {
    for (const r of [this.fitRound, this.evalRound]) if (r) this.close(r as OpenRound<unknown>, 'coordinator stopping');
  }
}
