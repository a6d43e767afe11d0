// The round loop of each running job, as the controller sees it. Inside the operator (placement
// "operator") it is runNatsCoordinator on the operator's own NATS connection; with placement
// "pod" the loop runs in the coordinator Pod and the operator only watches it: the round notices
// on the job's subject, and the checkpoint in the job's state bucket, which holds every round's
// metrics. Either way progress is a plain object the reconciler turns into status; a change
// calls onChange, which re-queues the job.
import { type ObjectStore, Objm } from '@nats-io/obj';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import { ModelReference } from '../../core/job/federated-job-status.ts';
import { type AbsentSites, CoordinatorStatus, RoundNotice } from '../../core/protocol/messages.ts';
import { describeIssues } from '../../core/job/issues.ts';
import { buckets, jobKey, objectNames, subjects } from '../../core/protocol/subjects.ts';
import { decodeJson, encodeJson } from '../../core/protocol/wire.ts';
import type { RoundRecord } from '../../core/report/run-report.ts';
import { readCheckpointHeader, readRecordSegment, withArchivedRecords } from '../coordinator/checkpoint.ts';
import { emptyTally, type RoundTally, tallyRounds } from '../coordinator/round-tally.ts';
import { sha256OfObjectStoreDigest } from '../../core/protocol/digest.ts';
import { type CoordinatorCounters, FINAL_MODEL, runNatsCoordinator, WEIGHTS_SHA256_KEY } from '../coordinator/nats-coordinator.ts';
import { OperatorError } from '../errors.ts';

/** How long the coordinator Pod is given to answer a status request. */
const STATUS_TIMEOUT_MS = 5000;

export type RunState = 'joining' | 'running' | 'paused' | 'succeeded' | 'failed' | 'stopped';

export interface RunProgress extends RoundTally {
  state: RunState;
  /** The last round each site contributed to. */
  siteLastRound: Record<string, number>;
  model?: ModelReference;
  error?: string;
  /** Why the rounds ended: all of them, or early by a stopping rule. */
  stoppedBy?: 'rounds' | 'target' | 'patience';
  /** Bytes received (updates) and sent (models) so far, and refusals per code. */
  bytesIn: number;
  bytesOut: number;
  rejections: Record<string, number>;
}

