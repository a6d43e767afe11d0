// The WebAssembly (SIMD) kernels of ExactWeightedSum (exact-sum.ts explains the arithmetic).
// Each shard of a sum's state lives in a linear memory of its own:
//
//   [0, SCRATCH_BYTES)          scratch: one block of input, or of another sum's lanes, or of output
//   [hOffset, hOffset + 8 cap)  H, int64 per element, in units of 2^-8
//   [lOffset, lOffset + 8 cap)  L, int64 per element, in units of 2^-60
//
// Elements are processed in blocks of BLOCK (a multiple of 16, so that a block is whole unrolled
// SIMD iterations; a shard's capacity is padded to a multiple of 16, and the padding, which folds
// zeros, is never read).
import { encodeModule, op, type WasmFunction } from './wasm.ts';

/** Elements per block: 32 KiB of float32 input, 128 KiB of state, both cache-resident while folded. */
export const BLOCK = 16384;
/** Large enough for a block of two int64 or float64 lanes. */
const SCRATCH_BYTES = BLOCK * 16;
/**
 * Elements per shard by default: as many as one linear memory holds (wasm32 addresses 4 GiB: the
 * scratch block and 16 bytes per element), so that a model of up to 268M parameters is one shard
 * and its mean can be written over its own state (Shard.meanInPlace).
 */
export const SHARD_ELEMENTS = 2 ** 28 - BLOCK;

/** Splits q = w x (|q| < 2^43) at 2^-8: q + C1 lies in [2^44, 2^45], whose ulp is 2^-8. */
export const C1 = 1.5 * 2 ** 44;
/** Rounds the rest (|r| <= 2^-9) to 2^-60: r + C2 lies in [2^-8, 2^-7], whose ulp is 2^-60. */
export const C2 = 1.5 * 2 ** -8;

/** The int64 bit patterns of C1 and C2. */
function bitsOf(x: number): bigint {
  const v = new DataView(new ArrayBuffer(8));
  v.setFloat64(0, x, true);
  return v.getBigInt64(0, true);
}
const C1_BITS = bitsOf(C1);
const C2_BITS = bitsOf(C2);

// Locals of fold: parameters p, end, h, l, w; then W, K1, K2, q, t.
const [P, END, H, L, W_ARG] = [0, 1, 2, 3, 4];
const [W, K1, K2, Q, T] = [5, 6, 7, 8, 9];

/** Two elements of fold: x at p + xo, state at h/l + so. */
function foldPair(xo: number, so: number): number[][] {
  return [
    // q = w x, exact products of float32 by a weight rounded once (a function of the update alone)
    op.localGet(P),
    op.v128Load64Zero(xo),
    op.f64x2PromoteLowF32x4,
    op.localGet(W),
    op.f64x2Mul,
    op.localSet(Q),
    // t = q + C1: its bits minus C1's are round(q 2^8), ties to even (H takes t's bits: C1's are
    // taken out, once per fold, when the block is normalized)
    op.localGet(Q),
    op.localGet(K1),
    op.f64x2Add,
    op.localSet(T),
    op.localGet(H),
    op.localGet(H),
    op.v128Load(so),
    op.localGet(T),
    op.i64x2Add,
    op.v128Store(so),
    // r = q - (t - C1), exact, |r| <= 2^-9; (r + C2)'s bits minus C2's are round(r 2^60) (same)
    op.localGet(L),
    op.localGet(L),
    op.v128Load(so),
    op.localGet(Q),
    op.localGet(T),
    op.localGet(K1),
    op.f64x2Sub,
    op.f64x2Sub,
    op.localGet(K2),
    op.f64x2Add,
    op.i64x2Add,
    op.v128Store(so),
  ];
}

/** The largest of an f32x4's lanes (NaN if any is NaN), from the vector in local `v`. */
function maxLane(v: number): number[][] {
  return [
    op.localGet(v),
    op.f32x4ExtractLane(0),
    op.localGet(v),
    op.f32x4ExtractLane(1),
    op.f32Max,
    op.localGet(v),
    op.f32x4ExtractLane(2),
    op.localGet(v),
    op.f32x4ExtractLane(3),
    op.f32Max,
    op.f32Max,
  ];
}

