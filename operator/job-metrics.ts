// Per-job metrics: what the Grafana dashboard and the alert rules read. A job is labelled by its
// namespace and name (`federatedjob`: a label named `job` would collide with the `job` label
// Prometheus gives every scraped series), and a site's series by the site's name too; never a
// round or a Pod. Sites are ephemeral, so the coordinator (in the operator, or the local runner)
// exports what they report; a job's series are removed when the job is deleted.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { JobPhase } from '../core/job/federated-job-status.ts';
import type { FederatedJobSpec } from '../core/job/federated-job.ts';
import { emptyTally, type RoundTally } from './coordinator/round-tally.ts';

const PHASES: JobPhase[] = ['Pending', 'Running', 'Suspended', 'Succeeded', 'Failed'];
const SITE_STATES = ['joined', 'participating', 'straggling', 'refused'] as const;
/** Round durations: from a fraction of a second (tiny models) to the default deadline (600 s). */
export const ROUND_DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

/** One job as seen at a moment: everything the metrics are set from (the round loop's tally, and what the transport and the controller add). */
export interface JobSnapshot extends RoundTally {
  phase: JobPhase;
  roundsPlanned: number;
  roundDeadlineSeconds: number;
  /** Sites whose own policy refused the job. */
  refused: number;
  bytesIn: number;
  bytesOut: number;
  rejections: Record<string, number>;
}

/** A job with nothing observed yet. */
export function emptySnapshot(phase: JobPhase, spec: Pick<FederatedJobSpec, 'rounds' | 'aggregation'>): JobSnapshot {
  return {
    ...emptyTally(),
    phase,
    roundsPlanned: spec.rounds,
    roundDeadlineSeconds: spec.aggregation.roundDeadlineSeconds,
    refused: 0,
    bytesIn: 0,
    bytesOut: 0,
    rejections: {},
  };
}

type JobLabels = 'namespace' | 'federatedjob';

export class JobMetrics {
  readonly phase: Gauge<JobLabels | 'phase'>;
  readonly round: Gauge<JobLabels>;
  readonly roundsPlanned: Gauge<JobLabels>;
  readonly loss: Gauge<JobLabels>;
  readonly accuracy: Gauge<JobLabels>;
  readonly auc: Gauge<JobLabels>;
  readonly siteAccuracy: Gauge<JobLabels | 'site'>;
  readonly siteLoss: Gauge<JobLabels | 'site'>;
  readonly accuracyMin: Gauge<JobLabels>;
  readonly accuracyMax: Gauge<JobLabels>;
  readonly accuracyStd: Gauge<JobLabels>;
  readonly sites: Gauge<JobLabels | 'state'>;
  readonly missed: Gauge<JobLabels | 'site'>;
  readonly norm: Gauge<JobLabels | 'site'>;
  readonly lastRoundTime: Gauge<JobLabels>;
  readonly deadline: Gauge<JobLabels>;
  readonly falling: Gauge<JobLabels>;
  readonly roundsCompleted: Counter<JobLabels>;
  readonly bytesIn: Counter<JobLabels>;
  readonly bytesOut: Counter<JobLabels>;
  readonly rejected: Counter<JobLabels | 'reason'>;
  readonly roundDuration: Histogram<JobLabels>;
  /** What each counter has been told so far, per job, so that cumulative figures become increments. */
  readonly #seen = new Map<
    string,
    { round: number; bytesIn: number; bytesOut: number; rejections: Record<string, number>; durations: number; sites: Set<string> }
  >();

