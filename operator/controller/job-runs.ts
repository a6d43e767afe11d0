// The round loop of each running job, as the controller sees it. Inside the operator (placement
// "operator") it is runNatsCoordinator on the operator's own NATS connection; with placement
// "pod" the loop runs in the coordinator Pod and the operator only watches it: the round notices
// on the job's subject, and the checkpoint in the job's state bucket, which holds every round's
// metrics. Either way progress is a plain object the reconciler turns into status; a change
// calls onChange, which re-queues the job.
import { Objm } from '@nats-io/obj';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import type { ModelReference } from '../../core/job/federated-job-status.ts';
import { RoundNotice } from '../../core/protocol/messages.ts';
import { buckets, jobKey, objectNames, subjects } from '../../core/protocol/subjects.ts';
import { decodeJson } from '../../core/protocol/wire.ts';
import type { RoundRecord } from '../../core/report/run-report.ts';
import { decodeCheckpointHeader } from '../coordinator/checkpoint.ts';
import { type CoordinatorCounters, FINAL_MODEL, runNatsCoordinator } from '../coordinator/nats-coordinator.ts';
import { OperatorError } from '../errors.ts';

export type RunState = 'joining' | 'running' | 'paused' | 'succeeded' | 'failed' | 'stopped';

export interface RunProgress {
  state: RunState;
  /** Rounds completed. */
  round: number;
  /** The latest evaluated round's record. */
  last?: RoundRecord;
  /** Every evaluated round so far (for the API's history). */
  records: RoundRecord[];
  /** The last round each site contributed to. */
  siteLastRound: Record<string, number>;
  joined: string[];
  model?: ModelReference;
  error?: string;
  /** Sites asked to train in the latest round, and those that answered. */
  sampled: string[];
  participants: string[];
  /** Consecutive rounds each site was asked to train and sent nothing. */
  missed: Record<string, number>;
  /** L2 norm of each site's latest update. */
  norms: Record<string, number>;
  /** Bytes received (updates) and sent (models) so far, and refusals per code. */
  bytesIn: number;
  bytesOut: number;
  rejections: Record<string, number>;
  /** When the latest round finished (ms since the epoch), and the seconds each round took, in order. */
  lastRoundAt?: number;
  roundSeconds: number[];
}

export function emptyProgress(): RunProgress {
  return {
    state: 'joining',
    round: 0,
    records: [],
    siteLastRound: {},
    joined: [],
    sampled: [],
    participants: [],
    missed: {},
    norms: {},
    bytesIn: 0,
    bytesOut: 0,
    rejections: {},
    roundSeconds: [],
  };
}

export interface JobRun {
  readonly uid: string;
  readonly placement: 'operator' | 'pod';
  readonly progress: RunProgress;
  /** Ask the loop to stop after the current round (spec.suspend). */
  requestPause(): void;
  /** Stop now (job deleted, leadership lost); the checkpoint stays. */
  stop(): Promise<void>;
}

export interface RunContext {
  nc: NatsConnection;
  log: (line: string) => void;
  onChange: () => void;
}

function lastRounds(records: RoundRecord[], into: Record<string, number>): void {
  for (const r of records) for (const p of r.participants) into[p.split('@')[0]!] = r.round;
}

/** The loop inside the operator. */
export class InOperatorRun implements JobRun {
  readonly uid: string;
  readonly placement = 'operator' as const;
  readonly progress: RunProgress = emptyProgress();
  readonly #ctl = new AbortController();
  #pause = false;
  readonly #done: Promise<void>;