/** A loop over [local `ptr`, local `end`): `body`, then each (local, bytes) advance. */
function loop(ptr: number, end: number, body: number[][], advance: Array<[number, number]>): number[][] {
  return [
    op.block,
    op.loop,
    op.localGet(ptr),
    op.localGet(end),
    op.i32GeU,
    op.brIf(1),
    ...body,
    ...advance.flatMap(([local, bytes]) => [op.localGet(local), op.i32Const(bytes), op.i32Add, op.localSet(local)]),
    op.br(0),
    op.end,
    op.end,
  ];
}

const FUNCTIONS: WasmFunction[] = [
  {
    // fold(p, end, h, l, w): H += round(w x 2^8), L += round((w x - that 2^-8) 2^60), for the
    // float32 x in [p, end) (scanned first: finite, and w |x| <= 2^43, where the split is exact)
    name: 'fold',
    params: ['i32', 'i32', 'i32', 'i32', 'f64'],
    results: [],
    locals: ['v128', 'v128', 'v128', 'v128', 'v128'],
    body: [
      op.localGet(W_ARG),
      op.f64x2Splat,
      op.localSet(W),
      op.f64Const(C1),
      op.f64x2Splat,
      op.localSet(K1),
      op.f64Const(C2),
      op.f64x2Splat,
      op.localSet(K2),
      ...loop(
        P,
        END,
        [...foldPair(0, 0), ...foldPair(8, 16)],
        [
          [P, 16],
          [H, 32],
          [L, 32],
        ],
      ),
    ],
  },
  {
    // scan(p, end) -> max |x| over the float32 in [p, end) (a multiple of 64 bytes); NaN if any is
    // NaN. Four running maxima (pmax: one instruction), so that the loop is not one chain of
    // dependent operations; NaN lanes go to a flag, or-ed in at the end.
    name: 'scan',
    params: ['i32', 'i32'],
    results: ['f32'],
    locals: ['v128', 'v128', 'v128', 'v128', 'v128', 'v128'],
    body: [
      ...loop(
        0,
        1,
        [2, 3, 4, 5].flatMap((acc, i) => [
          op.localGet(0),
          op.v128Load(16 * i),
          op.localTee(6),
          op.f32x4Abs,
          op.localGet(acc),
          op.f32x4Pmax,
          op.localSet(acc),
          op.localGet(6),
          op.localGet(6),
          op.f32x4Ne,
          op.localGet(7),
          op.v128Or,
          op.localSet(7),
        ]),
        [[0, 64]],
      ),
      op.localGet(2),
      op.localGet(3),
      op.f32x4Pmax,
      op.localGet(4),
      op.localGet(5),
      op.f32x4Pmax,
      op.f32x4Pmax,
      op.localGet(7),
      op.v128Or,
      op.localSet(2),
      ...maxLane(2),
    ],
  },
  {
    // addLanes(h, end, l, sh, sl): H += SH, L += SL (another sum's lanes, copied to scratch)
    name: 'addLanes',
    params: ['i32', 'i32', 'i32', 'i32', 'i32'],
    results: [],
    locals: [],
    body: loop(
      0,
      1,
      [
        op.localGet(0),
        op.localGet(0),
        op.v128Load(),
        op.localGet(3),
        op.v128Load(),
        op.i64x2Add,
        op.v128Store(),
        op.localGet(2),
        op.localGet(2),
        op.v128Load(),
        op.localGet(4),
        op.v128Load(),
        op.i64x2Add,
        op.v128Store(),
      ],
      [
        [0, 16],
        [2, 16],
        [3, 16],
        [4, 16],
      ],
    ),
  },
  {
    // normalize(h, end, l, oh, ol): takes out the constants the folds left (oh from H, ol from L),
    // then moves L's multiples of 2^52 into H, leaving L in [0, 2^52) (the canonical pair)
    name: 'normalize',
    params: ['i32', 'i32', 'i32', 'i64', 'i64'],
    results: [],
    locals: ['v128', 'v128', 'v128', 'v128'],
    body: [
      op.localGet(3),
      op.i64x2Splat,
      op.localSet(5),
      op.localGet(4),
      op.i64x2Splat,
      op.localSet(6),
      ...loop(
        0,
        1,
        [
          // L - ol, and its carry c = (L - ol) >> 52
          op.localGet(2),
          op.v128Load(),
          op.localGet(6),
          op.i64x2Sub,
          op.localTee(8),
          op.i32Const(52),
          op.i64x2ShrS,
          op.localSet(7),
          op.localGet(0),
          op.localGet(0),
          op.v128Load(),
          op.localGet(5),
          op.i64x2Sub,
          op.localGet(7),
          op.i64x2Add,
          op.v128Store(),
          op.localGet(2),
          op.localGet(8),
          op.localGet(7),
          op.i32Const(52),
          op.i64x2Shl,
          op.i64x2Sub,
          op.v128Store(),
        ],
        [
          [0, 16],
          [2, 16],
        ],
      ),
    ],
  },
  {
    // quotient(h, end, l, out, d): out = (H 2^-8 + L 2^-60) / d as float64, of a normalized pair
    // (both products exact; one rounding for the sum, one for the division)
    name: 'quotient',
    params: ['i32', 'i32', 'i32', 'i32', 'f64'],
    results: [],
    locals: [],
    body: loop(
      0,
      1,
      [
        op.localGet(3),
        op.localGet(0),
        op.i64Load(),
        op.f64ConvertI64S,
        op.f64Const(2 ** -8),
        op.f64Mul,
        op.localGet(2),
        op.i64Load(),
        op.f64ConvertI64S,
        op.f64Const(2 ** -60),
        op.f64Mul,
        op.f64Add,
        op.localGet(4),
        op.f64Div,
        op.f64Store(),
      ],
      [
        [0, 8],
        [2, 8],
        [3, 8],
      ],
    ),
  },
  {
    // toPair(h, end, l, hi, lo): hi = H 2^-8, lo = L 2^-60 (exact for a normalized pair with |H| < 2^53)
    name: 'toPair',
    params: ['i32', 'i32', 'i32', 'i32', 'i32'],
    results: [],
    locals: [],
    body: loop(
      0,
      1,
      [
        op.localGet(3),
        op.localGet(0),
        op.i64Load(),
        op.f64ConvertI64S,
        op.f64Const(2 ** -8),
        op.f64Mul,
        op.f64Store(),
        op.localGet(4),
        op.localGet(2),
        op.i64Load(),
        op.f64ConvertI64S,
        op.f64Const(2 ** -60),
        op.f64Mul,
        op.f64Store(),
      ],
      [
        [0, 8],
        [2, 8],
        [3, 8],
        [4, 8],
      ],
    ),
  },
  {
    // fromPair(h, end, l, hi, lo): the inverse of toPair, for canonical hi and lo
    name: 'fromPair',
    params: ['i32', 'i32', 'i32', 'i32', 'i32'],
    results: [],
    locals: [],
    body: loop(
      0,
      1,
      [
        op.localGet(0),
        op.localGet(3),
        op.f64Load(),
        op.f64Const(2 ** 8),
        op.f64Mul,
        op.i64TruncF64S,
        op.i64Store(),
        op.localGet(2),
        op.localGet(4),
        op.f64Load(),
        op.f64Const(2 ** 60),
        op.f64Mul,
        op.i64TruncF64S,
        op.i64Store(),
      ],
      [
        [0, 8],
        [2, 8],
        [3, 8],
        [4, 8],
      ],
    ),
  },
];