  constructor(registry: Registry) {
    const registers = [registry];
    const job = ['namespace', 'federatedjob'] as const;
    const site = [...job, 'site'] as const;
    const g = <L extends string>(name: string, help: string, labelNames: readonly L[]) => new Gauge<L>({ name, help, labelNames, registers });
    this.phase = g('consort_job_phase', "1 for the job's current phase, 0 for the others.", [...job, 'phase']);
    this.round = g('consort_job_round', 'Rounds completed.', job);
    this.roundsPlanned = g('consort_job_rounds_planned', 'Rounds the job runs (spec.rounds).', job);
    this.loss = g('consort_job_loss', "Global model's loss on the sites' test splits, latest evaluated round (sample-weighted).", job);
    this.accuracy = g('consort_job_accuracy', "Global model's accuracy on the sites' test splits, latest evaluated round (sample-weighted).", job);
    this.auc = g('consort_job_auc', "Global model's ROC AUC, latest evaluated round (binary tasks).", job);
    this.siteAccuracy = g('consort_site_accuracy', "Global model's accuracy on one site's test split, latest evaluated round.", site);
    this.siteLoss = g('consort_site_loss', "Global model's loss on one site's test split, latest evaluated round.", site);
    this.accuracyMin = g('consort_job_site_accuracy_min', 'Lowest per-site accuracy, latest evaluated round.', job);
    this.accuracyMax = g('consort_job_site_accuracy_max', 'Highest per-site accuracy, latest evaluated round.', job);
    this.accuracyStd = g('consort_job_site_accuracy_stddev', 'Standard deviation of the per-site accuracies, latest evaluated round.', job);
    this.sites = g(
      'consort_job_sites',
      'Sites by state: joined (said hello), participating (sent an update in the latest round), straggling (asked, sent nothing), refused (by their own policy).',
      [...job, 'state'],
    );
    this.missed = g('consort_site_rounds_missed_consecutive', 'Consecutive rounds a site was asked to train and sent no update.', site);
    this.norm = g('consort_site_update_norm', "L2 norm of the site's latest update (weights after minus before).", site);
    this.lastRoundTime = g('consort_job_last_round_timestamp_seconds', 'When the latest round finished (Unix time).', job);
    this.deadline = g('consort_job_round_deadline_seconds', 'The round deadline (spec.aggregation.roundDeadlineSeconds).', job);
    this.falling = g('consort_job_accuracy_falling_rounds', 'Consecutive evaluated rounds whose global accuracy fell.', job);
    this.roundsCompleted = new Counter({ name: 'consort_job_rounds_completed_total', help: 'Rounds completed.', labelNames: job, registers });
    this.bytesIn = new Counter({ name: 'consort_job_bytes_received_total', help: 'Update bytes received from the sites.', labelNames: job, registers });
    this.bytesOut = new Counter({
      name: 'consort_job_bytes_sent_total',
      help: 'Model bytes sent to the sites (each site counted).',
      labelNames: job,
      registers,
    });
    this.rejected = new Counter({
      name: 'consort_updates_rejected_total',
      help: 'Messages from sites refused, by reason (the stable codes of core/protocol/rejections.ts).',
      labelNames: [...job, 'reason'],
      registers,
    });
    this.roundDuration = new Histogram({
      name: 'consort_round_duration_seconds',
      help: 'Time from the start of a round to its checkpoint.',
      labelNames: job,
      buckets: ROUND_DURATION_BUCKETS,
      registers,
    });
  }

