// The local runner's transport: the round loop's tasks go straight to the thread pool. Same
// interface the NATS transport implements, so the coordinator cannot tell them apart. Updates
// pass through the job's compression as they would on the wire (encoded with each site's
// error-feedback residual, decoded as the coordinator decodes them), so that a run in one
// process gives the model bytes of the same job over NATS. With a round deadline, a late update
// is dropped (sync) or folded into the next round with its staleness weight (buffered, FedBuff),
// as the NATS coordinator does. An update dropped (sync) or refused leaves its site as before its
// round, as a site over NATS takes back a refused update: its residual is not kept, and its next
// fit puts its SCAFFOLD c_i back first (`forget`). Buffered, an update too stale to fold when the
// next round takes it keeps both: over NATS the coordinator refuses it on arrival instead.
import type { CompressionSpec } from '../../core/job/federated-job.ts';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { decodeUpdate, encodeUpdate } from '../../core/protocol/codecs.ts';
import { updateValueProblem } from '../../core/protocol/ingestion.ts';
import type { FitInstructions, SiteFitResult } from '../../core/strategies/strategy.ts';
import { asCompleted, type Outcome, type SiteEvaluation, type SiteTransport } from '../../core/protocol/transport.ts';
import type { SitePool } from '../../worker/site-pool.ts';
import { WorkerError } from '../../worker/errors.ts';

export class InProcessTransport implements SiteTransport {
  private readonly pool: SitePool;
  private readonly index: Map<string, number>;
  private readonly wire: { layout: ParameterLayout; compression: CompressionSpec } | undefined;
  /** Per site, what lossy compression left out of its last update (top-k's error feedback). */
  private readonly residuals = new Map<string, Float32Array>();

  /** spec.aggregation.roundDeadlineSeconds, in ms: a site that has not answered by then fails the round, as over NATS. */
  private readonly deadlineMs: number | undefined;
  /** Buffered mode (FedBuff): how many rounds late an update may be folded; undefined in sync mode, where a late one is dropped. */
  private readonly maxStaleness: number | undefined;
  /** Updates that came after their round's deadline (buffered mode), with the round they were trained for: folded into the next round. */
  private late: Array<{ round: number; value: SiteFitResult }> = [];
  /** Per site, the round of its update left out since its last fit task: that fit's c_i change is undone by the next. */
  private readonly leftOut = new Map<string, number>();

  constructor(
    pool: SitePool,
    siteNames: readonly string[],
    wire?: { layout: ParameterLayout; compression: CompressionSpec },
    opts: { roundDeadlineSeconds?: number; buffered?: { maxStaleness: number } } = {},
  ) {
    this.pool = pool;
    this.index = new Map(siteNames.map((s, i) => [s, i]));
    this.wire = wire && wire.compression.codec !== 'none' ? wire : undefined;
    this.deadlineMs = opts.roundDeadlineSeconds !== undefined ? opts.roundDeadlineSeconds * 1000 : undefined;
    this.maxStaleness = opts.buffered?.maxStaleness;
  }

  /**
   * The answer, or CONSORT_C_DEADLINE when the round's deadline passes first (the NATS
   * coordinator's words): the site's task goes on in its thread, and its answer is dropped, or,
   * buffered, given to `onLate` to be folded later.
   */
  private inTime<T>(site: string, answer: Promise<Outcome<T>>, onLate?: (value: T) => void, onMissed?: () => void): Promise<Outcome<T>> {
    const ms = this.deadlineMs;
    if (ms === undefined) return answer;
    let timer: NodeJS.Timeout | undefined;
    let missed = false;
    const late = new Promise<Outcome<T>>((done) => {
      timer = setTimeout(() => {
        missed = true;
        onMissed?.();
        done({ ok: false, failure: { site, code: 'CONSORT_C_DEADLINE', reason: 'no answer before the round deadline' } });
      }, ms);
    });
    if (onLate) void answer.then((o) => missed && o.ok && onLate(o.value));
    return Promise.race([answer, late]).finally(() => clearTimeout(timer));
  }

