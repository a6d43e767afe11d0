// The local runner's transport: the round loop's tasks go straight to the thread pool. Same
// interface the NATS transport implements, so the coordinator cannot tell them apart.
import type { FitInstructions, SiteFitResult } from '../../core/strategies/strategy.ts';
import { asCompleted, type Outcome, type SiteEvaluation, type SiteTransport } from '../../core/protocol/transport.ts';
import type { SitePool } from '../../worker/site-pool.ts';
import { WorkerError } from '../../worker/errors.ts';

export class InProcessTransport implements SiteTransport {
  private readonly pool: SitePool;
  private readonly index: Map<string, number>;

  constructor(pool: SitePool, siteNames: readonly string[]) {
    this.pool = pool;
    this.index = new Map(siteNames.map((s, i) => [s, i]));
  }

  private siteIndex(site: string): number {
    const i = this.index.get(site);
    if (i === undefined) throw new RangeError(`unknown site ${site}`);
    return i;
  }

  fit(round: number, sites: readonly string[], global: Float32Array, instructions: FitInstructions): AsyncIterable<Outcome<SiteFitResult>> {
    return asCompleted(
      sites.map((site) =>
        this.pool
          .fit({
            round,
            siteIndex: this.siteIndex(site),
            global,
            proximalMu: instructions.proximalMu,
            ...(instructions.serverControl ? { serverControl: instructions.serverControl } : {}),
          })
          .then(
            (r): Outcome<SiteFitResult> => ({ ok: true, value: r }),
            (err: unknown): Outcome<SiteFitResult> => failure(site, err),
          ),
      ),
    );
  }

  evaluate(_round: number, sites: readonly string[], global: Float32Array, opts: { trainLoss: boolean }): AsyncIterable<Outcome<SiteEvaluation>> {
    return asCompleted(
      sites.map((site) =>
        this.pool.evaluate({ siteIndex: this.siteIndex(site), global, trainLoss: opts.trainLoss }).then(
          (r): Outcome<SiteEvaluation> => ({ ok: true, value: r }),
          (err: unknown): Outcome<SiteEvaluation> => failure(site, err),
        ),
      ),
    );
  }
}

function failure<T>(site: string, err: unknown): Outcome<T> {
  const code = err instanceof WorkerError ? err.code : 'CONSORT_W_TRAIN';
  return { ok: false, failure: { site, code, reason: err instanceof Error ? err.message : String(err) } };
}