interface KernelExports {
  fold(p: number, end: number, h: number, l: number, w: number): void;
  scan(p: number, end: number): number;
  addLanes(h: number, end: number, l: number, sh: number, sl: number): void;
  normalize(h: number, end: number, l: number, oh: bigint, ol: bigint): void;
  quotient(h: number, end: number, l: number, out: number, d: number): void;
  toPair(h: number, end: number, l: number, hi: number, lo: number): void;
  fromPair(h: number, end: number, l: number, hi: number, lo: number): void;
}

/** The part of the WebAssembly JS API used here (the project's type libraries do not declare it). */
interface WasmApi {
  Memory: new (descriptor: { initial: number }) => { buffer: ArrayBuffer };
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: unknown };
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

let compiled: object | undefined;

/** One shard of a sum's state: elements [start, start + length) of the model. */
export class Shard {
  readonly start: number;
  readonly length: number;
  private readonly k: KernelExports;
  private readonly hOffset: number;
  private readonly lOffset: number;
  /** The scratch block as float32 (input) and as float64 / bytes (lanes, output). */
  private readonly f32: Float32Array;
  private readonly f64: Float64Array;
  private readonly bytes: Uint8Array;
  /**
   * Folds into each block since it was last normalized: each left C1's bits in H and C2's in L of
   * every element of the block (int64 arithmetic wraps, and the true values stay far inside the
   * range, so subtracting them later gives the same exact sums).
   */
  private readonly folds: Uint32Array;
  /** Folded into or added to since the last normalize. */
  private dirty = false;