  /** The late updates (buffered mode) a round at `round` folds: those at most maxStaleness rounds old, each with its staleness. */
  private lateFor(round: number): Array<Promise<Outcome<SiteFitResult>>> {
    const taken = this.late;
    this.late = [];
    return taken
      .filter((l) => round - l.round <= this.maxStaleness!)
      .map((l) => Promise.resolve({ ok: true, value: { ...l.value, staleness: round - l.round } }));
  }

  /** The update as the coordinator would have it after the wire: encoded, then decoded; and the site's residual after it, kept only if the update is taken. */
  private throughWire(r: SiteFitResult): { value: SiteFitResult; residual?: Float32Array } {
    if (!this.wire) return { value: r };
    const { layout, compression } = this.wire;
    const residual = this.residuals.get(r.site);
    const encoded = encodeUpdate(r.delta, layout, compression, { ...(residual ? { residual } : {}), ...(r.controlDelta ? { control: r.controlDelta } : {}) });
    const decoded = decodeUpdate(encoded.bytes, layout, compression.codec, { maxBytes: encoded.bytes.length, topkFraction: compression.topkFraction });
    const { controlDelta: _, ...rest } = r;
    return {
      value: { ...rest, delta: decoded.delta, ...(decoded.control ? { controlDelta: decoded.control } : {}) },
      ...(encoded.residual ? { residual: encoded.residual } : {}),
    };
  }

  private siteIndex(site: string): number {
    const i = this.index.get(site);
    if (i === undefined) throw new RangeError(`unknown site ${site}`);
    return i;
  }

  fit(round: number, sites: readonly string[], global: Float32Array, instructions: FitInstructions): AsyncIterable<Outcome<SiteFitResult>> {
    const onLate = this.maxStaleness !== undefined ? (value: SiteFitResult) => this.late.push({ round, value }) : undefined;
    return asCompleted([
      // FedBuff, as over NATS: what came after an earlier round's deadline is folded here, weighted by its staleness.
      ...(this.maxStaleness !== undefined ? this.lateFor(round) : []),
      ...sites.map((site) => {
        const forget = this.leftOut.get(site);
        this.leftOut.delete(site);
        // Sync: past the deadline the update is dropped, whenever it comes; known now, before the site's next task.
        let dropped = false;
        const missed =
          this.maxStaleness === undefined
            ? () => {
                dropped = true;
                this.leftOut.set(site, round);
              }
            : undefined;
        return this.inTime(
          site,
          this.pool
            .fit({
              round,
              siteIndex: this.siteIndex(site),
              global,
              proximalMu: instructions.proximalMu,
              ...(instructions.serverControl ? { serverControl: instructions.serverControl } : {}),
              ...(forget !== undefined ? { forget } : {}),
            })
            .then(
              (r): Outcome<SiteFitResult> => {
                try {
                  const { value, residual } = this.throughWire(r);
                  if (dropped) return failure(site, new Error('dropped: past the round deadline'));
                  // The coordinator's checks of values over NATS, here too: a run refuses alike either way.
                  const problem = updateValueProblem(value);
                  if (problem) {
                    this.leftOut.set(site, round);
                    return { ok: false, failure: { site, code: problem.code, reason: `update refused: ${problem.reason}` } };
                  }
                  if (residual) this.residuals.set(site, residual);
                  return { ok: true, value };
                } catch (err) {
                  this.leftOut.set(site, round);
                  return failure(site, err);
                }
              },
              (err: unknown): Outcome<SiteFitResult> => failure(site, err),
            ),
          onLate,
          missed,
        );
      }),
    ]);
  }

  evaluate(_round: number, sites: readonly string[], global: Float32Array, opts: { trainLoss: boolean }): AsyncIterable<Outcome<SiteEvaluation>> {
    return asCompleted(
      sites.map((site) =>
        this.inTime(
          site,
          this.pool.evaluate({ siteIndex: this.siteIndex(site), global, trainLoss: opts.trainLoss }).then(
            (r): Outcome<SiteEvaluation> => ({ ok: true, value: r }),
            (err: unknown): Outcome<SiteEvaluation> => failure(site, err),
          ),
        ),
      ),
    );
  }
}

function failure<T>(site: string, err: unknown): Outcome<T> {
  const code = err instanceof WorkerError ? err.code : 'CONSORT_W_TRAIN';
  return { ok: false, failure: { site, code, reason: err instanceof Error ? err.message : String(err) } };
}
