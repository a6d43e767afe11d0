// The WebAssembly (SIMD) kernels of ExactWeightedSum (exact-sum.ts explains the arithmetic).
// Each shard of a sum's state lives in a linear memory of its own:
//
//   [0, SCRATCH_BYTES)          scratch: GROUP slots of one block of input each, or a block of
//                               another sum's lanes, or of output
//   [hOffset, hOffset + 8 cap)  H, int64 per element, in units of 2^-8
//   [lOffset, lOffset + 8 cap)  L, int64 per element, in units of 2^-60
//
// Elements are processed in blocks of BLOCK (a multiple of 16, so that a block is whole unrolled
// SIMD iterations; a shard's capacity is padded to a multiple of 16, and the padding, which folds
// zeros, is never read). Up to GROUP updates are folded into a block at once: its state is read
// and written once for all of them. The fold is then bound by arithmetic (seven SIMD operations
// per two elements and update: some 0.3 ns an element on a 2023 x86 core) and by the copy of each
// update's block into its slot (the kernels read only their own memory), not by the state.
import { encodeModule, op, type WasmFunction } from './wasm.ts';
import { wideSimd } from './wide-simd.ts';

/** Elements per block: 64 KiB of float32 input per update, 256 KiB of state, all in L2 while folded. */
export const BLOCK = 16384;
/** Updates folded into a block by one kernel call (one input slot each). */
export const GROUP = 4;
const SLOT_BYTES = 4 * BLOCK;
/** GROUP slots of input, or a block of two int64 or float64 lanes. */
const SCRATCH_BYTES = Math.max(16 * BLOCK, GROUP * SLOT_BYTES);
/**
 * Elements per shard by default: as many as one linear memory holds (wasm32 addresses 4 GiB: the
 * scratch and 16 bytes per element), so that a model of up to 268M parameters is one shard and
 * its mean can be written over its own state (Shard.quotientInPlace).
 */
export const SHARD_ELEMENTS = 2 ** 28 - SCRATCH_BYTES / 16;
/**
 * How far a block's |L| may grow past its carried value (< 2^52), in units of 2^51, before it is
 * carried again: a fold adds at most 1 unit, another shard's lanes at most 2 + its own growth, so
 * |L| < 2^52 + 4002 * 2^51 < 2^63. ExactWeightedSum carries every 1024 updates anyway: this holds
 * for one batch of thousands of updates, and for many merges, too.
 */
const GROWTH_LIMIT = 4000;

/** Splits q = w x (|q| < 2^43) at 2^-8: q + C1 lies in [2^44, 2^45], whose ulp is 2^-8. */
export const C1 = 1.5 * 2 ** 44;
/** Rounds the rest (|r| <= 2^-9) to 2^-60: r + C2 lies in [2^-8, 2^-7], whose ulp is 2^-60. */
export const C2 = 1.5 * 2 ** -8;
/**
 * A * B = -(C1 + C2) exactly (C1 + C2 itself needs 54 bits): a fused multiply-add A * B + t is
 * t - C1 - C2, exact (an odd multiple of 2^-9 below 2^53 of them), in one operation.
 */
const FMA_A = -1.5 * 2 ** -8;
const FMA_B = 2 ** 52 + 1;

/** The int64 bit patterns of C1 and C2. */
function bitsOf(x: number): bigint {
  const v = new DataView(new ArrayBuffer(8));
  v.setFloat64(0, x, true);
  return v.getBigInt64(0, true);
}
const C1_BITS = bitsOf(C1);
const C2_BITS = bitsOf(C2);

/**
 * 'bits' reads a float32 x by its bits: sign-extended to 64 bits and shifted left by 29, then
 * masked with BITS_MASK (sign, and the 8 exponent and 23 fraction bits one place each where a
 * float64 keeps them), it is the float64 x 2^-896 exactly, subnormals and zeros included; times
 * w 2^896 (WEIGHT_SCALE) it is the same product w x, rounded once. Three integer operations where
 * 'promote' has one, but ones V8 can pair into 256-bit AVX2 operations (wide-simd.ts).
 */
