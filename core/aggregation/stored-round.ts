// A round's updates that stay where the transport keeps them (for a large model: each site's
// object in its bucket), never held in memory whole. They are admitted as they arrive, from what
// the transport checked of them (sample count, max|x|), with the admission rule of a whole-model
// exact sum; when the round closes, aggregateStored reads them back a range of the model at a
// time, every update's same range in lockstep, folds each range into exact sums the size of a
// range and lets the strategy step that range of the global model in place.
//
// The sums are exact (exact-sum.ts), element by element, and their divisor is the same total
// weight: each range's means are the bits a whole-model RoundAccumulator would give, and the
// strategies' server steps are element-wise, so the model (and the strategy's state) ends in the
// same bytes as with RoundAccumulator + aggregateFit. Memory: the model, the strategy's own state,
// and per range two sums of 16 bytes an element (one without SCAFFOLD) and a few buffers.
//
// The step is made in place, range after range: a read that fails half-way (the stored object is
// gone or changed since it was checked) leaves the ranges before it stepped. aggregateStored then
// throws StoredAggregationError saying which update and how far the step went; the caller undoes
// that much (the model as it was sent for the round, the strategy's state from its checkpoint)
// and aggregates again without that update (round-coordinator.ts).
import type { RejectionCode } from '../protocol/rejections.ts';
import type { RangeAggregate, SiteFitResult, Strategy } from '../strategies/strategy.ts';
import { GROUP } from './exact-kernel.ts';
import { ExactSumBound, ExactWeightedSum } from './exact-sum.ts';
import { checkControl, checkSamples, contributionKey, contributionWeight } from './round-accumulator.ts';

/** Reads a stored update's values in model order, a range at a time. */
export interface UpdateValueReader {
  /**
   * The next delta.length values of the delta, and of the control delta into `control` when
   * given. Rejects with StoredUpdateError when the stored bytes are no longer the ones checked.
   */
  read(delta: Float32Array, control?: Float32Array): Promise<void>;
  /**
   * Optional: an end in (start, end] where this update's stored bytes end a chunk (else end). A
   * range that ends there leaves no part of a chunk to keep until the next range is read.
   */
  boundary?(start: number, end: number): number;
  close(): void;
}

/** A site's answer whose values stay in storage until the round closes. */
export interface StoredFitResult {
  site: string;
  /** Training examples used: the weight of this update in the mean. */
  samples: number;
  trainLoss: number;
  /** Buffered mode: how many rounds late this update is (0 or absent: on time). */
  staleness?: number;
  /** max|delta[i]| as checked on arrival (finite). */
  maxAbs: number;
  /** SCAFFOLD: max|controlDelta[i]|, present iff the update carries a control delta. */
  controlMaxAbs?: number;
  /** A read of its values from the first (several may be opened, one after the other). */
  open(): UpdateValueReader;
}

export function isStoredResult(r: SiteFitResult | StoredFitResult): r is StoredFitResult {
  return 'open' in r;
}

/** A stored update that can no longer be read as it was checked; `code` is the rejection catalogue's. */
export class StoredUpdateError extends Error {
  readonly code: RejectionCode;

  constructor(code: RejectionCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoredUpdateError';
    this.code = code;
  }
}

/** aggregateStored stopped at update `index`'s read, with the model stepped over [0, committed). */
export class StoredAggregationError extends Error {
  readonly index: number;
  readonly committed: number;
  readonly code: RejectionCode;

  constructor(index: number, committed: number, cause: unknown) {
    super(`stored update ${index}: ${(cause as Error).message}`, { cause });
    this.name = 'StoredAggregationError';
    this.index = index;
    this.committed = committed;
    this.code = cause instanceof StoredUpdateError ? cause.code : 'CONSORT_R_OBJECT_MISSING';
  }
}

export interface StoredEntry {
  /** The site, or `site~staleness` for a late update (buffered mode). */
  key: string;
  result: StoredFitResult;
  /** Its weight in the mean: samples, or samples / sqrt(1 + staleness) when late. */
  weight: number;
}

