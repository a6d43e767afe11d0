// A streaming weighted sum whose state does not depend on the order updates arrive in, so that
// "same seed, same model bytes" holds however the network interleaves the sites.
//
// Each element keeps the exact sum of its contributions in fixed point, as two float64 words:
//   hi: a multiple of 2^-8,   lo: a multiple of 2^-60 in [0, 2^-8).
// A contribution q = weight * x (one float64 product, a function of the update alone) is
// rounded to the grid 2^-60 as floor(q 2^60 + 0.5) 2^-60: within one grid step of q, a no-op
// for |q| >= 2^-7 (whose ulp is already <= 2^-59), and ~3x faster than Math.round in V8.
// It is then split into qh = floor(q 2^8) 2^-8 and ql = q - qh in [0, 2^-8); lo takes ql
// and hands its whole 2^-8 part to hi as a carry. Every one of those operations is exact as
// long as |hi| < 2^45 (a multiple of 2^-8 below 2^45 needs at most 53 bits; lo needs at most
// 53 bits below 2^-7), and (hi, lo) with lo in [0, 2^-8) is the unique representation of the
// exact sum of the rounded contributions. Exact addition is associative and commutative, so
// any arrival order, and any split into partial sums merged in any order, gives the same bits.
//
// The bound is enforced, not assumed: the accumulator keeps (exactly, in the same fixed point)
// M = Sum weight * max|x| over its updates, an upper bound of every |hi|, and refuses an update
// that would take M (or the total weight) to 2^44 or more. Whether a set of updates is refused
// therefore does not depend on order either (M only grows, and its final value is order-free).
//
// Accuracy: each contribution loses at most 2^-60 to the grid, so mean() is within
// count * 2^-60 / totalWeight of the exact weighted mean of the float32 inputs (plus the
// roundings of each product w*x and of the final division). With weights that are sample
// counts (>= 1) that is at most 2^-60 absolute. Tiny weights (say 1e-6) on tiny values would
// lose relative precision, hence the 2^-20 floor on weights.

const TWO60 = 2 ** 60;
const INV60 = 2 ** -60;
const TWO8 = 2 ** 8;
const INV8 = 2 ** -8;
/** Largest admissible bound on |hi| (half of the 2^45 exactness limit, for margin). */
const MAGNITUDE_LIMIT = 2 ** 44;
/** Smallest weight: its rounding to the 2^-60 grid then costs it at most 2^-40 relative. */
const MIN_WEIGHT = 2 ** -20;

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

/** Folds q into the fixed-point pair [hi, lo]. Exact (see above). */
function foldScalar(pair: Float64Array, q: number): void {
  const qr = Math.floor(q * TWO60 + 0.5) * INV60;
  const qh = Math.floor(qr * TWO8) * INV8;
  const l = pair[1]! + (qr - qh);
  const c = Math.floor(l * TWO8) * INV8;
  pair[0] = pair[0]! + (qh + c);
  pair[1] = l - c;
}

/** Adds the canonical pair (h, l) into the pair [hi, lo]. Exact. */
function mergeScalar(pair: Float64Array, h: number, l: number): void {
  const s = pair[1]! + l;
  const c = Math.floor(s * TWO8) * INV8;
  pair[0] = pair[0]! + (h + c);
  pair[1] = s - c;
}

export class ExactWeightedSum {
  readonly size: number;
  private readonly hi: Float64Array;
  private readonly lo: Float64Array;
  private readonly weight = new Float64Array(2);
  private readonly magnitude = new Float64Array(2);
  private n = 0;