  constructor(start: number, length: number) {
    this.start = start;
    this.length = length;
    this.folds = new Uint32Array(Math.ceil(length / BLOCK));
    const capacity = Math.ceil(length / 16) * 16;
    this.hOffset = SCRATCH_BYTES;
    this.lOffset = SCRATCH_BYTES + 8 * capacity;
    const memory = new wasm.Memory({ initial: Math.ceil((this.lOffset + 8 * capacity) / 65536) });
    compiled ??= new wasm.Module(encodeModule(FUNCTIONS));
    this.k = new wasm.Instance(compiled, { env: { memory } }).exports as KernelExports;
    // The memory never grows, so these views stay valid.
    this.f32 = new Float32Array(memory.buffer, 0, BLOCK);
    this.f64 = new Float64Array(memory.buffer, 0, 2 * BLOCK);
    this.bytes = new Uint8Array(memory.buffer);
  }

  /** Copies values[from, from + count) (count <= BLOCK) to scratch, padded with zeros to 16 values; returns the padded end. */
  private load(values: Float32Array, from: number, count: number): number {
    const padded = Math.ceil(count / 16) * 16;
    this.f32.set(values.subarray(from, from + count));
    if (padded > count) this.f32.fill(0, count, padded);
    return padded * 4;
  }

  /** max |values[from, from + count)| (NaN if any is NaN), count <= BLOCK. */
  scan(values: Float32Array, from: number, count: number): number {
    return this.k.scan(0, this.load(values, from, count));
  }

  /**
   * Folds weight * values[from, from + count) into this shard's elements at `at` (count <= BLOCK),
   * values already checked (scan): finite, and weight * |x| <= 2^43. With `loaded`, the values
   * are the ones scan just copied to scratch. Folding with -weight takes out exactly what went in.
   */
  fold(values: Float32Array, from: number, count: number, at: number, weight: number, loaded = false): void {
    if (at % BLOCK !== 0) throw new RangeError(`Shard.fold: ${at} is not the start of a block`);
    const end = loaded ? Math.ceil(count / 16) * 64 : this.load(values, from, count);
    this.k.fold(0, end, this.hOffset + 8 * at, this.lOffset + 8 * at, weight);
    this.folds[at / BLOCK]!++;
    this.dirty = true;
  }

  /** Adds another shard's lanes (same start and length), block by block, constants and all. */
  addLanes(other: Shard): void {
    for (let b = 0; b < this.folds.length; b++) this.folds[b]! += other.folds[b]!;
    this.dirty = true;
    for (let at = 0; at < this.length; at += BLOCK) {
      const count = Math.ceil(Math.min(BLOCK, this.length - at) / 2) * 2;
      this.bytes.set(other.bytes.subarray(other.hOffset + 8 * at, other.hOffset + 8 * (at + count)), 0);
      this.bytes.set(other.bytes.subarray(other.lOffset + 8 * at, other.lOffset + 8 * (at + count)), 8 * BLOCK);
      this.k.addLanes(this.hOffset + 8 * at, this.hOffset + 8 * (at + count), this.lOffset + 8 * at, 0, 8 * BLOCK);
    }
  }