/** A round's stored updates, admitted as RoundAccumulator.add would fold them (same checks, messages and refusals). */
export class StoredRound {
  readonly control: boolean;
  private readonly deltas: ExactSumBound;
  private readonly controls: ExactSumBound | undefined;
  private readonly taken = new Map<string, StoredEntry>();

  constructor(modelSize: number, options: { control?: boolean } = {}) {
    this.control = options.control ?? false;
    this.deltas = new ExactSumBound(modelSize);
    this.controls = this.control ? new ExactSumBound(modelSize) : undefined;
  }

  /**
   * Takes one site's stored result. Returns false, changing nothing, when this site already
   * contributed to the round; throws RangeError, changing nothing, as RoundAccumulator.add does.
   */
  add(result: StoredFitResult): boolean {
    const key = contributionKey(result);
    if (this.taken.has(key)) return false;
    const { site, samples } = result;
    checkSamples(site, samples);
    checkControl(site, this.controls !== undefined, result.controlMaxAbs !== undefined);
    if (this.controls && result.controlMaxAbs !== undefined) this.controls.check(1, result.controlMaxAbs);
    const weight = contributionWeight(samples, result.staleness);
    try {
      this.deltas.add(weight, result.maxAbs);
    } catch (err) {
      throw new RangeError(`site "${site}": ${(err as Error).message}`, { cause: err });
    }
    if (this.controls && result.controlMaxAbs !== undefined) this.controls.add(1, result.controlMaxAbs);
    this.taken.set(key, { key, result, weight });
    return true;
  }

  /** Leaves an update out (one that could not be read back); the bounds keep it, which only makes them stricter. */
  remove(key: string): void {
    this.taken.delete(key);
  }

