// The coordinator's view of the sites, whatever carries the messages: the local runner's
// in-process pool now, NATS next. The round loop is written against this interface only.
import type { StoredFitResult } from '../aggregation/stored-round.ts';
import type { FitInstructions, SiteFitResult } from '../strategies/strategy.ts';
import type { SiteMetrics } from '../report/run-report.ts';

export interface SiteEvaluation extends SiteMetrics {
  /** Loss of the evaluated model on the site's train split, when asked for. */
  trainLoss?: number;
  /** Train examples that loss was computed on (its weight in the global figure). */
  trainSamples?: number;
}

/** A site that did not answer usefully: it timed out, failed, or sent something rejected. */
export interface SiteFailure {
  site: string;
  reason: string;
  /** A stable code from the catalogue of whoever detected it. */
  code: string;
}

export type Outcome<T> = { ok: true; value: T } | { ok: false; failure: SiteFailure };

export interface SiteTransport {
  /** Sites that can be asked now (joined and alive); absent: every site of the job. */
  available?(): Promise<string[]>;
  /**
   * Sends round `round`'s fit task to each named site; yields each answer as it arrives, its
   * values in memory or, for a model too large to hold them, stored (read when the round closes;
   * one kind per round).
   */
  fit(round: number, sites: readonly string[], global: Float32Array, instructions: FitInstructions): AsyncIterable<Outcome<SiteFitResult | StoredFitResult>>;
  /**
   * Stored updates: writes values [0, end) of the model as it was sent for round `round` into
   * `into` (to undo a step begun in place). Not needed by a transport whose updates are in memory.
   */
  restoreGlobal?(round: number, into: Float32Array, end: number): Promise<void>;
  /** Asks each named site to score `global` on its test split; yields each answer as it arrives. */
  evaluate(round: number, sites: readonly string[], global: Float32Array, opts: { trainLoss: boolean }): AsyncIterable<Outcome<SiteEvaluation>>;
  /**
   * Gets `global`, the model after round `round`, ready for the next round's fit tasks (say, stored
   * where the sites will read it), while the round loop writes its checkpoint; nothing reaches a
   * site before fit is called. A failure here is fit's to report.
   */
  prepareNext?(round: number, global: Float32Array): Promise<void>;
  /**
   * Round `round`'s checkpoint and the next round's model are saved, and no task of the next round
   * has gone out: what the transport stored for earlier rounds may be let go. Never rejects.
   */
  checkpointed?(round: number): Promise<void>;
}

/** Yields promises' values in the order they settle (the order answers arrive). */
export async function* asCompleted<T>(promises: readonly Promise<T>[]): AsyncGenerator<T> {
  const pending = new Map<number, Promise<{ i: number; v: T }>>();
  promises.forEach((p, i) =>
    pending.set(
      i,
      p.then((v) => ({ i, v })),
    ),
  );
  while (pending.size > 0) {
    const { i, v } = await Promise.race(pending.values());
    pending.delete(i);
    yield v;
  }
}
