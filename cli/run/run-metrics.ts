// `consort run --metrics-port`: the local runner's /metrics, the same per-job series the operator
// exports (operator/job-metrics.ts), set from the round loop's events, so that a laptop user
// watches a local job with the same Prometheus queries and dashboard as a cluster's.
import { collectDefaultMetrics, Registry } from 'prom-client';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import type { JobPhase } from '../../core/job/federated-job-status.ts';
import type { RoundRecord } from '../../core/report/run-report.ts';
import type { RoundEvents } from '../../operator/coordinator/round-coordinator.ts';
import { tallyRounds } from '../../operator/coordinator/round-tally.ts';
import { emptySnapshot, JobMetrics, type JobSnapshot } from '../../operator/job-metrics.ts';

export class LocalRunMetrics implements RoundEvents {
  readonly registry = new Registry();
  readonly #metrics: JobMetrics;
  readonly #namespace: string;
  readonly #name: string;
  // In one process the model and the updates move in memory: no bytes cross a wire.
  readonly #s: JobSnapshot;
  readonly #tally: ReturnType<typeof tallyRounds>;

  constructor(job: FederatedJob) {
    this.#metrics = new JobMetrics(this.registry);
    collectDefaultMetrics({ register: this.registry });
    // Gauges named like counters (_total) that promtool refuses; the per-type gauges stay.
    for (const n of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) this.registry.removeSingleMetric(n);
    this.#namespace = job.metadata.namespace ?? 'default';
    this.#name = job.metadata.name;
    this.#s = emptySnapshot('Pending', job.spec);
    // A first round that never ends must show as stalled (ConsortJobStalled): the clock starts now.
    this.#s.lastRoundAt = Date.now();
    this.#tally = tallyRounds(this.#s);
    this.#push();
  }

  roundStarted(round: number, sites: readonly string[]): void {
    this.#s.phase = 'Running';
    this.#tally.roundStarted(round, sites);
    this.#push();
  }

  siteUpdate(round: number, site: string, u: { samples: number; trainLoss: number; norm: number; staleness: number }): void {
    this.#tally.siteUpdate(round, site, u);
  }

  roundFinished(record: RoundRecord | undefined, round: number): void {
    this.#tally.roundFinished(record, round);
    this.#push();
  }

  /** The run ended (the server stops soon after; a last scrape may still see this). */
  finished(phase: Extract<JobPhase, 'Succeeded' | 'Failed'>): void {
    this.#s.phase = phase;
    this.#push();
  }

  #push(): void {
    this.#metrics.update(this.#namespace, this.#name, this.#s);
  }
}

const HOOKS = ['roundStarted', 'siteAnswered', 'siteFailed', 'siteUpdate', 'roundFinished'] as const;

/** One set of round events that calls every sink's; a hook no sink has stays unset (the loop skips what it costs, e.g. update norms). */
export function fanOut(sinks: readonly RoundEvents[]): RoundEvents {
  const out: Record<string, (...args: never[]) => void> = {};
  for (const hook of HOOKS) {
    const fns = sinks.flatMap((s) => {
      const f = s[hook] as ((...args: never[]) => void) | undefined;
      return f ? [f.bind(s)] : [];
    });
    if (fns.length > 0)
      out[hook] = (...args: never[]) => {
        for (const f of fns) f(...args);
      };
  }
  return out as RoundEvents;
}