  /** The updates taken, by key (the order they are read in; the sums do not depend on it). */
  entries(): StoredEntry[] {
    return [...this.taken.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }
}

export interface StoredAggregation {
  /** The model, stepped in place. */
  global: Float32Array;
  strategy: Strategy;
  round: number;
  updates: readonly StoredEntry[];
  /** SCAFFOLD: the control deltas are averaged too (weight 1 each). */
  control: boolean;
  /** Parameters per range (the last range may be shorter). */
  range: number;
  /** Update ranges read ahead of the one being folded (default 4): reads and folds overlap. */
  lookahead?: number;
  /** Also sum each update's squared delta, in model order (the L2 norms of the round events). */
  sumSquares?: boolean;
  /** Threads folding each range (ExactWeightedSum's `threads`); the ranges are then read into SharedArrayBuffers. */
  threads?: number;
}

interface Slot {
  delta: Float32Array;
  control: Float32Array | undefined;
}

/**
 * Aggregates the stored updates into `global` (and the strategy's state), range by range, then
 * closes the strategy's step. Throws StoredAggregationError when an update's read fails (the
 * model then stepped over [0, committed)); other errors are thrown as they are.
 */
export async function aggregateStored(o: StoredAggregation): Promise<{ sumSquares?: Float64Array }> {
  const { global, strategy, updates } = o;
  if (updates.length === 0) throw new RangeError(`round ${o.round}: no site updates to aggregate`);
  if (!Number.isSafeInteger(o.range) || o.range < 1) throw new RangeError(`aggregateStored: bad range ${o.range}`);
  const n = global.length;
  const count = updates.length;
  // Sums and buffers of one range: a shorter range's values are padded with zeros, which add nothing.
  const width = Math.max(1, Math.min(o.range, n));
  const ahead = Math.max(1, o.lookahead ?? 4);
  const threads = o.threads ?? 1;
  // The ranges are read into the sums' own input slots (as many as reads can be under way, and a
  // batch waiting to be folded), and folded where they lie: no copy of each range into the fold's
  // scratch. A range's updates are folded GROUP at a time (each block of the sum is then read
  // and written once per GROUP updates, not once per update): the same bits, the sums are exact.
  const slots = ahead + GROUP;
  const deltas = new ExactWeightedSum(width, { threads, inputs: slots });
  const controls = o.control ? new ExactWeightedSum(width, { threads, inputs: slots }) : undefined;
  let slotsTaken = 0;
  const newSlot = (): Slot => {
    const i = slotsTaken++;
    if (i < slots) return { delta: deltas.input(i), control: controls?.input(i) };
    // Not expected (at most `ahead` reads are under way, and a batch); folded by copy, as any array.
    return { delta: new Float32Array(width), control: controls ? new Float32Array(width) : undefined };
  };
  const squares = o.sumSquares ? new Float64Array(count) : undefined;
  const readers = updates.map((u) => u.result.open());
  // Ranges end where the first update's chunks do, when they can (its peers are stored alike).
  const boundary = readers[0]?.boundary?.bind(readers[0]);
  // Each update's reads one after the other; tasks go range by range, update by update.
  const tails: Promise<unknown>[] = readers.map(() => Promise.resolve());
  const free: Slot[] = [];
  const queue: Array<{ k: number; start: number; length: number; read: Promise<Slot> }> = [];
  let rangeStart = 0;
  let rangeEnd = 0;
  let next = count; // the next task's update; count: a new range begins
  const issue = () => {
    if (next === count) {
      rangeStart = rangeEnd;
      const end = Math.min(n, rangeStart + width);
      rangeEnd = boundary ? Math.min(end, Math.max(rangeStart + 1, boundary(rangeStart, end))) : end;
      next = 0;
    }
    const k = next++;
    const length = rangeEnd - rangeStart;
    const slot = free.pop() ?? newSlot();
    const read = tails[k]!.then(async () => {
      await readers[k]!.read(slot.delta.subarray(0, length), slot.control?.subarray(0, length));
      if (length < width) {
        slot.delta.fill(0, length);
        slot.control?.fill(0, length);
      }
      return slot;
    });
    tails[k] = read.catch(() => {});
    read.catch(() => {}); // awaited in turn below; a failure ends the pass there
    queue.push({ k, start: rangeStart, length, read });
  };
  let committed = 0;
  const pending: Array<{ k: number; slot: Slot }> = [];
  const flush = () => {
    if (pending.length === 0) return;
    deltas.addAll(pending.map(({ k, slot }) => ({ values: slot.delta, weight: updates[k]!.weight })));
    if (controls) controls.addAll(pending.map(({ slot }) => ({ values: slot.control!, weight: 1 })));
    for (const p of pending) free.push(p.slot);
    pending.length = 0;
  };
  try {
    for (;;) {
      while (queue.length < ahead && !(rangeEnd >= n && next === count)) issue();
      const task = queue.shift();
      if (!task) break;
      const { k, start, length } = task;
      let slot: Slot;
      try {
        slot = await task.read;
      } catch (err) {
        throw new StoredAggregationError(k, committed, err);
      }
      if (k === 0) {
        deltas.reset();
        controls?.reset();
      }
      if (squares) {
        let sq = squares[k]!;
        const d = slot.delta;
        for (let i = 0; i < length; i++) sq += d[i]! * d[i]!;
        squares[k] = sq;
      }
      pending.push({ k, slot });
      if (pending.length === GROUP || k === count - 1) flush();
      if (k === count - 1) {
        // The means are written over the sums' own memory (reset for the next range).
        const range: RangeAggregate = {
          round: o.round,
          sites: count,
          totalSamples: deltas.totalWeight,
          start,
          meanDelta: deltas.takeMean().subarray(0, length),
        };
        if (controls) range.meanControlDelta = controls.takeMean().subarray(0, length);
        strategy.aggregateFitRange(global, range);
        committed = start + length;
      }
    }
    strategy.endRangeFit();
  } finally {
    for (const r of readers) r.close();
    // This round's sums are spent: no helper thread keeps their memory.
    deltas.release();
    controls?.release();
  }
  return squares ? { sumSquares: squares } : {};
}
