// The round loop, after Flower's: sample sites, configure, collect and fold updates as they
// arrive (O(model) memory), let the strategy step, evaluate, decide whether to stop. It holds
// no transport or Kubernetes code, so the local runner, `consort coordinator` and the operator
// all run this same loop.
//
// Updates come in memory (folded as they arrive into one whole-model exact sum, 16 bytes a
// parameter) or, from a transport that keeps them for a large model (NATS: each in its site's
// bucket), stored: admitted as they arrive and aggregated when the round closes, a range of the
// model at a time, the strategy stepping the model in place (core/aggregation/stored-round.ts):
// then the round holds the model and a few ranges, whatever the number of sites. Both give the
// same bits.
import type { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { sitesPerRound } from '../../core/job/federated-job.ts';
import { RoundAccumulator } from '../../core/aggregation/round-accumulator.ts';
import { aggregateStored, isStoredResult, StoredAggregationError, StoredRound } from '../../core/aggregation/stored-round.ts';
import { globalMetrics, spread, weightedMean } from '../../core/metrics/aggregate.ts';
import type { SiteEvaluation, SiteFailure, SiteTransport } from '../../core/protocol/transport.ts';
import type { RoundRecord } from '../../core/report/run-report.ts';
import { Rng } from '../../core/rng.ts';
import { createStrategy } from '../../core/strategies/index.ts';
import type { Strategy } from '../../core/strategies/strategy.ts';
import { OperatorError } from '../errors.ts';
import { type Checkpoint, type CheckpointStore, checkpointParts, decodeCheckpoint, RECORDS_PER_SEGMENT } from './checkpoint.ts';

export interface RoundEvents {
  roundStarted?(round: number, sites: readonly string[]): void;
  siteAnswered?(round: number, site: string, ok: boolean): void;
  siteFailed?(round: number, failure: SiteFailure): void;
  /** An update was folded in: its weight, loss and the L2 norm of its delta (computed only when this is set). */
  siteUpdate?(round: number, site: string, u: { samples: number; trainLoss: number; norm: number; staleness: number }): void;
  roundFinished?(record: RoundRecord | undefined, round: number): void;
}

export interface CoordinatorResult {
  global: Float32Array;
  rounds: RoundRecord[];
  roundsCompleted: number;
  stoppedBy: 'rounds' | 'target' | 'patience';
  /** Every site's score of the final model. */
  final: SiteEvaluation[];
  /** Sites asked to score the final model that did not (their failure, or that no answer came): the final figures leave them out. */
  finalMissing: SiteFailure[];
}

/**
 * Parameters a stored round aggregates at a time: 4 MiB of exact sum (16 bytes each) and 1 MiB
 * buffers, small beside what reading the updates leaves for the garbage collector, and large
 * enough that a range is a few chunks of every update (one direct get each).
 */
export const AGGREGATION_RANGE = 1 << 18;

export class RoundCoordinator {
  private readonly spec: FederatedJobSpec;
  private readonly transport: SiteTransport;
  private readonly events: RoundEvents;
  private strategy: Strategy;
  private readonly siteNames: string[];
  private global: Float32Array;
  private accumulator: RoundAccumulator | undefined;

  private readonly job: string;
  private readonly checkpoints: CheckpointStore | undefined;
  /** How many leading round records the checkpoint store keeps apart (segments already written). */
  private archived: number;
  private readonly transportState: (() => unknown) | undefined;
  private readonly resume: Checkpoint | undefined;
  private readonly signal: AbortSignal | undefined;
  private readonly pauseRequested: (() => boolean) | undefined;
  private readonly aggregationRange: number;
  private readonly aggregationThreads: number;

  constructor(opts: {
    spec: FederatedJobSpec;
    initial: Float32Array;
    transport: SiteTransport;
    events?: RoundEvents;
    /** Where to write a checkpoint after every round, and the job's name in it. */
    checkpoints?: { store: CheckpointStore; job: string; transportState?: () => unknown };
    /** A checkpoint to carry on from, with all its records (loadCheckpoint puts the archived ones back). */
    resume?: Checkpoint;
    /** Ends the run at once (OperatorError CONSORT_C_ABORTED); the last checkpoint stays. */
    signal?: AbortSignal;
    /** Asked after each checkpointed round: true ends the run there (OperatorError CONSORT_C_PAUSED). */
    pauseRequested?: () => boolean;
    /** Stored updates: parameters aggregated at a time (default AGGREGATION_RANGE). */
    aggregationRange?: number;
    /**
     * Threads that fold updates into the exact sums at once (default 1): updates the transport
     * holds in SharedArrayBuffers are folded by that many, each a run of blocks (fold-pool.ts).
     */
    aggregationThreads?: number;
  }) {
    this.signal = opts.signal;
    this.pauseRequested = opts.pauseRequested;
    this.spec = opts.spec;
    this.transport = opts.transport;
    this.events = opts.events ?? {};
    this.siteNames = opts.spec.sites.map((s) => s.name);
    this.job = opts.checkpoints?.job ?? '';
    this.checkpoints = opts.checkpoints?.store;
    this.transportState = opts.checkpoints?.transportState;
    this.resume = opts.resume;
    this.archived = opts.resume?.archived ?? 0;
    this.aggregationRange = opts.aggregationRange ?? AGGREGATION_RANGE;
    this.aggregationThreads = opts.aggregationThreads ?? 1;
    // The model is ours from here: stored updates step it in place.
    this.global = opts.resume ? opts.resume.global : opts.initial;
    this.strategy = createStrategy(opts.spec.strategy, this.global.length, this.siteNames.length, opts.resume?.strategy);
  }

  /**
   * The sites asked to train in a round: uniformly without replacement, seeded per round, among
   * the sites the transport can reach (all of them, in order, when every site is there).
   */
  async sample(round: number): Promise<string[]> {
    const reachable = this.transport.available ? new Set(await this.transport.available()) : undefined;
    const candidates = reachable ? this.siteNames.filter((s) => reachable.has(s)) : this.siteNames;
    const n = candidates.length;
    const k = Math.min(n, sitesPerRound(this.spec));
    if (k >= n) return [...candidates];
    return Rng.from(this.spec.seed, 'sampling', round)
      .sample(n, k)
      .map((i) => candidates[i]!);
  }

  private evaluators(round: number, final: boolean): string[] {
    const n = this.siteNames.length;
    const k = Math.max(1, Math.ceil(this.spec.evaluation.fraction * n));
    if (final || k >= n) return [...this.siteNames];
    return Rng.from(this.spec.seed, 'evaluation', round)
      .sample(n, k)
      .map((i) => this.siteNames[i]!);
  }

  async run(): Promise<CoordinatorResult> {
    const { rounds: maxRounds, evaluation, stopping } = this.spec;
    const records: RoundRecord[] = [...(this.resume?.records ?? [])];
    let stoppedBy: CoordinatorResult['stoppedBy'] = this.resume?.stoppedBy ?? 'rounds';
    let best = this.resume?.best ?? Number.NEGATIVE_INFINITY;
    let sinceBest = this.resume?.sinceBest ?? 0;
    let last: { round: number; scores: SiteEvaluation[]; all: boolean } | undefined;
    let round = this.resume?.round ?? 0;
    // Over already, its final scores saved: nothing is asked of the sites (they may be gone).
    // (Unless the job now asks for more rounds than it ran: they are trained.)
    const over = round < maxRounds && stoppedBy === 'rounds' ? undefined : this.resume?.final;
    if (over) return { global: this.global, rounds: records, roundsCompleted: round, stoppedBy, final: over.scores, finalMissing: over.missing };
    while (round < maxRounds && stoppedBy === 'rounds') {
      round++;
      const started = performance.now();
      const { fitLoss, participants } = await this.guard(this.fitRound(round));
      const finalRound = round === maxRounds;
      let record: RoundRecord | undefined;
      if (round % evaluation.every === 0 || finalRound) {
        const sites = this.evaluators(round, false);
        const scores = await this.guard(this.evaluateRound(round, sites));
        last = { round, scores, all: sites.length === this.siteNames.length };
        record = this.record(round, scores, fitLoss, participants, performance.now() - started);
        records.push(record);
        const monitored = this.monitored(record);
        if (monitored > best) {
          best = monitored;
          sinceBest = 0;
        } else sinceBest++;
        if (stopping.target && this.reached(record, stopping.target)) stoppedBy = 'target';
        else if (stopping.patience !== undefined && sinceBest >= stopping.patience) stoppedBy = 'patience';
      }
      // The next round's model goes out while the checkpoint is written; its tasks wait for both.
      const next = round < maxRounds && stoppedBy === 'rounds' ? this.transport.prepareNext?.(round, this.global).catch(() => {}) : undefined;
      await this.guard(Promise.all([this.saveCheckpoint({ round, records, best, sinceBest, stoppedBy }), next]));
      await this.guard(this.transport.checkpointed?.(round) ?? Promise.resolve());
      this.events.roundFinished?.(record, round);
      if (round < maxRounds && stoppedBy === 'rounds' && this.pauseRequested?.()) {
        throw new OperatorError('CONSORT_C_PAUSED', `paused after round ${round} (its checkpoint is saved)`);
      }
    }
    const reuse = last && last.round === round && last.all;
    const finalSites = reuse ? this.siteNames : this.evaluators(round, true);
    const final = reuse ? last!.scores : await this.guard(this.evaluateRound(round, finalSites));
    const failed = new Map((this.lastEvaluation?.round === round ? this.lastEvaluation.failures : []).map((f) => [f.site, f]));
    const finalMissing = finalSites
      .filter((s) => !final.some((e) => e.site === s))
      .map((site) => failed.get(site) ?? { site, code: 'CONSORT_C_UNREACHABLE', reason: 'no answer' });
    // Before the transport tells the sites the job is done: a coordinator killed after that finishes from here.
    await this.guard(this.saveCheckpoint({ round, records, best, sinceBest, stoppedBy, final: { scores: final, missing: finalMissing } }));
    return { global: this.global, rounds: records, roundsCompleted: round, stoppedBy, final, finalMissing };
  }

  /** `p`, or OperatorError CONSORT_C_ABORTED as soon as the run's signal fires. */
  private guard<T>(p: Promise<T>): Promise<T> {
    const signal = this.signal;
    if (!signal) return p;
    if (signal.aborted) return Promise.reject(new OperatorError('CONSORT_C_ABORTED', 'the run was stopped'));
    return new Promise<T>((done, fail) => {
      const onAbort = () => fail(new OperatorError('CONSORT_C_ABORTED', 'the run was stopped'));
      signal.addEventListener('abort', onAbort, { once: true });
      p.then(
        (v) => {
          signal.removeEventListener('abort', onAbort);
          done(v);
        },
        (e: unknown) => {
          signal.removeEventListener('abort', onAbort);
          fail(e);
        },
      );
    });
  }

  private async saveCheckpoint(c: Pick<Checkpoint, 'round' | 'records' | 'best' | 'sinceBest' | 'stoppedBy' | 'final'>): Promise<void> {
    if (!this.checkpoints) return;
    // Each full segment of records goes apart once, before the checkpoint that counts it: the
    // checkpoint then holds fewer than RECORDS_PER_SEGMENT records, however long the job.
    const store = this.checkpoints;
    if (store.saveRecords) {
      while (c.records.length - this.archived >= RECORDS_PER_SEGMENT) {
        await store.saveRecords(this.archived / RECORDS_PER_SEGMENT, c.records.slice(this.archived, this.archived + RECORDS_PER_SEGMENT));
        this.archived += RECORDS_PER_SEGMENT;
      }
    }
    const transport = this.transportState?.();
    await store.save(
      checkpointParts({
        job: this.job,
        global: this.global,
        strategy: this.strategy.state(),
        ...c,
        ...(this.archived > 0 ? { archived: this.archived } : {}),
        ...(transport !== undefined ? { transport } : {}),
      }),
    );
  }

  private async fitRound(round: number): Promise<{ fitLoss: number; participants: string[] }> {
    const sites = await this.sample(round);
    this.events.roundStarted?.(round, sites);
    const instructions = this.strategy.configureFit(round);
    const control = this.spec.strategy.name === 'scaffold';
    // In-memory updates: one accumulator for the whole run, emptied each round (its memory is
    // faulted in once), made only when the first one comes. Stored updates: only their bounds.
    let acc: RoundAccumulator | undefined;
    let stored: StoredRound | undefined;
    const failures: SiteFailure[] = [];
    const participants: string[] = [];
    const losses: Array<{ site: string; loss: number; samples: number }> = [];
    for await (const outcome of this.transport.fit(round, sites, this.global, instructions)) {
      if (outcome.ok) {
        const r = outcome.value;
        let added: boolean;
        try {
          if (isStoredResult(r)) {
            stored ??= new StoredRound(this.global.length, { control });
            added = stored.add(r);
          } else {
            if (!acc) {
              this.accumulator ??= new RoundAccumulator(this.global.length, { control, threads: this.aggregationThreads });
              acc = this.accumulator;
              acc.reset();
            }
            added = acc.add(r);
          }
        } catch (err) {
          // Transports refuse what the aggregate cannot take; should one get through (say, the
          // sites' updates together beyond the exact range), that site fails, not the round.
          const failure = { site: r.site, code: 'CONSORT_C_AGGREGATE', reason: (err as Error).message };
          failures.push(failure);
          this.events.siteFailed?.(round, failure);
          this.events.siteAnswered?.(round, r.site, false);
          continue;
        }
        if (added) {
          // A stored update's norm is known once it is read, when the round closes.
          if (this.events.siteUpdate && !isStoredResult(r)) {
            let sq = 0;
            for (const v of r.delta) sq += v * v;
            this.events.siteUpdate(round, r.site, { samples: r.samples, trainLoss: r.trainLoss, norm: Math.sqrt(sq), staleness: r.staleness ?? 0 });
          }
          const name = participantName(round, r);
          participants.push(name);
          losses.push({ site: name, loss: r.trainLoss, samples: r.samples });
        }
        this.events.siteAnswered?.(round, r.site, true);
      } else {
        failures.push(outcome.failure);
        this.events.siteFailed?.(round, outcome.failure);
        this.events.siteAnswered?.(round, outcome.failure.site, false);
      }
    }
    this.requireQuorum(round, participants, sites, failures);
    if (stored && acc) throw new OperatorError('CONSORT_C_AGGREGATE', `round ${round}: the transport gave updates both in memory and stored`);
    if (stored) await this.aggregateStoredRound(round, stored, participants, losses, failures, sites);
    // The mean is written over the accumulator's memory (reset next round): no model-sized array more.
    else if (acc) this.global = this.strategy.aggregateFit(this.global, acc.take(round));
    else throw new RangeError(`round ${round}: no site updates to aggregate`);
    participants.sort();
    // Summed in site order, so the reported figure does not depend on arrival order either.
    const fitLoss = weightedMean(losses.sort((a, b) => (a.site < b.site ? -1 : 1)).map((l) => ({ samples: l.samples, value: l.loss })));
    return { fitLoss, participants };
  }

  private requireQuorum(round: number, participants: readonly string[], sites: readonly string[], failures: readonly SiteFailure[]): void {
    if (participants.length < this.spec.sampling.minSites) {
      const why = failures.map((f) => `${f.site}: ${f.reason}`).join('; ');
      throw new OperatorError(
        'CONSORT_C_QUORUM',
        `round ${round}: ${participants.length} of ${sites.length} sites answered, sampling.minSites is ${this.spec.sampling.minSites}${why ? ` (${why})` : ''}${sites.length < this.siteNames.length && sites.length < this.spec.sampling.minSites ? `; only ${sites.length} of the job's ${this.siteNames.length} sites were reachable when it started (${this.siteNames.filter((s) => !sites.includes(s)).join(', ')} not)` : ''}`,
      );
    }
  }

  /**
   * Aggregates a round's stored updates into the model, in place. An update that can no longer
   * be read as it was checked (its object gone or changed in the store) is left out, counted as
   * a failure of its site, and the round aggregated again without it, from the model and the
   * strategy's state as they were before: never an aggregate that mixes the two.
   */
  private async aggregateStoredRound(
    round: number,
    stored: StoredRound,
    participants: string[],
    losses: Array<{ site: string; loss: number; samples: number }>,
    failures: SiteFailure[],
    sites: readonly string[],
  ): Promise<void> {
    for (;;) {
      const entries = stored.entries();
      try {
        const { sumSquares } = await aggregateStored({
          global: this.global,
          strategy: this.strategy,
          round,
          updates: entries,
          control: stored.control,
          range: this.aggregationRange,
          threads: this.aggregationThreads,
          sumSquares: this.events.siteUpdate !== undefined,
        });
        if (sumSquares) {
          entries.forEach(({ result: r }, k) =>
            this.events.siteUpdate?.(round, r.site, {
              samples: r.samples,
              trainLoss: r.trainLoss,
              norm: Math.sqrt(sumSquares[k]!),
              staleness: r.staleness ?? 0,
            }),
          );
        }
        return;
      } catch (err) {
        if (!(err instanceof StoredAggregationError)) throw err;
        const { result: r, key } = entries[err.index]!;
        if (err.committed > 0) await this.undoStep(round, err.committed);
        stored.remove(key);
        const name = participantName(round, r);
        participants.splice(participants.indexOf(name), 1);
        losses.splice(
          losses.findIndex((l) => l.site === name),
          1,
        );
        const failure = { site: r.site, code: err.code, reason: `its stored update could not be read back: ${(err.cause as Error).message}` };
        failures.push(failure);
        this.events.siteFailed?.(round, failure);
        this.requireQuorum(round, participants, sites, failures);
      }
    }
  }

  /**
   * Puts back what a stored aggregation stepped before a read failed: the model over [0, end) as
   * it was sent for the round (the transport has it), and a strategy's own state as the last
   * checkpoint kept it (fresh before the first round).
   */
  private async undoStep(round: number, end: number): Promise<void> {
    const cannot = (why: string) => new OperatorError('CONSORT_C_AGGREGATE', `round ${round}: a partial step cannot be undone: ${why}`);
    if (!this.transport.restoreGlobal) throw cannot('the transport cannot give back the model it sent');
    await this.transport.restoreGlobal(round, this.global, end);
    const n = this.global.length;
    // State beyond the step count (the step is only counted at the end): momentum, moments, control variate.
    if (Object.keys(this.strategy.state().buffers).length === 0) return;
    if (round === 1) {
      this.strategy = createStrategy(this.spec.strategy, n, this.siteNames.length);
      return;
    }
    const saved = await this.checkpoints?.load();
    if (!saved) throw cannot('no checkpoint holds the strategy state of the round before');
    const checkpoint = decodeCheckpoint(saved);
    if (checkpoint.round !== round - 1) throw cannot(`the checkpoint is of round ${checkpoint.round}, not ${round - 1}`);
    this.strategy = createStrategy(this.spec.strategy, n, this.siteNames.length, checkpoint.strategy);
  }

  /** The latest evaluation's failures, and its round (the final report names the sites they leave out). */
  private lastEvaluation: { round: number; failures: SiteFailure[] } | undefined;

  private async evaluateRound(round: number, sites: string[]): Promise<SiteEvaluation[]> {
    const scores: SiteEvaluation[] = [];
    const failures: SiteFailure[] = [];
    this.lastEvaluation = { round, failures };
    for await (const o of this.transport.evaluate(round, sites, this.global, { trainLoss: this.spec.evaluation.trainLoss })) {
      if (o.ok) scores.push(o.value);
      else failures.push(o.failure);
    }
    if (scores.length === 0) {
      throw new OperatorError(
        'CONSORT_C_EVALUATION',
        `round ${round}: no site evaluated the global model (${failures.map((f) => `${f.site}: ${f.reason}`).join('; ')})`,
      );
    }
    // Arrival order is not part of the result.
    return scores.sort((a, b) => (a.site < b.site ? -1 : a.site > b.site ? 1 : 0));
  }

  private record(round: number, scores: SiteEvaluation[], fitLoss: number, participants: string[], durationMs: number): RoundRecord {
    const g = globalMetrics(scores);
    const trainLosses = scores.filter((s) => s.trainLoss !== undefined);
    // Weighted by the train examples each loss was computed on (the test count for an older site).
    const weightOf = (s: SiteEvaluation) => s.trainSamples ?? s.samples;
    const trainSamples = trainLosses.reduce((n, s) => n + weightOf(s), 0);
    return {
      round,
      globalLoss: g.loss,
      globalAccuracy: g.accuracy,
      ...(g.auc !== undefined ? { globalAuc: g.auc } : {}),
      ...(trainLosses.length > 0 && trainSamples > 0 ? { trainLoss: trainLosses.reduce((a, s) => a + s.trainLoss! * weightOf(s), 0) / trainSamples } : {}),
      fitLoss,
      participants,
      sites: scores.map(({ trainLoss: _t, trainSamples: _n, ...m }) => m),
      accuracySpread: spread(scores.map((s) => s.accuracy)),
      durationMs,
    };
  }

  private monitored(r: RoundRecord): number {
    const metric = this.spec.stopping.target?.metric ?? 'accuracy';
    if (metric === 'loss') return -r.globalLoss;
    if (metric === 'auc') return r.globalAuc ?? Number.NEGATIVE_INFINITY;
    return r.globalAccuracy;
  }

  private reached(r: RoundRecord, target: { metric: 'accuracy' | 'loss' | 'auc'; value: number }): boolean {
    if (target.metric === 'loss') return r.globalLoss <= target.value;
    if (target.metric === 'auc') return (r.globalAuc ?? Number.NEGATIVE_INFINITY) >= target.value;
    return r.globalAccuracy >= target.value;
  }
}

/** How a result is listed among a round's participants: a late one (buffered mode) with the round it was trained for. */
function participantName(round: number, r: { site: string; staleness?: number }): string {
  return r.staleness ? `${r.site}@r${round - r.staleness}` : r.site;
}
