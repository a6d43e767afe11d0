// A streaming weighted sum whose state does not depend on the order updates arrive in, so that
// "same seed, same model bytes" holds however the network interleaves the sites.
//
// Each contribution q = weight * x (one float64 product, a function of the update alone) is
// rounded to the grid 2^-60 (ties to even) and added exactly. An element keeps the sum in
// fixed point as two int64 integers:
//   H in units of 2^-8:  H += round(q 2^8), the nearest multiple of 2^-8
//   L in units of 2^-60: L += round((q - that multiple) 2^60), at most 2^51 in magnitude
// Integer addition is exact, associative and commutative (int64 wraps, but the true values stay
// far inside the range: see the bounds below), so any arrival order, and any split into partial
// sums merged in any order, gives the same sums. Both roundings are one float64 addition of a
// constant whose ulp is the grid, read as an integer (exact-kernel.ts), so the fold is a handful
// of WebAssembly SIMD operations per element, block by block (the state of a block stays in
// cache while one or several updates are folded into it).
//
// Bounds, enforced rather than assumed: every update has weight * max|x| <= 2^43 (where the split
// is exact; max|x| is checked block by block before the block is folded, and a refused update's
// blocks already folded are folded again with -weight, which takes out exactly what went in), and
// the accumulator keeps M = Sum weight * max|x| (exactly, in the same fixed point), refusing an
// update that would take M, or the total weight, to 2^44: then |H| < 2^53 always. L grows by at
// most 2^51 per update; every 1024 updates (and before any read) its multiples of 2^52 are carried
// into H, leaving the canonical pair: L in [0, 2^52), which is unique. As floats, (hi, lo) =
// (H 2^-8, L 2^-60) are exact, hi a multiple of 2^-8 below 2^45 and lo in [0, 2^-8): the
// representation snapshots use, and the same as the float64 pairs this sum used to keep, so the
// sums are those of before but for contributions exactly halfway between two multiples of 2^-60,
// now rounded to even. Whether a set of updates is refused does not depend on order either (M
// only grows, and its final value is order-free).
//
// Accuracy: each contribution loses at most 2^-61 to the grid, so mean() is within
// count * 2^-61 / totalWeight of the exact weighted mean of the float32 inputs (plus the
// roundings of each product w*x, of hi + lo and of the final division). With weights that are
// sample counts (>= 1) that is at most 2^-61 absolute. Tiny weights (say 1e-6) on tiny values
// would lose relative precision, hence the 2^-20 floor on weights.
//
// Memory: 16 bytes per element (four times a float32 model), in WebAssembly linear memories of up
// to 4 GiB each (one per 268M elements); reset() empties the sum for another round without new
// memory, whose page faults would cost more than the folds.
import { type BlockFoldJob, groupPointers, LARGEST_FLOAT32 } from './block-folds.ts';
import { BLOCK, type FoldKernel, GROUP, type InputReading, SHARD_ELEMENTS, Shard } from './exact-kernel.ts';
import { allShared, foldPool } from './fold-pool.ts';

/** Largest admissible M and total weight: |hi| then stays below 2^44 + 2^-8 * count, far under 2^53 * 2^-8. */
const MAGNITUDE_LIMIT = 2 ** 44;
/** Largest weight * max|x| of one update: where the split at 2^-8 is exact. */
const UPDATE_LIMIT = 2 ** 43;
/** Smallest weight: its rounding to the 2^-60 grid then costs it at most 2^-40 relative. */
const MIN_WEIGHT = 2 ** -20;
/** Updates folded between two carries of L into H: each adds at most 2^51 to |L|, which must stay below 2^63. */
const CARRY_EVERY = 1024;
/** Blocks each thread must have for a fold to be shared out (below, the messages cost more than they save). */
const MIN_BLOCKS_PER_THREAD = 4;
let shardKeys = 0;

/** Batches folded from input slots, where they lie (tests: the slots were used, not copied from). */
export const slotFolds = { batches: 0 };