  constructor(size: number) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`ExactWeightedSum: bad size ${size}`);
    this.size = size;
    this.hi = new Float64Array(size);
    this.lo = new Float64Array(size);
  }

  /** Updates folded in (merges included). */
  get count(): number {
    return this.n;
  }

  /** Sum of the weights (each rounded to 2^-60, then summed exactly). */
  get totalWeight(): number {
    return this.weight[0]! + this.weight[1]!;
  }

  /**
   * Folds weight * values in. Throws RangeError, leaving the state untouched, when the length
   * differs from size, the weight is not finite or below 2^-20, a value is NaN or infinite,
   * or the update would break the exactness bound. Callers should reject NaN/Inf updates
   * themselves, with a message that names the site; the check here is the last line.
   */
  add(values: Float32Array, weight: number): void {
    const [w, m] = this.admit(values, weight);
    const n = this.size;
    const hi = this.hi;
    const lo = this.lo;
    for (let i = 0; i < n; i++) {
      const qr = Math.floor(weight * values[i]! * TWO60 + 0.5) * INV60;
      const qh = Math.floor(qr * TWO8) * INV8;
      const l = lo[i]! + (qr - qh);
      const c = Math.floor(l * TWO8) * INV8;
      hi[i] = hi[i]! + (qh + c);
      lo[i] = l - c;
    }
    this.weight.set(w);
    this.magnitude.set(m);
    this.n++;
  }

  /** Throws exactly what add(values, weight) would throw, and changes nothing. */
  check(values: Float32Array, weight: number): void {
    this.admit(values, weight);
  }

  /** Folds another partial sum in, exactly: partial sums merge to the same bits in any order. */
  merge(other: ExactWeightedSum): void {
    if (other === this) throw new RangeError('ExactWeightedSum.merge: cannot merge a sum into itself');
    if (other.size !== this.size) {
      throw new RangeError(`ExactWeightedSum.merge: size ${other.size} differs from ${this.size}`);
    }
    const w = this.weight.slice();
    const m = this.magnitude.slice();
    mergeScalar(w, other.weight[0]!, other.weight[1]!);
    mergeScalar(m, other.magnitude[0]!, other.magnitude[1]!);
    checkLimit(w, m);
    const hi = this.hi;
    const lo = this.lo;
    const ohi = other.hi;
    const olo = other.lo;
    for (let i = 0; i < hi.length; i++) {
      const s = lo[i]! + olo[i]!;
      const c = Math.floor(s * TWO8) * INV8;
      hi[i] = hi[i]! + (ohi[i]! + c);
      lo[i] = s - c;
    }
    this.weight.set(w);
    this.magnitude.set(m);
    this.n += other.n;
  }

  /** Sum_k w_k x_k per element, rounded once to float64. */
  sum(): Float64Array {
    const { hi, lo } = this;
    const out = new Float64Array(this.size);
    for (let i = 0; i < out.length; i++) out[i] = hi[i]! + lo[i]!;
    return out;
  }

  /** Sum_k w_k x_k / Sum_k w_k per element. Throws when nothing was added. */
  mean(): Float64Array {
    if (this.n === 0) throw new RangeError('ExactWeightedSum.mean: no updates');
    const { hi, lo } = this;
    const w = this.totalWeight;
    const out = new Float64Array(this.size);
    for (let i = 0; i < out.length; i++) out[i] = (hi[i]! + lo[i]!) / w;
    return out;
  }

  snapshot(): ExactSumSnapshot {
    return {
      hi: this.hi.slice(),
      lo: this.lo.slice(),
      weight: this.weight.slice(),
      magnitude: this.magnitude.slice(),
      count: this.n,
    };
  }

  /** Restores a snapshot; throws RangeError when it is not a canonical state. */
  static fromSnapshot(s: ExactSumSnapshot): ExactWeightedSum {
    const size = s.hi.length;
    if (s.lo.length !== size || s.weight.length !== 2 || s.magnitude.length !== 2) {
      throw new RangeError('ExactWeightedSum.fromSnapshot: arrays have inconsistent lengths');
    }
    if (!Number.isSafeInteger(s.count) || s.count < 0) {
      throw new RangeError(`ExactWeightedSum.fromSnapshot: bad count ${s.count}`);
    }
    const canonical = (h: number, l: number): boolean =>
      Math.abs(h) < 2 ** 45 && Math.floor(h * TWO8) === h * TWO8 && l >= 0 && l < INV8 && Math.floor(l * TWO60) === l * TWO60;
    for (let i = 0; i < size; i++) {
      if (!canonical(s.hi[i]!, s.lo[i]!)) throw new RangeError(`ExactWeightedSum.fromSnapshot: element ${i} is not canonical`);
    }
    if (!canonical(s.weight[0]!, s.weight[1]!) || !canonical(s.magnitude[0]!, s.magnitude[1]!)) {
      throw new RangeError('ExactWeightedSum.fromSnapshot: weight or magnitude is not canonical');
    }
    const sum = new ExactWeightedSum(size);
    sum.hi.set(s.hi);
    sum.lo.set(s.lo);
    sum.weight.set(s.weight);
    sum.magnitude.set(s.magnitude);
    sum.n = s.count;
    return sum;
  }

  /** Validates an update; returns the total weight and magnitude pairs it would lead to. */
  private admit(values: Float32Array, weight: number): [Float64Array, Float64Array] {
    const n = this.size;
    if (values.length !== n) {
      throw new RangeError(`ExactWeightedSum.add: update has ${values.length} values, expected ${n}`);
    }
    if (!(weight >= MIN_WEIGHT && weight < Infinity)) {
      throw new RangeError(`ExactWeightedSum.add: weight must be finite and >= 2^-20, got ${weight}`);
    }
    let maxAbs = 0;
    for (let i = 0; i < n; i++) maxAbs = Math.max(maxAbs, Math.abs(values[i]!));
    if (!Number.isFinite(maxAbs)) throw new RangeError('ExactWeightedSum.add: update contains NaN or Infinity');
    const w = this.weight.slice();
    const m = this.magnitude.slice();
    foldScalar(w, weight);
    foldScalar(m, weight * maxAbs);
    checkLimit(w, m);
    return [w, m];
  }
}

function checkLimit(weight: Float64Array, magnitude: Float64Array): void {
  for (const [what, pair] of [
    ['total weight', weight],
    ['Sum weight*max|x|', magnitude],
  ] as const) {
    const v = pair[0]! + pair[1]!;
    if (!(v < MAGNITUDE_LIMIT)) {
      throw new RangeError(`ExactWeightedSum: ${what} would reach ${v}, beyond the exact range 2^44`);
    }
  }
}