export type InputReading = 'promote' | 'bits';
const WEIGHT_SCALE = 2 ** 896;
/** The double whose bits are 0x8FFFFFFFE0000000 (a mask, used by its bits). */
const BITS_MASK = new Float64Array(new BigInt64Array([-0x7000000020000000n]).buffer)[0]!;
/** How this process reads inputs: by their bits where the folds run 256 bits wide (decided at the first call). */
export function inputReading(): InputReading {
  return wideSimd() ? 'bits' : 'promote';
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

/**
 * fold<n>(p, end, h, l, a, b, w0, ..., w<n-1>): for the float32 x of input slot k (at p + k SLOT_BYTES;
 * [p, end) in slot 0), already checked (finite, w_k |x| <= 2^43, where the split is exact),
 * H += round(w_k x 2^8) and L += round((w_k x - that 2^-8) 2^60), ties to even, for every k: each
 * element's state is read and written once for the n updates.
 *
 * Per element and update: q = w x (one rounding: a function of the update alone), t = q + C1,
 * whose bits minus C1's are round(q 2^8) (H takes t's bits: C1's are taken out, once per fold, when
 * the block is normalized); then r = q - (t - C1) is exact, |r| <= 2^-9, and (r + C2)'s bits minus
 * C2's are round(r 2^60) (L takes them the same way). `fused`: r + C2 as q - (a b + t), the same
 * value rounded once (a b + t = t - C1 - C2 exactly for a = FMA_A, b = FMA_B), one operation
 * fewer; only where the engine fuses relaxed_madd (fusedMultiplyAdd()), else its result would not
 * be exact. a and b are parameters, not constants, so that no compiler can fold a * b into one
 * rounded constant (relaxed SIMD would allow it); the plain kernel ignores them.
 */
function foldKernel(n: number, fused: boolean, reading: InputReading): WasmFunction {
  // Parameters: one input pointer per update (p_k), the end of p_0's run, the state's H and L,
  // the fused constants, the weights.
  const [END, H, L] = [n, n + 1, n + 2];
  const [A_ARG, B_ARG] = [n + 3, n + 4];
  const weightArg = (k: number) => n + 5 + k;
  const weight = (k: number) => 2 * n + 5 + k;
  const [K1, KA, KB] = [3 * n + 5, 3 * n + 6, 3 * n + 7];
  // Four pairs of elements per iteration, for independent chains of operations (and two 256-bit
  // ones where V8 pairs them: adjacent loads and stores, H's stores together, then L's).
  const PAIRS = 4;
  const hAcc = (j: number) => 3 * n + 8 + 2 * j;
  const lAcc = (j: number) => 3 * n + 9 + 2 * j;
  const [Q, T, MASK] = [3 * n + 8 + 2 * PAIRS, 3 * n + 9 + 2 * PAIRS, 3 * n + 10 + 2 * PAIRS];
  const body: number[][] = [];
  for (let j = 0; j < PAIRS; j++)
    body.push(op.localGet(H), op.v128Load(16 * j), op.localSet(hAcc(j)), op.localGet(L), op.v128Load(16 * j), op.localSet(lAcc(j)));
  for (let k = 0; k < n; k++) {
    for (let j = 0; j < PAIRS; j++) {
      body.push(
        op.localGet(k),
        ...(reading === 'bits'
          ? [op.v128Load32x2S(8 * j), op.i32Const(29), op.i64x2Shl, op.localGet(MASK), op.v128And]
          : [op.v128Load64Zero(8 * j), op.f64x2PromoteLowF32x4]),
        op.localGet(weight(k)),
        op.f64x2Mul,
        op.localSet(Q),
        op.localGet(Q),
        op.localGet(K1),
        op.f64x2Add,
        op.localTee(T),
        op.localGet(hAcc(j)),
        op.i64x2Add,
        op.localSet(hAcc(j)),
        op.localGet(lAcc(j)),
        op.localGet(Q),
        ...(fused
          ? [op.localGet(KA), op.localGet(KB), op.localGet(T), op.f64x2RelaxedMadd, op.f64x2Sub]
          : [op.localGet(T), op.localGet(K1), op.f64x2Sub, op.f64x2Sub, op.localGet(KA), op.f64x2Add]),
        op.i64x2Add,
        op.localSet(lAcc(j)),
      );
    }
  }
  for (let j = 0; j < PAIRS; j++) body.push(op.localGet(H), op.localGet(hAcc(j)), op.v128Store(16 * j));
  for (let j = 0; j < PAIRS; j++) body.push(op.localGet(L), op.localGet(lAcc(j)), op.v128Store(16 * j));
  const splat = (value: number, local: number) => [op.f64Const(value), op.f64x2Splat, op.localSet(local)];
  return {
    name: `fold${n}`,
    params: [...Array.from({ length: n }, () => 'i32' as const), 'i32', 'i32', 'i32', 'f64', 'f64', ...Array.from({ length: n }, () => 'f64' as const)],
    results: [],
    locals: Array.from({ length: n + 3 + 2 * PAIRS + 3 }, () => 'v128' as const),
    body: [
      ...Array.from({ length: n }, (_, k) => [
        op.localGet(weightArg(k)),
        ...(reading === 'bits' ? [op.f64Const(WEIGHT_SCALE), op.f64Mul] : []),
        op.f64x2Splat,
        op.localSet(weight(k)),
      ]).flat(),
      ...splat(BITS_MASK, MASK),
      ...splat(C1, K1),
      ...(fused ? [op.localGet(A_ARG), op.f64x2Splat, op.localSet(KA), op.localGet(B_ARG), op.f64x2Splat, op.localSet(KB)] : splat(C2, KA)),
      ...loop(0, END, body, [...Array.from({ length: n }, (_, k): [number, number] => [k, 8 * PAIRS]), [H, 16 * PAIRS], [L, 16 * PAIRS]]),
    ],
  };
}

/** The lanes of an i32x4 in local `v` reduced to their largest (unsigned), in lane 0. */
function maxAcrossLanes(v: number): number[][] {
  return [
    op.localGet(v),
    op.localGet(v),
    op.localGet(v),
    op.i8x16Shuffle([8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7]),
    op.i32x4MaxU,
    op.localTee(v),
    op.localGet(v),
    op.localGet(v),
    op.i8x16Shuffle([4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11]),
    op.i32x4MaxU,
  ];
}

/** The kernels other than the folds. */
const COMMON: WasmFunction[] = [
  {
    // scan(p, end) -> max |x| over the float32 in [p, end) (a multiple of 64 bytes); NaN if any is
    // NaN. On the bit patterns without the sign, which order as the magnitudes do (NaNs above
    // Infinity): integer maxima, two operations per four values. Four running maxima, so that
    // the loop is not one chain of dependent operations.
    name: 'scan',
    params: ['i32', 'i32'],
    results: ['f32'],
    locals: ['v128', 'v128', 'v128', 'v128', 'v128'],
    body: [
      op.i32Const(0x7fffffff),
      op.i32x4Splat,
      op.localSet(6),
      ...loop(
        0,
        1,
        [2, 3, 4, 5].flatMap((acc, i) => [op.localGet(0), op.v128Load(16 * i), op.localGet(6), op.v128And, op.localGet(acc), op.i32x4MaxU, op.localSet(acc)]),
        [[0, 64]],
      ),
      op.localGet(2),
      op.localGet(3),
      op.i32x4MaxU,
      op.localGet(4),
      op.localGet(5),
      op.i32x4MaxU,
      op.i32x4MaxU,
      op.localSet(2),
      ...maxAcrossLanes(2),
      op.i32x4ExtractLane(0),
      op.f32ReinterpretI32,
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

/** fold<n>(p_0, ..., p_{n-1}, end, h, l, a, b, w_0, ..., w_{n-1}). */
type Fold = (...args: number[]) => void;

interface KernelExports {
  scan(p: number, end: number): number;
  addLanes(h: number, end: number, l: number, sh: number, sl: number): void;
  normalize(h: number, end: number, l: number, oh: bigint, ol: bigint): void;
  quotient(h: number, end: number, l: number, out: number, d: number): void;
  toPair(h: number, end: number, l: number, hi: number, lo: number): void;
  fromPair(h: number, end: number, l: number, hi: number, lo: number): void;
}

/** A WebAssembly.Memory: its bytes (an ArrayBuffer, or a SharedArrayBuffer for a shared one). */
export interface WasmMemory {
  buffer: ArrayBuffer | SharedArrayBuffer;
}

/** The part of the WebAssembly JS API used here (the project's type libraries do not declare it). */
interface WasmApi {
  Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: unknown };
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

/**
 * Which fold kernel a sum uses. Both give the same bits; 'fused' takes one operation fewer per
 * element and update, and exists only where the engine fuses relaxed_madd (fusedMultiplyAdd()).
 */
export type FoldKernel = 'plain' | 'fused';

function moduleOf(kernel: FoldKernel, reading: InputReading, shared = false): object {
  const folds = Array.from({ length: GROUP }, (_, i) => foldKernel(i + 1, kernel === 'fused', reading));
  return new wasm.Module(encodeModule([...COMMON, ...folds], { shared }));
}

/** Compiled modules by kernel, reading and sharing. */
const modules = new Map<string, object>();

function cachedModule(kernel: FoldKernel, reading: InputReading, shared: boolean): object {
  const key = `${kernel} ${reading} ${shared}`;
  if (!modules.has(key)) modules.set(key, moduleOf(kernel, reading, shared));
  return modules.get(key)!;
}
/** What the probe found (fusedMultiplyAdd), once. */
let fusesHere: boolean | undefined;

/**
 * Whether relaxed_madd is fused here (one rounding): only then is the fused kernel exact. Relaxed
 * SIMD lets each engine choose, once (V8 fuses where the CPU has FMA, in both of its compilers);
 * A * B + C1 tells which: -C2 fused, -2^-7 with A * B rounded first. An engine without relaxed
 * SIMD does not compile the module: plain it is. Only where it fuses may a sum be asked to use
 * the fused fold kernel.
 */
export function fusedMultiplyAdd(): boolean {
  if (fusesHere !== undefined) return fusesHere;
  let fused = false;
  try {
    const probe = new wasm.Module(
      encodeModule([
        {
          name: 'probe',
          params: ['f64', 'f64', 'f64'],
          results: ['f64'],
          locals: [],
          body: [op.localGet(0), op.f64x2Splat, op.localGet(1), op.f64x2Splat, op.localGet(2), op.f64x2Splat, op.f64x2RelaxedMadd, op.f64x2ExtractLane(0)],
        },
      ]),
    );
    const { probe: run } = new wasm.Instance(probe, { env: { memory: new wasm.Memory({ initial: 1 }) } }).exports as {
      probe: (a: number, b: number, c: number) => number;
    };
    fused = run(FMA_A, FMA_B, C1) === -C2;
  } catch {
    fused = false;
  }
  fusesHere = fused;
  return fused;
}

/**
 * The plain kernel unless the fused one is asked for: a sum's bits must not hang on a probe of how
 * this engine treats relaxed_madd (the fused kernel is exact only if every tier of the engine
 * fuses as the probe did); the fused kernel is for benchmarks and engines known to fuse.
 */
function kernelModule(kernel: FoldKernel, reading: InputReading, shared: boolean): object {
  if (kernel === 'fused' && !fusedMultiplyAdd()) throw new RangeError('ExactWeightedSum: this engine does not fuse relaxed_madd: no fused kernel');
  return cachedModule(kernel, reading, shared);
}

/**
 * What another thread needs to fold into a shard (postMessage-able): its shared memory, where
 * its elements lie, its kernel, and how many threads' scratch areas precede its state.
 */
export interface ShardHandle {
  memory: WasmMemory;
  start: number;
  length: number;
  kernel: FoldKernel;
  reading: InputReading;
  threads: number;
  inputs: number;
}

/** One shard of a sum's state: elements [start, start + length) of the model. */
export class Shard {
  readonly start: number;
  readonly length: number;
  private readonly k: KernelExports;
  /** fold<n> at index n - 1. */
  private readonly foldKernels: Fold[];
  private readonly hOffset: number;
  private readonly lOffset: number;
  /** The scratch as float32 (input slots) and as float64 / bytes (lanes, output). */
  private readonly f32: Float32Array;
  private readonly f64: Float64Array;
  private readonly bytes: Uint8Array;
  /**
   * Folds into each block since it was last normalized: each left C1's bits in H and C2's in L of
   * every element of the block (int64 arithmetic wraps, and the true values stay far inside the
   * range, so subtracting them later gives the same exact sums).
   */
  private readonly folds: Uint32Array;
  /** Per block, the bound on how far |L| grew since it was last carried (GROWTH_LIMIT). */
  private readonly growth: Uint16Array;
  /** Folded into or added to since the last normalize. */
  private dirty = false;

  /** Where this thread's scratch starts (thread t of a shared shard: t scratch areas in). */
  private readonly scratchBase: number;
  /** Set when the shard's memory is shared: what other threads attach to. */
  readonly handle: ShardHandle | undefined;

  /**
   * `threads` > 1: the memory is shared, with a scratch area per thread before the state, so
   * that other threads can attach to it (Shard.attach) and fold blocks of their own at once.
   * `attach`: this is such a thread's view of an existing shard (its folds only: no bookkeeping).
   */
  /** Input slots: where they start, and the bytes between two (the capacity, padded to 16 values). */
  private readonly iOffset: number;
  private readonly slotStride: number;
  readonly inputs: number;

  constructor(
    start: number,
    length: number,
    kernel?: FoldKernel,
    opts: { threads?: number; inputs?: number; reading?: InputReading; attach?: { memory: WasmMemory; thread: number } } = {},
  ) {
    this.start = start;
    this.length = length;
    this.folds = new Uint32Array(Math.ceil(length / BLOCK));
    this.growth = new Uint16Array(this.folds.length);
    const threads = opts.threads ?? 1;
    const shared = threads > 1;
    const capacity = Math.ceil(length / 16) * 16;
    this.hOffset = threads * SCRATCH_BYTES;
    this.lOffset = this.hOffset + 8 * capacity;
    this.iOffset = this.lOffset + 8 * capacity;
    this.slotStride = 4 * capacity;
    this.inputs = opts.inputs ?? 0;
    const pages = Math.ceil((this.iOffset + this.inputs * this.slotStride) / 65536);
    if (pages > 65536) throw new RangeError(`Shard: ${length} elements, ${threads} scratch areas and ${this.inputs} input slots do not fit one memory`);
    const memory = opts.attach?.memory ?? (shared ? new wasm.Memory({ initial: pages, maximum: pages, shared: true }) : new wasm.Memory({ initial: pages }));
    this.scratchBase = (opts.attach?.thread ?? 0) * SCRATCH_BYTES;
    const reading = opts.reading ?? inputReading();
    this.handle = shared ? { memory, start, length, kernel: kernel ?? 'plain', reading, threads, inputs: this.inputs } : undefined;
    const exports = new wasm.Instance(kernelModule(kernel ?? 'plain', reading, shared), { env: { memory } }).exports as KernelExports & Record<string, Fold>;
    this.k = exports;
    this.foldKernels = Array.from({ length: GROUP }, (_, i) => exports[`fold${i + 1}`]!);
    // The memory never grows, so these views stay valid.
    this.f32 = new Float32Array(memory.buffer, this.scratchBase, SCRATCH_BYTES / 4);
    this.f64 = new Float64Array(memory.buffer, this.scratchBase, SCRATCH_BYTES / 8);
    this.bytes = new Uint8Array(memory.buffer);
  }

  /** Another thread's view of a shared shard, folding through scratch area `thread`. */
  static attach(handle: ShardHandle, thread: number): Shard {
    if (!(thread >= 1 && thread < handle.threads)) throw new RangeError(`Shard.attach: thread ${thread} of ${handle.threads}`);
    return new Shard(handle.start, handle.length, handle.kernel, {
      threads: handle.threads,
      inputs: handle.inputs,
      reading: handle.reading,
      attach: { memory: handle.memory, thread },
    });
  }

  /** Input slot i: an update written here is folded where it lies (no copy), its padding zeros. */
  inputView(i: number): Float32Array {
    if (!(i >= 0 && i < this.inputs)) throw new RangeError(`Shard.inputView: slot ${i} of ${this.inputs}`);
    return new Float32Array(this.bytes.buffer, this.iOffset + i * this.slotStride, this.length);
  }

  /** The byte address of `values` when it is one of this shard's input slots, whole; else undefined. */
  inputAddress(values: Float32Array): number | undefined {
    if (values.buffer !== this.bytes.buffer || values.length !== this.length) return undefined;
    const offset = values.byteOffset - this.iOffset;
    return offset >= 0 && offset % this.slotStride === 0 && offset / this.slotStride < this.inputs ? values.byteOffset : undefined;
  }

  /** foldStaged for values in input slots (their addresses + 4 at): the same folds and bookkeeping, without the copy. */
  foldSlots(pointers: readonly number[], count: number, at: number, weights: readonly number[]): void {
    if (at % BLOCK !== 0) throw new RangeError(`Shard.foldSlots: ${at} is not the start of a block`);
    const b = at / BLOCK;
    if (this.growth[b]! + weights.length > GROWTH_LIMIT) this.normalizeBlock(b);
    this.foldAt(pointers, count, at, weights);
    this.folds[b]! += weights.length;
    this.growth[b]! += weights.length;
    this.dirty = true;
  }

  /**
   * Copies values[from, from + count) (count <= BLOCK) into input slot `slot` (< GROUP), padded
   * with zeros to 16 values, and returns their max |x| (NaN if any is NaN), read in cache.
   */
  stage(values: Float32Array, from: number, count: number, slot: number): number {
    const at = slot * BLOCK;
    const padded = Math.ceil(count / 16) * 16;
    this.f32.set(values.subarray(from, from + count), at);
    if (padded > count) this.f32.fill(0, at + count, at + padded);
    return this.k.scan(this.scratchBase + SLOT_BYTES * slot, this.scratchBase + SLOT_BYTES * slot + 4 * padded);
  }

  /** max |values[from, from + count)| (NaN if any is NaN), count <= BLOCK. */
  scan(values: Float32Array, from: number, count: number): number {
    return this.stage(values, from, count, 0);
  }

  /**
   * Folds the values staged in slots 0 .. weights.length - 1 (count each, already checked: finite,
   * weight * |x| <= 2^43), each times its weight, into this shard's elements at `at` (the start of
   * a block). Folding with -weight takes out exactly what went in.
   */
  foldStaged(count: number, at: number, weights: readonly number[]): void {
    if (at % BLOCK !== 0) throw new RangeError(`Shard.foldStaged: ${at} is not the start of a block`);
    const n = weights.length;
    if (n < 1 || n > GROUP) throw new RangeError(`Shard.foldStaged: ${n} updates, 1 to ${GROUP} at a time`);
    const b = at / BLOCK;
    if (this.growth[b]! + n > GROWTH_LIMIT) this.normalizeBlock(b);
    this.foldRaw(count, at, weights);
    this.folds[b]! += n;
    this.growth[b]! += n;
    this.dirty = true;
  }

  /**
   * foldStaged's kernel call alone, through this view's scratch: what a thread folding blocks
   * of a shared shard does; the shard's own bookkeeping (accountFolds) is its owner's.
   */
  foldRaw(count: number, at: number, weights: readonly number[]): void {
    const p = this.scratchBase;
    this.foldAt(
      weights.map((_, k) => p + k * SLOT_BYTES),
      count,
      at,
      weights,
    );
  }

  /**
   * Folds the float32 values at byte addresses `pointers` of this memory (count each, padded
   * with zeros to 16, already checked) into the elements at `at`: foldRaw without the copy, for
   * updates that lie in this shard's own memory (its input slots).
   */
  foldAt(pointers: readonly number[], count: number, at: number, weights: readonly number[]): void {
    this.foldKernels[weights.length - 1]!(
      ...pointers,
      pointers[0]! + Math.ceil(count / 16) * 64,
      this.hOffset + 8 * at,
      this.lOffset + 8 * at,
      FMA_A,
      FMA_B,
      ...weights,
    );
  }

  /** max |x| (NaN if any is NaN) of count float32 at byte address p of this memory, padded with zeros to 16. */
  scanAt(p: number, count: number): number {
    return this.k.scan(p, p + Math.ceil(count / 16) * 64);
  }

  /**
   * Before `n` updates are folded into every block by other threads: each block has room for
   * them (normalized now where it would not, while its state is still a valid one).
   */
  makeRoom(n: number): void {
    if (n > GROWTH_LIMIT) throw new RangeError(`Shard.makeRoom: ${n} updates at once, more than ${GROWTH_LIMIT}`);
    for (let b = 0; b < this.folds.length; b++) if (this.growth[b]! + n > GROWTH_LIMIT) this.normalizeBlock(b);
  }

  /** After `n` updates were folded into every block (by foldRaw, in any thread): the bookkeeping foldStaged would have done. */
  accountFolds(n: number): void {
    for (let b = 0; b < this.folds.length; b++) this.accountBlockFolds(b, n);
  }

  /**
   * After `n` folds into block b by foldRaw: each left the constants in the block's state, taken
   * out when it is normalized (a fold with -w, which takes out w x, leaves them too).
   */
  accountBlockFolds(b: number, n: number): void {
    this.folds[b]! += n;
    this.growth[b]! += n;
    this.dirty = true;
  }

  /** Adds another shard's lanes (same start and length), block by block, constants and all. */
  addLanes(other: Shard): void {
    this.dirty = true;
    for (let b = 0; b < this.folds.length; b++) {
      if (this.growth[b]! + other.growth[b]! + 2 > GROWTH_LIMIT) this.normalizeBlock(b);
      this.folds[b]! += other.folds[b]!;
      this.growth[b]! += other.growth[b]! + 2;
      const at = b * BLOCK;
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
    this.growth.fill(0);
    this.dirty = false;
  }

  /** Takes out the folds' constants and carries L into H, block by block: the canonical pairs. */
  normalize(): void {
    if (!this.dirty) return;
    this.dirty = false;
    for (let b = 0; b < this.folds.length; b++) this.normalizeBlock(b);
  }

  /** normalize() for block b alone. */
  private normalizeBlock(b: number): void {
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
    this.folds[b] = 0;
    this.growth[b] = 0;
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