/** A checkpointable copy of an ExactWeightedSum's state. */
export interface ExactSumSnapshot {
  /** Per element, multiples of 2^-8. */
  hi: Float64Array;
  /** Per element, multiples of 2^-60 in [0, 2^-8). */
  lo: Float64Array;
  /** [hi, lo] of the total weight, same representation. */
  weight: Float64Array;
  /** [hi, lo] of Sum weight * max|x|, the bound on |hi|. */
  magnitude: Float64Array;
  count: number;
}

/** One update of a batch: values, weight. */
export interface WeightedValues {
  values: Float32Array;
  weight: number;
}

/** round(x 2^60), ties to even, exactly (x finite). */
function toFixed60(x: number): bigint {
  const s = x * 2 ** 60;
  if (Math.abs(s) >= 2 ** 52) return BigInt(s);
  const f = Math.floor(s);
  const frac = s - f;
  return BigInt(frac > 0.5 || (frac === 0.5 && f % 2 !== 0) ? f + 1 : f);
}

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/**
 * The values one update of this weight may hold: |x| below the largest float32 `limit` with
 * weight * limit <= 2^43, where the fold's split is exact.
 */
function valueLimit(weight: number): number {
  F32[0] = UPDATE_LIMIT / weight;
  while (F32[0]! * weight > UPDATE_LIMIT) U32[0] = U32[0]! - 1;
  return F32[0]!;
}

/** The canonical (hi, lo) of a fixed-point value in units of 2^-60. */
function pairOf(v: bigint): Float64Array {
  const h = v >> 52n;
  return new Float64Array([Number(h) * 2 ** -8, Number(v - (h << 52n)) * 2 ** -60]);
}

function fromPair(pair: Float64Array): bigint {
  return (BigInt(pair[0]! * 2 ** 8) << 52n) + BigInt(pair[1]! * 2 ** 60);
}

/** The same double as hi + lo of the canonical pair: the correctly rounded value. */
function nearestDouble(v: bigint): number {
  const [hi, lo] = pairOf(v);
  return hi! + lo!;
}

export class ExactWeightedSum {
  readonly size: number;
  private readonly shards: Shard[];
  /** Total weight and M, in units of 2^-60. */
  private weight = 0n;
  private magnitude = 0n;
  private n = 0;
  /** Updates folded since L was last carried into H. */
  private uncarried = 0;
  /** takeMean() wrote over the state: only reset() may follow. */
  private spent = false;
  /** Threads that fold at once (this one and helpers), and each shard's key for them. */
  readonly threads: number;
  private readonly keys: number[];