export function emptyProgress(): RunProgress {
  return { ...emptyTally(), state: 'joining', siteLastRound: {}, bytesIn: 0, bytesOut: 0, rejections: {} };
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
  /**
   * Progress changed: 'state' when the run's state did (joining, running, paused, finished),
   * which the job's phase follows at once; 'progress' for a round's figures alone, which the
   * controller may gather into one status write.
   */
  onChange: (what: 'state' | 'progress') => void;
  /** Sites whose own operator refused the job (site mode), with why: the rounds do not wait for them to join. */
  refused?: () => ReadonlyMap<string, string>;
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
    const tally = tallyRounds(this.progress);
    this.#done = (async () => {
      try {
        const result = await runNatsCoordinator({
          job,
          nc: ctx.nc,
          siteKeys,
          log,
          joinTimeoutMs: job.spec.coordinator.joinTimeoutSeconds * 1000,
          ...(ctx.refused ? { notComing: () => new Set(ctx.refused!().keys()) } : {}),
          signal: this.#ctl.signal,
          pauseRequested: () => this.#pause,
          onCounters: (c) => {
            counters = c;
          },
          events: {
            roundStarted: (round, sites) => {
              const was = this.progress.state;
              this.progress.state = 'running';
              tally.roundStarted(round, sites);
              log(`round ${round} started (${sites.length} sites)`);
              ctx.onChange(was === 'running' ? 'progress' : 'state');
            },
            siteUpdate: tally.siteUpdate,
            roundFinished: (record, round) => {
              const p = this.progress;
              tally.roundFinished(record, round);
              if (counters) {
                p.bytesIn = [...counters.bytesIn.values()].reduce((a, b) => a + b, 0);
                p.bytesOut = [...counters.bytesOut.values()].reduce((a, b) => a + b, 0);
                p.rejections = counters.rejections();
              }
              if (record) lastRounds([record], p.siteLastRound);
              ctx.onChange('progress');
            },
          },
        });
        this.progress.round = result.roundsCompleted;
        // A resumed loop's result holds the rounds before the resume too.
        if (this.progress.records.length < result.rounds.length) this.progress.records = [...result.rounds];
        lastRounds(result.rounds, this.progress.siteLastRound);
        this.progress.model = result.model;
        this.progress.stoppedBy = result.stoppedBy;
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
      ctx.onChange('state');
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
  readonly #summary: Subscription;
  /** Answers the Pod's coordinator asking which sites will not come (their own operator refused the job). */
  readonly #absent: Subscription;
  readonly #ctx: RunContext;
  /** The last round whose duration is in progress.roundSeconds (from the coordinator's status). */
  #secondsUpTo = 0;
  /** Why the coordinator's last status reply could not be read (logged once per reason). */
  #statusProblem: string | undefined;
  readonly #key: string;
  readonly #objm: Objm;
  /** The job's buckets, opened once (they exist from the coordinator's start on). */
  #state: ObjectStore | undefined;
  #models: ObjectStore | undefined;
  /** The checkpoint's archived record segments read so far (they never change). */
  readonly #segments = new Map<number, RoundRecord[]>();
  #stopped = false;
  #reading: Promise<void> = Promise.resolve();

  constructor(job: FederatedJob & { metadata: { uid: string } }, ctx: RunContext) {
    this.uid = job.metadata.uid;
    this.#ctx = ctx;
    this.#key = jobKey(job.metadata);
    // As InOperatorRun's: a Pod's loop stuck in its first round (or after a restart) shows as
    // stalled too; the series was absent until a round finished, so ConsortJobStalled never fired.
    this.progress.lastRoundAt = Date.now();
    this.#objm = new Objm(ctx.nc);
    this.#sub = ctx.nc.subscribe(subjects(this.#key).round, {
      callback: (_err, msg) => {
        const n = RoundNotice.safeParse(decodeJson(msg.data));
        if (!n.success || n.data.job !== this.#key) return;
        if (n.data.phase === 'started') {
          const was = this.progress.state;
          this.progress.state = 'running';
          for (const s of n.data.sites ?? []) if (!this.progress.joined.includes(s)) this.progress.joined.push(s);
          ctx.onChange(was === 'running' ? 'progress' : 'state');
        }
        this.refresh(n.data.phase === 'done');
        // The loop's own figures of the round just finished (bytes, refusals, norms, durations).
        if (n.data.phase === 'started') this.#askStatus();
      },
    });
    // Its last figures, published once as it ends (the Pod is gone right after).
    this.#summary = ctx.nc.subscribe(subjects(this.#key).summary, {
      callback: (_err, msg) => this.#takeStatus(decodeJson(msg.data)),
    });
    this.#absent = ctx.nc.subscribe(subjects(this.#key).absent, {
      callback: (_err, msg) => {
        const sites = [...(ctx.refused?.() ?? new Map<string, string>())].map(([site, reason]) => ({ site, reason }));
        msg.respond(encodeJson({ type: 'absent', job: this.#key, sites } satisfies AbsentSites));
      },
    });
    this.refresh(false);
  }

  #askStatus(): void {
    this.#reading = this.#reading.then(async () => {
      if (this.#stopped) return;
      // No answer (the Pod starting, or gone) is no news: the next round asks again.
      const reply = await this.#ctx.nc.request(subjects(this.#key).status, '', { timeout: STATUS_TIMEOUT_MS }).catch(() => undefined);
      if (reply) this.#takeStatus(decodeJson(reply.data));
    });
  }

  /** Takes the coordinator's counters and its latest round's tally into progress (what the job's metrics show). */
  #takeStatus(raw: unknown): void {
    if (this.#stopped) return;
    const parsed = CoordinatorStatus.safeParse(raw);
    if (!parsed.success || parsed.data.job !== this.#key) {
      const why = parsed.success ? `it is of job ${parsed.data.job}` : describeIssues(parsed.error, []).join('; ');
      if (why !== this.#statusProblem) this.#ctx.log(`[${this.#key}] the coordinator's status cannot be read: ${why}`);
      this.#statusProblem = why;
      return;
    }
    const s = parsed.data;
    const p = this.progress;
    p.rejections = s.rejections;
    if (s.bytesIn !== undefined) p.bytesIn = s.bytesIn;
    if (s.bytesOut !== undefined) p.bytesOut = s.bytesOut;
    const t = s.tally;
    if (t && t.round > 0) {
      p.sampled = t.sampled;
      p.participants = t.participants;
      p.missed = t.missed;
      p.norms = t.norms;
      for (const site of t.sampled) if (!p.joined.includes(site)) p.joined.push(site);
      // Durations of rounds not counted yet (a restarted coordinator's tally starts at its resume).
      const fresh = Math.min(t.round - this.#secondsUpTo, t.roundSeconds.length);
      if (fresh > 0) p.roundSeconds.push(...t.roundSeconds.slice(-fresh));
      this.#secondsUpTo = Math.max(this.#secondsUpTo, t.round);
    }
    this.#ctx.onChange('progress');
  }

  async #segment(state: ObjectStore, index: number): Promise<RoundRecord[]> {
    let records = this.#segments.get(index);
    if (!records) {
      records = await readRecordSegment(state, index);
      this.#segments.set(index, records);
    }
    return records;
  }

  /** Reads the checkpoint's header (and, when done, the final model's description) again. */
  refresh(done: boolean): void {
    this.#reading = this.#reading.then(async () => {
      if (this.#stopped) return;
      const was = this.progress.state;
      try {
        const b = buckets(this.#key);
        this.#state ??= await this.#objm.open(b.state).catch(() => undefined);
        const r = this.#state ? await this.#state.get(objectNames.checkpoint) : null;
        if (r) {
          r.error.catch(() => {}); // the rest of the body is cancelled
          // Archived segments never change: each is read once per run.
          const state = this.#state!;
          const h = await withArchivedRecords(await readCheckpointHeader(r.data), (i) => this.#segment(state, i));
          if (h.round > this.progress.round) this.progress.lastRoundAt = Date.now();
          this.progress.round = h.round;
          this.progress.records = h.records;
          if (h.stoppedBy) this.progress.stoppedBy = h.stoppedBy;
          this.progress.participants = (h.records.at(-1)?.participants ?? []).map((p) => p.split('@')[0]!);
          lastRounds(h.records, this.progress.siteLastRound);
          if (this.progress.state === 'joining' && h.round > 0) this.progress.state = 'running';
        }
        this.#models ??= await this.#objm.open(b.models).catch(() => undefined);
        const info = this.#models ? await this.#models.info(FINAL_MODEL) : null;
        const sha256 = info && !info.deleted ? sha256OfObjectStoreDigest(info.digest) : undefined;
        if (info && sha256) {
          const weightsSha256 = ModelReference.shape.weightsSha256.safeParse(info.metadata?.[WEIGHTS_SHA256_KEY]).data;
          this.progress.model = { bucket: b.models, object: FINAL_MODEL, sha256, ...(weightsSha256 ? { weightsSha256 } : {}), bytes: info.size };
          this.progress.state = 'succeeded';
        } else if (done) {
          this.progress.state = 'failed';
          this.progress.error = 'the coordinator announced the end but wrote no final model';
        }
        this.#ctx.onChange(this.progress.state === was ? 'progress' : 'state');
      } catch (err) {
        this.#ctx.log(`[${this.#key}] reading the coordinator's state: ${(err as Error).message}`);
      }
    });
  }

  requestPause(): void {
    // The Pod's loop cannot be asked; the reconciler deletes the Pod after its next checkpoint.
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#sub.unsubscribe();
    this.#summary.unsubscribe();
    this.#absent.unsubscribe();
    await this.#reading;
  }
}