  /** Zeroes the state (a memory that has been used: no page faults, unlike a new one). */
  reset(): void {
    this.bytes.fill(0, this.hOffset, this.lOffset + (this.lOffset - this.hOffset));
    this.folds.fill(0);
    this.dirty = false;
  }

  /** Takes out the folds' constants and carries L into H, block by block: the canonical pairs. */
  normalize(): void {
    if (!this.dirty) return;
    this.dirty = false;
    for (let b = 0; b < this.folds.length; b++) {
      const at = b * BLOCK;
      const count = Math.ceil(Math.min(BLOCK, this.length - at) / 2) * 2;
      const n = BigInt(this.folds[b]!);
      this.k.normalize(
        this.hOffset + 8 * at,
        this.hOffset + 8 * (at + count),
        this.lOffset + 8 * at,
        BigInt.asIntN(64, n * C1_BITS),
        BigInt.asIntN(64, n * C2_BITS),
      );
    }
    this.folds.fill(0);
  }

  /** out[start + i] = (H + L) / divisor for every element, of a normalized shard. */
  quotient(out: Float64Array, divisor: number): void {
    for (let at = 0; at < this.length; at += BLOCK) {
      const count = Math.min(BLOCK, this.length - at);
      this.k.quotient(this.hOffset + 8 * at, this.hOffset + 8 * (at + count), this.lOffset + 8 * at, 0, divisor);
      out.set(this.f64.subarray(0, count), this.start + at);
    }
  }

  /**
   * (H + L) / divisor of a normalized shard, written over H (each element's H and L are read
   * before its quotient is stored): the state is spent, and the quotients are a view of its memory.
   */
  quotientInPlace(divisor: number): Float64Array {
    const count = Math.ceil(this.length / 2) * 2;
    this.k.quotient(this.hOffset, this.hOffset + 8 * count, this.lOffset, this.hOffset, divisor);
    return new Float64Array(this.bytes.buffer, this.hOffset, this.length);
  }

  /** The (hi, lo) float64 pairs of a normalized shard into hi[start...], lo[start...]. */
  toPairs(hi: Float64Array, lo: Float64Array): void {
    for (let at = 0; at < this.length; at += BLOCK) {
      const count = Math.min(BLOCK, this.length - at);
      this.k.toPair(this.hOffset + 8 * at, this.hOffset + 8 * (at + count), this.lOffset + 8 * at, 0, 8 * BLOCK);
      hi.set(this.f64.subarray(0, count), this.start + at);
      lo.set(this.f64.subarray(BLOCK, BLOCK + count), this.start + at);
    }
  }

  /** Sets the state from canonical (hi, lo) pairs (already validated). */
  fromPairs(hi: Float64Array, lo: Float64Array): void {
    for (let at = 0; at < this.length; at += BLOCK) {
      const count = Math.min(BLOCK, this.length - at);
      this.f64.set(hi.subarray(this.start + at, this.start + at + count), 0);
      this.f64.set(lo.subarray(this.start + at, this.start + at + count), BLOCK);
      this.k.fromPair(this.hOffset + 8 * at, this.hOffset + 8 * (at + count), this.lOffset + 8 * at, 0, 8 * BLOCK);
    }
  }
}

let scanner: Shard | undefined;

/** max |values[i]| (NaN if any is NaN, Infinity if any is infinite), in SIMD: ~4x a JS loop. */
export function maxAbs(values: Float32Array): number {
  scanner ??= new Shard(0, 0);
  let m = 0;
  for (let at = 0; at < values.length; at += BLOCK) m = Math.max(m, scanner.scan(values, at, Math.min(BLOCK, values.length - at)));
  return m;
}