  /**
   * `shardElements` is for tests (several shards on a small model), and so are `kernel` (the
   * fused fold kernel where the engine has it, else the plain one: the same bits) and `reading`
   * (how the kernels read float32 inputs: the process's choice by default, the same bits). `threads` > 1:
   * updates held in SharedArrayBuffers are folded by that many threads at once, each a run of
   * blocks (fold-pool.ts); the same bits as one thread.
   */
  constructor(size: number, opts: { shardElements?: number; kernel?: FoldKernel; reading?: InputReading; threads?: number; inputs?: number } = {}) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`ExactWeightedSum: bad size ${size}`);
    const per = opts.shardElements ?? SHARD_ELEMENTS;
    if (!Number.isSafeInteger(per) || per < BLOCK || per % BLOCK !== 0) throw new RangeError(`ExactWeightedSum: bad shard size ${per}`);
    const threads = opts.threads ?? 1;
    if (!Number.isInteger(threads) || threads < 1 || threads > 64) throw new RangeError(`ExactWeightedSum: bad thread count ${threads}`);
    this.size = size;
    this.threads = threads;
    this.shards = [];
    const inputs = opts.inputs ?? 0;
    if (inputs > 0 && size > per) throw new RangeError(`ExactWeightedSum: input slots need a sum of one shard (${size} elements is more than ${per})`);
    for (let start = 0; start < size; start += per)
      this.shards.push(new Shard(start, Math.min(per, size - start), opts.kernel, { threads, inputs, reading: opts.reading }));
    this.keys = this.shards.map(() => ++shardKeys);
  }

  /**
   * Input slot i (of the `inputs` asked for): an update written here, whole, is folded where it
   * lies, with no copy (a reader that fills it, such as a stored round's, saves that pass).
   */
  input(i: number): Float32Array {
    const shard = this.shards[0];
    if (!shard) throw new RangeError('ExactWeightedSum.input: an empty sum has no input slots');
    return shard.inputView(i);
  }

  /**
   * What both ways of folding a batch start from: each weight admitted with its value limit, the
   * total weight after the batch, the groups of at most GROUP updates (as even as can be: 10 is 4,
   * 3, 3) and, when every update lies in an input slot, their addresses.
   */
  private batchOf(updates: readonly WeightedValues[]) {
    const checked = updates.map((u) => this.admitShape(u.values, u.weight));
    let weight = this.weight;
    for (const w of checked) weight += toFixed60(w);
    const groups = Math.ceil(updates.length / GROUP);
    const bounds = Array.from({ length: groups + 1 }, (_, g) => Math.floor((g * updates.length) / groups));
    const pointers = this.slotAddresses(updates);
    if (pointers) slotFolds.batches++;
    return { checked, limits: checked.map(valueLimit), weight, groups, bounds, pointers };
  }

  /** The updates' addresses when every one is an input slot of this (one-shard) sum; else undefined. */
  private slotAddresses(updates: readonly WeightedValues[]): number[] | undefined {
    const shard = this.shards.length === 1 ? this.shards[0]! : undefined;
    if (!shard || shard.inputs === 0) return undefined;
    const addresses: number[] = [];
    for (const u of updates) {
      const a = shard.inputAddress(u.values);
      if (a === undefined) return undefined;
      addresses.push(a);
    }
    return addresses;
  }

  /** Updates folded in (merges included). */
  get count(): number {
    return this.n;
  }

  /** Sum of the weights (each rounded to 2^-60, then summed exactly). */
  get totalWeight(): number {
    return nearestDouble(this.weight);
  }

  /**
   * Folds weight * values in. Throws RangeError, leaving the state untouched, when the length
   * differs from size, the weight is not finite or below 2^-20, a value is NaN or infinite,
   * or the update would break the exactness bound. Callers should reject NaN/Inf updates
   * themselves, with a message that names the site; the check here is the last line.
   */
  add(values: Float32Array, weight: number): void {
    this.addAll([{ values, weight }]);
  }

  /**
   * Folds several updates at once, block by block: each block of state stays in cache while every
   * update is folded into it, GROUP updates per pass over it (its state read and written once for
   * them). The same state as adding them one by one, in any order: prefer it to add() when
   * several updates are at hand. All or nothing: when one is refused (as add would refuse it),
   * none is folded in.
   */
  addAll(updates: readonly WeightedValues[]): void {
    this.requireLive();
    if (this.threads > 1 && updates.length > 0 && updates.length <= CARRY_EVERY && allShared(updates.map((u) => u.values))) {
      const blocks = Math.max(0, ...this.shards.map((s) => Math.ceil(s.length / BLOCK)));
      if (blocks >= 2 * MIN_BLOCKS_PER_THREAD) {
        this.addAllThreaded(updates);
        return;
      }
    }
    const { checked, limits, weight, groups, bounds, pointers } = this.batchOf(updates);
    // Per update: the largest |x| seen so far; M grows by weight * that, checked block by block
    // (magnitude: M with every update's current weight * max|x|, kept as they grow).
    const maxAbs = updates.map(() => 0);
    let magnitude = this.magnitude;
    const groupWeights = Array.from({ length: groups }, (_, g) => checked.slice(bounds[g]!, bounds[g + 1]!));
    const done: Array<{ shard: Shard; at: number; count: number; g: number }> = [];
    try {
      for (const shard of this.shards) {
        for (let at = 0; at < shard.length; at += BLOCK) {
          const count = Math.min(BLOCK, shard.length - at);
          for (let g = 0; g < groups; g++) {
            const [first, end] = [bounds[g]!, bounds[g + 1]!];
            for (let k = first; k < end; k++) {
              // Each block is checked (copied in, then scanned in cache; or scanned where it lies) before it is folded.
              const m = pointers ? shard.scanAt(pointers[k]! + 4 * at, count) : shard.stage(updates[k]!.values, shard.start + at, count, k - first);
              if (!(m <= LARGEST_FLOAT32)) throw new RangeError('ExactWeightedSum.add: update contains NaN or Infinity');
              if (m > maxAbs[k]!) {
                // Only update k's bound changed: the others passed when theirs last grew.
                magnitude += toFixed60(checked[k]! * m) - toFixed60(checked[k]! * maxAbs[k]!);
                maxAbs[k] = m;
                this.checkGrowth(checked[k]!, limits[k]!, m, weight, magnitude);
              }
            }
            if (pointers) shard.foldSlots(groupPointers(pointers, bounds, g, at), count, at, groupWeights[g]!);
            else shard.foldStaged(count, at, groupWeights[g]!);
            done.push({ shard, at, count, g });
          }
        }
      }
    } catch (err) {
      // Folding -w x subtracts exactly what w x added (rounding to even is symmetric).
      const negated = groupWeights.map((ws) => ws.map((w) => -w));
      for (const { shard, at, count, g } of done) {
        if (pointers) {
          shard.foldSlots(groupPointers(pointers, bounds, g, at), count, at, negated[g]!);
          continue;
        }
        for (let k = bounds[g]!; k < bounds[g + 1]!; k++) shard.stage(updates[k]!.values, shard.start + at, count, k - bounds[g]!);
        shard.foldStaged(count, at, negated[g]!);
      }
      throw err;
    }
    // An empty model still checks the weights.
    if (this.shards.length === 0) this.checkMagnitude(checked, limits, maxAbs, weight);
    this.magnitude = magnitude;
    this.weight = weight;
    this.n += updates.length;
    this.uncarried += updates.length;
    if (this.uncarried >= CARRY_EVERY) this.carry();
  }

  /**
   * addAll by several threads: each shard's blocks in runs, one per thread, folded at once.
   * What one thread checks before each block, each thread checks before each of its blocks; a
   * run that meets a value it may not fold stops there, and then every fold made is taken out
   * (exactly: int64 sums wrap, and folding -w x subtracts what w x added), so a refused batch
   * leaves the state as it was, as addAll's does. The bounds on the totals are checked on the
   * final max|x| of each update: M only grows, so they fail iff they would have failed on the
   * way (the figure in the message may differ).
   */
  private addAllThreaded(updates: readonly WeightedValues[]): void {
    const { checked, limits, weight, groups, bounds, pointers } = this.batchOf(updates);
    const inputs = updates.map((u) => u.values);
    const pool = foldPool();
    const maxAbs = updates.map(() => 0);
    const done: Array<{ shard: Shard; key: number; jobs: BlockFoldJob[]; folded: number[] }> = [];
    let stopped: { update: number; kind: 'not-finite' | 'beyond-range'; maxAbs: number } | undefined;
    try {
      for (const [i, shard] of this.shards.entries()) {
        const blocks = Math.ceil(shard.length / BLOCK);
        const threads = Math.max(1, Math.min(this.threads, Math.floor(blocks / MIN_BLOCKS_PER_THREAD)));
        const jobs = Array.from({ length: threads }, (_, t) => ({
          inputs,
          weights: checked,
          limits,
          bounds,
          from: Math.floor((t * blocks) / threads),
          to: Math.floor(((t + 1) * blocks) / threads),
          ...(pointers ? { pointers } : {}),
        }));
        // Room for the folds and, should the batch be refused, as many that take them out.
        shard.makeRoom(2 * updates.length);
        const outcomes = pool.run('fold', shard, this.keys[i]!, jobs);
        done.push({ shard, key: this.keys[i]!, jobs, folded: outcomes.map((o) => o.folded) });
        for (const o of outcomes) {
          o.maxAbs.forEach((m, k) => (maxAbs[k] = Math.max(maxAbs[k]!, m)));
          if (o.stopped && (!stopped || (o.stopped.kind === 'not-finite' && stopped.kind !== 'not-finite'))) stopped = o.stopped;
        }
        if (stopped) break;
      }
      if (stopped?.kind === 'not-finite') throw new RangeError('ExactWeightedSum.add: update contains NaN or Infinity');
      if (stopped) this.checkGrowth(checked[stopped.update]!, limits[stopped.update]!, stopped.maxAbs, weight, this.magnitude);
      // As addAll: the totals are checked once some update holds a value other than 0 (or the model is empty).
      if (maxAbs.some((m) => m > 0)) this.checkMagnitude(checked, limits, maxAbs, weight);
    } catch (err) {
      for (const d of done) {
        pool.run('unfold', d.shard, d.key, d.jobs, d.folded);
        // Each fold and its undoing left the kernel's constants in the block: counted, to be taken out.
        d.jobs.forEach((job, t) => {
          let left = d.folded[t]!;
          for (let b = job.from; b < job.to && left > 0; b++) {
            for (let g = 0; g < groups && left > 0; g++, left--) d.shard.accountBlockFolds(b, 2 * (bounds[g + 1]! - bounds[g]!));
          }
        });
      }
      throw err;
    }
    for (const d of done) d.shard.accountFolds(updates.length);
    this.magnitude = this.magnitudeWith(checked, maxAbs);
    this.weight = weight;
    this.n += updates.length;
    this.uncarried += updates.length;
    if (this.uncarried >= CARRY_EVERY) this.carry();
  }

  /** Throws exactly what add(values, weight) would throw, and changes nothing. */
  check(values: Float32Array, weight: number): void {
    this.requireLive();
    const w = this.admitShape(values, weight);
    let maxAbs = 0;
    for (const shard of this.shards) {
      for (let at = 0; at < shard.length; at += BLOCK) {
        const m = shard.scan(values, shard.start + at, Math.min(BLOCK, shard.length - at));
        if (!(m <= LARGEST_FLOAT32)) throw new RangeError('ExactWeightedSum.add: update contains NaN or Infinity');
        maxAbs = Math.max(maxAbs, m);
      }
    }
    this.checkMagnitude([w], [valueLimit(w)], [maxAbs], this.weight + toFixed60(w));
  }

  /** Folds another partial sum in, exactly: partial sums merge to the same bits in any order. */
  merge(other: ExactWeightedSum): void {
    this.requireLive();
    other.requireLive();
    if (other === this) throw new RangeError('ExactWeightedSum.merge: cannot merge a sum into itself');
    if (other.size !== this.size || other.shards.length !== this.shards.length || other.shards.some((s, i) => s.length !== this.shards[i]!.length)) {
      throw new RangeError(`ExactWeightedSum.merge: size ${other.size} differs from ${this.size}`);
    }
    const weight = this.weight + other.weight;
    const magnitude = this.magnitude + other.magnitude;
    checkLimit('total weight', weight);
    checkLimit('Sum weight*max|x|', magnitude);
    // Both below CARRY_EVERY uncarried updates: the sum stays below 2^63 in L.
    this.shards.forEach((s, i) => s.addLanes(other.shards[i]!));
    this.weight = weight;
    this.magnitude = magnitude;
    this.n += other.n;
    this.uncarried += other.uncarried;
    if (this.uncarried >= CARRY_EVERY) this.carry();
  }

  /**
   * Done with for now: helper threads drop their views of this sum's memory, which is then freed
   * with the sum (a later fold by several threads attaches again).
   */
  release(): void {
    if (this.threads > 1) foldPool().forget(this.keys);
  }

  /** Back to no update at all, keeping the memory (a new sum's memory costs page faults on first use). */
  reset(): void {
    this.spent = false;
    for (const s of this.shards) s.reset();
    this.weight = 0n;
    this.magnitude = 0n;
    this.n = 0;
    this.uncarried = 0;
  }

  /** Sum_k w_k x_k per element, rounded once to float64 (into `out` when given). */
  sum(out?: Float64Array): Float64Array {
    return this.quotient(1, out);
  }

  /** Sum_k w_k x_k / Sum_k w_k per element (into `out` when given). Throws when nothing was added. */
  mean(out?: Float64Array): Float64Array {
    if (this.n === 0) throw new RangeError('ExactWeightedSum.mean: no updates');
    return this.quotient(this.totalWeight, out);
  }

  /**
   * mean(), computed over the sum's own memory when it is one shard (no new array: the largest
   * buffer of a round saved). The sum is spent: reset() before anything else.
   */
  takeMean(): Float64Array {
    if (this.n === 0) throw new RangeError('ExactWeightedSum.mean: no updates');
    if (this.shards.length !== 1) return this.mean();
    this.carry();
    this.spent = true;
    return this.shards[0]!.quotientInPlace(this.totalWeight);
  }

  snapshot(): ExactSumSnapshot {
    this.requireLive();
    this.carry();
    const hi = new Float64Array(this.size);
    const lo = new Float64Array(this.size);
    for (const s of this.shards) s.toPairs(hi, lo);
    return { hi, lo, weight: pairOf(this.weight), magnitude: pairOf(this.magnitude), count: this.n };
  }

  /** Restores a snapshot; throws RangeError when it is not a canonical state. */
  static fromSnapshot(s: ExactSumSnapshot, opts: { shardElements?: number; kernel?: FoldKernel; reading?: InputReading } = {}): ExactWeightedSum {
    const size = s.hi.length;
    if (s.lo.length !== size || s.weight.length !== 2 || s.magnitude.length !== 2) {
      throw new RangeError('ExactWeightedSum.fromSnapshot: arrays have inconsistent lengths');
    }
    if (!Number.isSafeInteger(s.count) || s.count < 0) {
      throw new RangeError(`ExactWeightedSum.fromSnapshot: bad count ${s.count}`);
    }
    const canonical = (h: number, l: number): boolean =>
      Math.abs(h) < 2 ** 45 && Math.floor(h * 2 ** 8) === h * 2 ** 8 && l >= 0 && l < 2 ** -8 && Math.floor(l * 2 ** 60) === l * 2 ** 60;
    for (let i = 0; i < size; i++) {
      if (!canonical(s.hi[i]!, s.lo[i]!)) throw new RangeError(`ExactWeightedSum.fromSnapshot: element ${i} is not canonical`);
    }
    if (!canonical(s.weight[0]!, s.weight[1]!) || !canonical(s.magnitude[0]!, s.magnitude[1]!)) {
      throw new RangeError('ExactWeightedSum.fromSnapshot: weight or magnitude is not canonical');
    }
    const sum = new ExactWeightedSum(size, opts);
    for (const shard of sum.shards) shard.fromPairs(s.hi, s.lo);
    sum.weight = fromPair(s.weight);
    sum.magnitude = fromPair(s.magnitude);
    sum.n = s.count;
    return sum;
  }

  private requireLive(): void {
    if (this.spent) throw new RangeError('ExactWeightedSum: its mean was taken over its state (takeMean): reset() it first');
  }

  /** Carries L into H everywhere, leaving the canonical pair. */
  private carry(): void {
    for (const s of this.shards) s.normalize();
    this.uncarried = 0;
  }

  private quotient(divisor: number, into?: Float64Array): Float64Array {
    this.requireLive();
    if (into && into.length !== this.size) throw new RangeError(`ExactWeightedSum: an output of ${into.length} values for ${this.size}`);
    this.carry();
    const out = into ?? new Float64Array(this.size);
    for (const s of this.shards) s.quotient(out, divisor);
    return out;
  }

  /** Validates length and weight; returns the weight. */
  private admitShape(values: Float32Array, weight: number): number {
    if (values.length !== this.size) {
      throw new RangeError(`ExactWeightedSum.add: update has ${values.length} values, expected ${this.size}`);
    }
    return admitWeight(weight);
  }

  private magnitudeWith(weights: readonly number[], maxAbs: readonly number[]): bigint {
    let m = this.magnitude;
    for (let k = 0; k < weights.length; k++) m += toFixed60(weights[k]! * maxAbs[k]!);
    return m;
  }

  /** checkMagnitude where one update's max|x| grew to maxAbs: the magnitude M would reach is given. */
  private checkGrowth(w: number, limit: number, maxAbs: number, weight: bigint, magnitude: bigint): void {
    if (!(maxAbs < limit)) throw new RangeError(`ExactWeightedSum: weight*max|x| of ${w * maxAbs} is beyond the exact range 2^43 of one update`);
    checkLimit('total weight', weight);
    checkLimit('Sum weight*max|x|', magnitude);
  }

  private checkMagnitude(weights: readonly number[], limits: readonly number[], maxAbs: readonly number[], weight: bigint): void {
    for (let k = 0; k < weights.length; k++) {
      if (!(maxAbs[k]! < limits[k]!)) {
        throw new RangeError(`ExactWeightedSum: weight*max|x| of ${weights[k]! * maxAbs[k]!} is beyond the exact range 2^43 of one update`);
      }
    }
    checkLimit('total weight', weight);
    checkLimit('Sum weight*max|x|', this.magnitudeWith(weights, maxAbs));
  }
}