  /** Sets every series of the job `namespace/name` from `s`. */
  update(namespace: string, name: string, s: JobSnapshot): void {
    const l = { namespace, federatedjob: name };
    const key = `${namespace}/${name}`;
    const seen = this.#seen.get(key) ?? { round: 0, bytesIn: 0, bytesOut: 0, rejections: {}, durations: 0, sites: new Set<string>() };
    this.#seen.set(key, seen);
    for (const p of PHASES) this.phase.set({ ...l, phase: p }, p === s.phase ? 1 : 0);
    this.round.set(l, s.round);
    this.roundsPlanned.set(l, s.roundsPlanned);
    this.deadline.set(l, s.roundDeadlineSeconds);
    // A resumed loop (new operator) starts its cumulative figures again: count from there.
    const more = (now: number, before: number) => (now >= before ? now - before : now);
    // The round is a position, not a running count: a resumed run reports 0 until its checkpoint is
    // read, then the round it resumed after, which was counted already.
    this.roundsCompleted.inc(l, Math.max(0, s.round - seen.round));
    this.bytesIn.inc(l, more(s.bytesIn, seen.bytesIn));
    this.bytesOut.inc(l, more(s.bytesOut, seen.bytesOut));
    for (const [reason, n] of Object.entries(s.rejections)) {
      const d = more(n, seen.rejections[reason] ?? 0);
      // Every reason has a series from its first refusal on (a zero series for each would be dozens per job).
      if (d > 0 || seen.rejections[reason] !== undefined) this.rejected.inc({ ...l, reason }, d);
    }
    seen.round = Math.max(seen.round, s.round);
    seen.bytesIn = s.bytesIn;
    seen.bytesOut = s.bytesOut;
    const kept: Record<string, number> = {};
    for (const [reason, n] of Object.entries(s.rejections)) if (n > 0 || reason in seen.rejections) kept[reason] = n;
    seen.rejections = kept;
    for (const d of s.roundSeconds.slice(seen.durations)) this.roundDuration.observe(l, d);
    seen.durations = s.roundSeconds.length;
    if (s.lastRoundAt !== undefined) this.lastRoundTime.set(l, s.lastRoundAt / 1000);
    const last = s.records.at(-1);
    if (last) {
      this.loss.set(l, last.globalLoss);
      this.accuracy.set(l, last.globalAccuracy);
      if (last.globalAuc !== undefined) this.auc.set(l, last.globalAuc);
      this.accuracyMin.set(l, last.accuracySpread.min);
      this.accuracyMax.set(l, last.accuracySpread.max);
      this.accuracyStd.set(l, last.accuracySpread.std);
      for (const m of last.sites) {
        seen.sites.add(m.site);
        this.siteAccuracy.set({ ...l, site: m.site }, m.accuracy);
        this.siteLoss.set({ ...l, site: m.site }, m.loss);
      }
    }
    let falling = 0;
    for (let i = s.records.length - 1; i > 0 && s.records[i]!.globalAccuracy < s.records[i - 1]!.globalAccuracy; i--) falling++;
    this.falling.set(l, falling);
    const participants = new Set(s.participants);
    this.sites.set({ ...l, state: 'joined' }, s.joined.length);
    this.sites.set({ ...l, state: 'participating' }, participants.size);
    this.sites.set({ ...l, state: 'straggling' }, s.sampled.filter((x) => !participants.has(x)).length);
    this.sites.set({ ...l, state: 'refused' }, s.refused);
    for (const [site, n] of Object.entries(s.missed)) {
      seen.sites.add(site);
      this.missed.set({ ...l, site }, n);
    }
    for (const [site, n] of Object.entries(s.norms)) {
      seen.sites.add(site);
      this.norm.set({ ...l, site }, n);
    }
  }

  /** Removes every series of a deleted job. */
  forget(namespace: string, name: string): void {
    const key = `${namespace}/${name}`;
    const l = { namespace, federatedjob: name };
    const seen = this.#seen.get(key);
    this.#seen.delete(key);
    for (const m of [
      this.round,
      this.roundsPlanned,
      this.loss,
      this.accuracy,
      this.auc,
      this.accuracyMin,
      this.accuracyMax,
      this.accuracyStd,
      this.lastRoundTime,
      this.deadline,
      this.falling,
    ]) {
      m.remove(l);
    }
    for (const m of [this.roundsCompleted, this.bytesIn, this.bytesOut]) m.remove(l);
    this.roundDuration.remove(l);
    for (const p of PHASES) this.phase.remove({ ...l, phase: p });
    for (const st of SITE_STATES) this.sites.remove({ ...l, state: st });
    for (const reason of Object.keys(seen?.rejections ?? {})) this.rejected.remove({ ...l, reason });
    for (const site of seen?.sites ?? []) for (const m of [this.siteAccuracy, this.siteLoss, this.missed, this.norm]) m.remove({ ...l, site });
  }
}