  constructor(job: FederatedJob & { metadata: { uid: string } }, siteKeys: Record<string, string>, ctx: RunContext) {
    this.uid = job.metadata.uid;
    const name = `${job.metadata.namespace}/${job.metadata.name}`;
    const log = (line: string) => ctx.log(`[${name}] ${line}`);
    // A stalled first round (or one after a resume) must show as stalled too: the clock starts now.
    this.progress.lastRoundAt = Date.now();
    let counters: CoordinatorCounters | undefined;
    let answered = new Set<string>();
    let startedAt = performance.now();
    this.#done = (async () => {
      try {
        const result = await runNatsCoordinator({
          job,
          nc: ctx.nc,
          siteKeys,
          log,
          joinTimeoutMs: job.spec.coordinator.joinTimeoutSeconds * 1000,
          signal: this.#ctl.signal,
          pauseRequested: () => this.#pause,
          onCounters: (c) => {
            counters = c;
          },
          events: {
            roundStarted: (round, sites) => {
              this.progress.state = 'running';
              for (const s of sites) if (!this.progress.joined.includes(s)) this.progress.joined.push(s);
              this.progress.sampled = [...sites];
              answered = new Set();
              startedAt = performance.now();
              log(`round ${round} started (${sites.length} sites)`);
              ctx.onChange();
            },
            siteUpdate: (_round, site, u) => {
              answered.add(site);
              this.progress.norms[site] = u.norm;
            },
            roundFinished: (record, round) => {
              const p = this.progress;
              p.participants = [...answered].sort();
              for (const s of p.sampled) p.missed[s] = answered.has(s) ? 0 : (p.missed[s] ?? 0) + 1;
              p.lastRoundAt = Date.now();
              p.roundSeconds.push((performance.now() - startedAt) / 1000);
              if (counters) {
                p.bytesIn = [...counters.bytesIn.values()].reduce((a, b) => a + b, 0);
                p.bytesOut = [...counters.bytesOut.values()].reduce((a, b) => a + b, 0);
                p.rejections = counters.rejections();
              }
              this.progress.round = round;
              if (record) {
                this.progress.last = record;
                this.progress.records.push(record);
                lastRounds([record], this.progress.siteLastRound);
              }
              ctx.onChange();
            },
          },
        });
        this.progress.round = result.roundsCompleted;
        if (result.rounds.length > 0 && this.progress.records.length < result.rounds.length) this.progress.records = [...result.rounds];
        lastRounds(result.rounds, this.progress.siteLastRound);
        this.progress.last = result.rounds.at(-1) ?? this.progress.last;
        this.progress.model = result.model;
        this.progress.state = 'succeeded';
        log(`done after ${result.roundsCompleted} rounds (${result.stoppedBy})`);
      } catch (err) {
        if (err instanceof OperatorError && err.code === 'CONSORT_C_PAUSED') this.progress.state = 'paused';
        else if (this.#ctl.signal.aborted) this.progress.state = 'stopped';
        else {
          this.progress.state = 'failed';
          this.progress.error = (err as Error).message;
          log(`failed: ${(err as Error).message}`);
        }
      }
      ctx.onChange();
    })();
  }

  requestPause(): void {
    this.#pause = true;
  }

  async stop(): Promise<void> {
    this.#ctl.abort();
    await this.#done;
  }
}

/** Watches the loop of a coordinator Pod: its round notices, then its checkpoint and final model. */
export class PodRun implements JobRun {
  readonly uid: string;
  readonly placement = 'pod' as const;
  readonly progress: RunProgress = emptyProgress();
  readonly #sub: Subscription;
  readonly #ctx: RunContext;
  readonly #key: string;
  #stopped = false;
  #reading: Promise<void> = Promise.resolve();

  constructor(job: FederatedJob & { metadata: { uid: string } }, ctx: RunContext) {
    this.uid = job.metadata.uid;
    this.#ctx = ctx;
    this.#key = jobKey(job.metadata);
    this.#sub = ctx.nc.subscribe(subjects(this.#key).round, {
      callback: (_err, msg) => {
        const n = RoundNotice.safeParse(decodeJson(msg.data));
        if (!n.success || n.data.job !== this.#key) return;
        if (n.data.phase === 'started') {
          this.progress.state = 'running';
          for (const s of n.data.sites ?? []) if (!this.progress.joined.includes(s)) this.progress.joined.push(s);
          ctx.onChange();
        }
        this.refresh(n.data.phase === 'done');
      },
    });
    this.refresh(false);
  }

  /** Reads the checkpoint (and, when done, the final model's description) again. */
  refresh(done: boolean): void {
    this.#reading = this.#reading.then(async () => {
      if (this.#stopped) return;
      try {
        const objm = new Objm(this.#ctx.nc);
        const b = buckets(this.#key);
        const state = await objm.open(b.state).catch(() => undefined);
        const bytes = state ? await state.getBlob(objectNames.checkpoint) : null;
        if (bytes) {
          const h = decodeCheckpointHeader(bytes);
          if (h.round > this.progress.round) this.progress.lastRoundAt = Date.now();
          this.progress.round = h.round;
          this.progress.records = h.records;
          this.progress.last = h.records.at(-1);
          this.progress.participants = (h.records.at(-1)?.participants ?? []).map((p) => p.split('@')[0]!);
          lastRounds(h.records, this.progress.siteLastRound);
          if (this.progress.state === 'joining' && h.round > 0) this.progress.state = 'running';
        }
        const models = await objm.open(b.models).catch(() => undefined);
        const info = models ? await models.info(FINAL_MODEL) : null;
        if (info && !info.deleted) {
          // The Object Store's digest is "SHA-256=<base64url>" of the whole object.
          const digest = Buffer.from(info.digest.replace(/^SHA-256=/, ''), 'base64url').toString('hex');
          this.progress.model = { bucket: b.models, object: FINAL_MODEL, sha256: digest, bytes: info.size };
          this.progress.state = 'succeeded';
        } else if (done) {
          this.progress.state = 'failed';
          this.progress.error = 'the coordinator announced the end but wrote no final model';
        }
        this.#ctx.onChange();
      } catch (err) {
        this.#ctx.log(`[${this.#key}] reading the coordinator's state: ${(err as Error).message}`);
      }
    });
  }

  /** The coordinator Pod failed for good (the reconciler saw it). */
  fail(message: string): void {
    this.progress.state = 'failed';
    this.progress.error = message;
  }

  requestPause(): void {
    // The Pod's loop cannot be asked; the reconciler deletes the Pod after its next checkpoint.
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#sub.unsubscribe();
    await this.#reading;
  }
}