function checkLimit(what: string, v: bigint): void {
  const x = nearestDouble(v);
  if (!(x < MAGNITUDE_LIMIT)) throw new RangeError(`ExactWeightedSum: ${what} would reach ${x}, beyond the exact range 2^44`);
}

/**
 * ExactWeightedSum's admission rule without the values: whether a whole-model sum would take an
 * update, judged from its weight and max|x| alone, in arrival order. An aggregation that folds the
 * updates later, range by range into sums of a range each (stored-round.ts), admits with this
 * first, so that it refuses exactly the updates a whole-model sum would have refused: that sum
 * checks a running max|x| block by block, and refuses at some block iff the final max|x| fails
 * the same check (M only grows). Only the figure quoted in the message may differ.
 */
export class ExactSumBound {
  readonly size: number;
  /** Total weight and M, in units of 2^-60, as ExactWeightedSum keeps them. */
  private weight = 0n;
  private magnitude = 0n;

  constructor(size: number) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`ExactSumBound: bad size ${size}`);
    this.size = size;
  }

  /** Throws what ExactWeightedSum.check(values, weight) throws for values of this max|x|, and changes nothing. */
  check(weight: number, maxAbs: number): void {
    const w = admitWeight(weight);
    if (!(maxAbs <= LARGEST_FLOAT32)) throw new RangeError('ExactWeightedSum.add: update contains NaN or Infinity');
    this.checkOne(w, maxAbs);
  }

  /** What ExactWeightedSum.add(values, weight) does to the bounds for values of this max|x|: throws as it would, or counts the update. */
  add(weight: number, maxAbs: number): void {
    const w = admitWeight(weight);
    if (!(maxAbs <= LARGEST_FLOAT32)) throw new RangeError('ExactWeightedSum.add: update contains NaN or Infinity');
    // add() checks the bounds when a block raises the running max|x| above 0 (or the model is
    // empty): an update of zeros is taken without a look at the total weight.
    if (maxAbs > 0 || this.size === 0) this.checkOne(w, maxAbs);
    this.weight += toFixed60(w);
    this.magnitude += toFixed60(w * maxAbs);
  }

  private checkOne(w: number, maxAbs: number): void {
    if (!(maxAbs < valueLimit(w))) throw new RangeError(`ExactWeightedSum: weight*max|x| of ${w * maxAbs} is beyond the exact range 2^43 of one update`);
    checkLimit('total weight', this.weight + toFixed60(w));
    checkLimit('Sum weight*max|x|', this.magnitude + toFixed60(w * maxAbs));
  }
}

function admitWeight(weight: number): number {
  if (!(weight >= MIN_WEIGHT && weight < Infinity)) throw new RangeError(`ExactWeightedSum.add: weight must be finite and >= 2^-20, got ${weight}`);
  return weight;
}
