// Aggregation throughput: 10 updates of 10M float32 folded into the round's exact weighted sum
// (ExactWeightedSum, and RoundAccumulator around it), in GB/s of input (the updates' float32
// bytes), against this machine's single-core memory read rate measured in the same process just
// before, over bytes that are in memory, not in cache (400 MB, every page written): the fastest of
// a WebAssembly SIMD sum (the fastest read this runtime has), tight 4-accumulator JS sums over the
// same bytes as Float64 and over the updates as Float32, and a memcpy (TypedArray.set).
//
// Every row times the folds alone, in the same way: its fastest of a few repetitions, each
// repetition timing all the rows in turn (reads included), on sums whose memory was used before
// (a fresh one adds the page faults of its first pass); the mean that ends a round is timed on
// its own. The ways to fold:
//   - add, one update at a time, as the coordinator folds updates held in memory as they arrive
//     (RoundAccumulator.add): each pass streams the 160 MB of state through memory;
//   - addAll, all ten block by block: each block of state stays in cache while they are folded
//     into it, GROUP at a time;
//   - range by range, as the coordinator aggregates stored updates at round close
//     (aggregateStored): a sum the size of a range, every update's same range folded into it,
//     one at a time (add) or together (addAll).
// All give the same bits (checked). A naive float64 `acc[i] += w * x[i]` fold is printed beside
// them for reference, and so is the bound the exact split's arithmetic sets by itself: the fold
// kernel over every block of a sum, GROUP inputs at a time, with the inputs staged in cache once
// (no input read from memory, no copy, no scan: what no way of moving the bytes can beat).
// Then the same folds by as many threads as the machine has cores (ExactWeightedSum's `threads`:
// the caller and helper threads each fold a run of blocks of one shared state; the coordinator
// reads updates into SharedArrayBuffers for this), against the same single-core read rate.
// Where the folds run 256 bits wide (wide-simd.ts: AVX2), the same fold from input slots reading
// its inputs by promotion, as at 128 bits, is printed beside for comparison.
import { availableParallelism } from 'node:os';
import { BLOCK, type FoldKernel, fusedMultiplyAdd, GROUP, type InputReading, inputReading, Shard } from '../../core/aggregation/exact-kernel.ts';
import { ExactWeightedSum } from '../../core/aggregation/exact-sum.ts';
import { RoundAccumulator } from '../../core/aggregation/round-accumulator.ts';
import { allowWideSimd, wideSimd } from '../../core/aggregation/wide-simd.ts';
import { encodeModule, op } from '../../core/aggregation/wasm.ts';
import { fixed, printTable } from './table.ts';

export interface AggregationArgs {
  quick: boolean;
}

/** The coordinator's range for stored updates (AGGREGATION_RANGE in round-coordinator.ts). */
const RANGE = 1 << 20;

/** Deterministic values in [-0.01, 0.01) (xorshift32), like a round's deltas; in SharedArrayBuffers, as the coordinator reads them. */
function updates(count: number, n: number): Float32Array[] {
  let s = 0x9e3779b9;
  return Array.from({ length: count }, () => {
    const a = new Float32Array(new SharedArrayBuffer(4 * n));
    for (let i = 0; i < n; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      a[i] = ((s >>> 0) / 2 ** 32 - 0.5) * 0.02;
    }
    return a;
  });
}

// Results go somewhere, so that no loop is optimised away.
let sunk = 0;
function sink(v: unknown): void {
  if (typeof v === 'number') sunk += v;
  else if (v instanceof Float64Array || v instanceof Float32Array) sunk += v[v.length >> 1]!;
}

function sum32(a: Float32Array): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const n = a.length & ~3;
  for (let i = 0; i < n; i += 4) {
    s0 += a[i]!;
    s1 += a[i + 1]!;
    s2 += a[i + 2]!;
    s3 += a[i + 3]!;
  }
  for (let i = n; i < a.length; i++) s0 += a[i]!;
  return s0 + s1 + s2 + s3;
}

function sum64(a: Float64Array): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const n = a.length & ~3;
  for (let i = 0; i < n; i += 4) {
    s0 += a[i]!;
    s1 += a[i + 1]!;
    s2 += a[i + 2]!;
    s3 += a[i + 3]!;
  }
  for (let i = n; i < a.length; i++) s0 += a[i]!;
  return s0 + s1 + s2 + s3;
}

/** The WebAssembly JS API's part used here (the project's type libraries do not declare it). */
interface WasmApi {
  Memory: new (descriptor: { initial: number }) => { buffer: ArrayBuffer };
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: unknown };
}

/**
 * `bytes` (a multiple of 64) of WebAssembly memory and read(end): the i64x2 sum of [0, end), four
 * 16-byte loads per iteration into four running sums (one-cycle adds: the loads are the limit).
 */
function simdReader(bytes: number): { buffer: ArrayBuffer; read: (end: number) => number } {
  const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
  const memory = new wasm.Memory({ initial: Math.ceil(bytes / 65536) });
  const module = new wasm.Module(
    encodeModule([
      {
        name: 'read',
        params: ['i32'],
        results: ['f64'],
        locals: ['i32', 'v128', 'v128', 'v128', 'v128'],
        body: [
          op.block,
          op.loop,
          op.localGet(1),
          op.localGet(0),
          op.i32GeU,
          op.brIf(1),
          ...[2, 3, 4, 5].flatMap((acc, i) => [op.localGet(1), op.v128Load(16 * i), op.localGet(acc), op.i64x2Add, op.localSet(acc)]),
          op.localGet(1),
          op.i32Const(64),
          op.i32Add,
          op.localSet(1),
          op.br(0),
          op.end,
          op.end,
          op.localGet(2),
          op.localGet(3),
          op.i64x2Add,
          op.localGet(4),
          op.localGet(5),
          op.i64x2Add,
          op.i64x2Add,
          op.f64x2ExtractLane(0),
        ],
      },
    ]),
  );
  const { read } = new wasm.Instance(module, { env: { memory } }).exports as { read: (end: number) => number };
  return { buffer: memory.buffer, read };
}

/** A row: one timed repetition (seconds); setup, untimed, comes first. */
interface Row {
  what: string;
  time: () => number;
}

/** Wall time (s) of fn, its result sunk. */
function timed(fn: () => unknown): number {
  const t0 = performance.now();
  sink(fn());
  return (performance.now() - t0) / 1000;
}

export async function run(args: AggregationArgs): Promise<unknown> {
  // As a coordinator process does (wide-simd.ts): 256-bit folds where the CPU has AVX2.
  allowWideSimd();
  const READING = inputReading();
  const n = args.quick ? 2_000_000 : 10_000_000;
  const count = 10;
  const reps = args.quick ? 2 : 5;
  const ups = updates(count, n);
  const weights = ups.map((_, k) => 50 + 17 * k);
  const inputBytes = count * n * 4;
  const gbps = (s: number) => inputBytes / s / 1e9;

  // The reference: reading the same number of bytes as fast as one core does here. Every page
  // written: a never-written page reads as the kernel's shared zero page, from cache.
  const reader = simdReader(inputBytes);
  const as64 = new Float64Array(reader.buffer, 0, inputBytes / 8);
  for (let k = 0; k < count; k++) new Float32Array(reader.buffer, k * n * 4, n).set(ups[k]!);
  const dst = new Float32Array(n).fill(1);
  const reads: Row[] = [
    { what: 'read rate: WebAssembly SIMD sum (4 accumulators)', time: () => timed(() => reader.read(inputBytes)) },
    { what: 'read rate: Float64 sum (4 accumulators)', time: () => timed(() => sum64(as64)) },
    {
      what: 'read rate: Float32 sum (4 accumulators)',
      time: () =>
        timed(() => {
          let s = 0;
          for (const u of ups) s += sum32(u);
          return s;
        }),
    },
    {
      what: 'read rate: memcpy (TypedArray.set)',
      time: () =>
        timed(() => {
          for (const u of ups) dst.set(u);
          return dst;
        }),
    },
  ];

  const oneAtATime = new ExactWeightedSum(n);
  const batch = ups.map((values, k) => ({ values, weight: weights[k]! }));
  const batched = new ExactWeightedSum(n);
  const roundAccumulator = new RoundAccumulator(n);
  const naiveAcc = new Float64Array(n);
  // The arithmetic bound: one block of every update staged into the slots once; each block of the
  // sum then folds those (still in cache) in groups as addAll forms them (10: 4, 3, 3).
  // Both kernels where the engine fuses relaxed_madd (the fused one takes an operation fewer).
  const kernels: FoldKernel[] = fusedMultiplyAdd() ? ['plain', 'fused'] : ['plain'];
  const kernelOnly = kernels.map((kernel) => {
    const shard = new Shard(0, n, kernel);
    for (let k = 0; k < GROUP; k++) shard.stage(ups[k]!, 0, Math.min(BLOCK, n), k);
    return { kernel, shard };
  });
  const groups = Math.ceil(count / GROUP);
  const groupWeights = Array.from({ length: groups }, (_, g) => weights.slice(Math.floor((g * count) / groups), Math.floor(((g + 1) * count) / groups)));

  // Range by range: the folds are timed, the resets and means between them are not. The ranges
  // of each update are views, the last one padded with zeros (as aggregateStored reads them).
  const width = Math.min(RANGE, n);
  const ranges = Array.from({ length: Math.ceil(n / width) }, (_, r) => r * width);
  const slices = ups.map((u) =>
    ranges.map((start) => {
      if (start + width <= n) return u.subarray(start, start + width);
      const last = new Float32Array(width);
      last.set(u.subarray(start));
      return last;
    }),
  );
  const rangeSum = new ExactWeightedSum(width);
  const threads = Math.max(2, availableParallelism());
  const threadedBatched = new ExactWeightedSum(n, { threads });
  const threadedRangeSum = new ExactWeightedSum(width, { threads });
  const threadedAccumulator = new RoundAccumulator(n, { threads });
  const threadedRangeMeans = new Float64Array(n);
  // Input slots: the updates written into the sums' own memory (as a stored round's reads write
  // each range), folded where they lie. Filled before the timing, as the reads fill them.
  const slotConfigs: Array<{ t: number; kernel: FoldKernel; reading: InputReading }> = [
    { t: 1, kernel: 'plain', reading: READING },
    { t: threads, kernel: 'plain', reading: READING },
    ...(fusedMultiplyAdd() ? [{ t: threads, kernel: 'fused' as const, reading: READING }] : []),
    ...(READING === 'bits' ? [{ t: threads, kernel: 'plain' as const, reading: 'promote' as const }] : []),
  ];
  const slotSums = slotConfigs.map(({ t, kernel, reading }) => {
    const sum = new ExactWeightedSum(n, { threads: t, inputs: count, kernel, reading });
    const batch = ups.map((u, k) => {
      const slot = sum.input(k);
      slot.set(u);
      return { values: slot, weight: weights[k]! };
    });
    return { threads: t, kernel, reading, sum, batch };
  });
  const slotRangeSum = new ExactWeightedSum(width, { threads, inputs: count });
  const slotRangeMeans = new Float64Array(n);
  const rangeMeans = new Float64Array(n);
  const byRange = (fold: (r: number) => void, sum = rangeSum, means = rangeMeans): number => {
    let folding = 0;
    ranges.forEach((start, r) => {
      sum.reset();
      folding += timed(() => fold(r));
      means.set(sum.takeMean().subarray(0, Math.min(width, n - start)), start);
    });
    return folding;
  };
  const folds: Row[] = [
    {
      what: 'ExactWeightedSum.add x10, one update at a time',
      time: () => {
        oneAtATime.reset();
        return timed(() => {
          for (let k = 0; k < count; k++) oneAtATime.add(ups[k]!, weights[k]!);
        });
      },
    },
    {
      what: 'RoundAccumulator.add x10 (in-memory coordinator)',
      time: () => {
        roundAccumulator.reset();
        return timed(() => {
          for (let k = 0; k < count; k++) roundAccumulator.add({ site: `site-${k}`, samples: weights[k]!, delta: ups[k]!, trainLoss: 0 });
        });
      },
    },
    {
      what: 'ExactWeightedSum.addAll of the 10, block by block',
      time: () => {
        batched.reset();
        return timed(() => batched.addAll(batch));
      },
    },
    {
      what: `range by range (${width}): add x10 per range (stored)`,
      time: () =>
        byRange((r) => {
          for (let k = 0; k < count; k++) rangeSum.add(slices[k]![r]!, weights[k]!);
        }),
    },
    {
      what: `range by range (${width}): addAll per range`,
      time: () => byRange((r) => rangeSum.addAll(slices.map((s, k) => ({ values: s[r]!, weight: weights[k]! })))),
    },
    {
      what: 'naive float64 acc[i] += w*x[i] x10',
      time: () => {
        naiveAcc.fill(0);
        return timed(() => {
          for (let k = 0; k < count; k++) {
            const x = ups[k]!;
            const w = weights[k]!;
            for (let i = 0; i < n; i++) naiveAcc[i] = naiveAcc[i]! + w * x[i]!;
          }
        });
      },
    },
    ...kernelOnly.map(
      ({ kernel, shard }): Row => ({
        what: `fold kernel alone (${kernel}), inputs in cache: arithmetic bound`,
        time: () => {
          shard.reset();
          return timed(() => {
            for (let at = 0; at < n; at += BLOCK) {
              const c = Math.min(BLOCK, n - at);
              for (const ws of groupWeights) shard.foldStaged(c, at, ws);
            }
          });
        },
      }),
    ),
    {
      what: `ExactWeightedSum.addAll of the 10, ${threads} threads`,
      time: () => {
        threadedBatched.reset();
        return timed(() => threadedBatched.addAll(batch));
      },
    },
    {
      what: `range by range (${width}): addAll per range, ${threads} threads`,
      time: () => byRange((r) => threadedRangeSum.addAll(slices.map((s, k) => ({ values: s[r]!, weight: weights[k]! }))), threadedRangeSum, threadedRangeMeans),
    },
    ...slotSums.map(
      ({ threads: t, kernel, reading, sum, batch: inSlots }): Row => ({
        what: `ExactWeightedSum.addAll of the 10 in its input slots (no copy), ${t === 1 ? '1 thread' : `${t} threads`}${kernel === 'fused' ? ', fused kernel (opt-in)' : ''}${reading !== READING ? ', inputs promoted (128 bits wide)' : ''}`,
        time: () => {
          sum.reset();
          return timed(() => sum.addAll(inSlots));
        },
      }),
    ),
    {
      what: `range by range (${width}): ${GROUP} at a time per range from input slots, ${threads} threads (stored, as the coordinator)`,
      time: () => {
        let folding = 0;
        ranges.forEach((start, r) => {
          slotRangeSum.reset();
          for (let first = 0; first < count; first += GROUP) {
            const group = Array.from({ length: Math.min(GROUP, count - first) }, (_, i) => first + i);
            // The reads of the updates' range into their slots: not timed.
            for (const k of group) slotRangeSum.input(k).set(slices[k]![r]!);
            folding += timed(() => slotRangeSum.addAll(group.map((k) => ({ values: slotRangeSum.input(k), weight: weights[k]! }))));
          }
          slotRangeMeans.set(slotRangeSum.takeMean().subarray(0, Math.min(width, n - start)), start);
        });
        return folding;
      },
    },
    {
      what: `RoundAccumulator.add x10, ${threads} threads`,
      time: () => {
        threadedAccumulator.reset();
        return timed(() => {
          for (let k = 0; k < count; k++) threadedAccumulator.add({ site: `site-${k}`, samples: weights[k]!, delta: ups[k]!, trainLoss: 0 });
        });
      },
    },
  ];
  // Every repetition times every row once, in turn, so that whatever else the machine does
  // (other processes, other guests of the host) falls on all of them alike; a row's figure is
  // its fastest repetition.
  const rows = [...reads, ...folds];
  const fastest = rows.map(() => Number.POSITIVE_INFINITY);
  for (let rep = 0; rep < reps; rep++) rows.forEach((row, i) => (fastest[i] = Math.min(fastest[i]!, row.time())));
  const rate = (what: string) => gbps(fastest[rows.findIndex((r) => r.what === what)]!);
  const readRate = Math.max(...reads.map((r) => rate(r.what)));
  const jsReadRate = Math.max(...reads.slice(1).map((r) => rate(r.what)));
  const bound = Math.max(...folds.filter((r) => r.what.startsWith('fold kernel alone')).map((r) => rate(r.what)));
  const threadedRows = folds.filter((r) => r.what.includes(`${threads} threads`));
  // The default kernel's best; the fused one (opt-in) and the promoting reading are shown beside it.
  const bestThreaded = Math.max(...threadedRows.filter((r) => !r.what.includes('fused') && !r.what.includes('promoted')).map((r) => rate(r.what)));
  const fusedThreaded = folds.find((r) => r.what.includes('fused kernel (opt-in)'));
  const promotedThreaded = folds.find((r) => r.what.includes('inputs promoted'));
  const bestOne = Math.max(
    ...folds.filter((r) => !r.what.includes('threads') && !r.what.startsWith('fold kernel') && !r.what.startsWith('naive')).map((r) => rate(r.what)),
  );

  // The same bits every way? (The states after the last repetition.)
  const a = oneAtATime.snapshot();
  const b = batched.snapshot();
  let identical = true;
  for (let i = 0; i < n && identical; i++) identical = a.hi[i] === b.hi[i] && a.lo[i] === b.lo[i];
  const reference = batched.mean();
  const sameMean = (mean: Float64Array): boolean => {
    for (let i = 0; i < n; i++) if (mean[i] !== reference[i]) return false;
    return true;
  };
  const rangesIdentical = sameMean(rangeMeans) && sameMean(threadedRangeMeans) && sameMean(slotRangeMeans);
  const t = threadedBatched.snapshot();
  let threadedIdentical = true;
  for (let i = 0; i < n && threadedIdentical; i++) threadedIdentical = t.hi[i] === b.hi[i] && t.lo[i] === b.lo[i];
  threadedIdentical &&= sameMean(threadedAccumulator.take(1).meanDelta) && slotSums.every(({ sum }) => sameMean(sum.mean()));
  let takeS = 0;
  const meanIdentical = sameMean(
    (() => {
      const t0 = performance.now();
      const mean = roundAccumulator.take(1).meanDelta;
      takeS = (performance.now() - t0) / 1000;
      return mean;
    })(),
  );

  const kernel = `plain SIMD (the fused relaxed-SIMD kernel is opt-in), inputs read ${
    READING === 'bits' ? 'by their bits, 256 bits wide (V8 revectorizer, AVX2)' : 'by promotion, 128 bits wide'
  }`;
  printTable(
    `Aggregation throughput: ${count} updates of ${(n / 1e6).toFixed(0)}M float32 (${(inputBytes / 1e9).toFixed(2)} GB of input), one core`,
    ['what', 'GB/s of input', 'vs read rate', 'ns / element'],
    rows.map(({ what }) => [what, fixed(rate(what), 2), `${fixed(rate(what) / readRate, 2)}x`, fixed(4 / rate(what), 2)]),
    [
      `read rate = the fastest of the four reads (${fixed(readRate, 2)} GB/s; of the three JS ones: ${fixed(jsReadRate, 2)} GB/s); target for the exact sum: >= 0.5x of it`,
      `ExactWeightedSum keeps two int64 per element (WebAssembly SIMD, fold kernel: ${kernel}); one update at a time, each element moves 4 bytes of input and reads and writes 16 bytes of state (36 bytes of memory traffic per 4 bytes of input); block by block, the state stays in cache and is read and written once per ${GROUP} updates`,
      `add and addAll leave the same state bit for bit: ${identical ? 'yes' : 'NO'}; RoundAccumulator and range by range give the same mean as addAll: ${meanIdentical && rangesIdentical ? 'yes' : 'NO'}; ${threads} threads, the same state and means: ${threadedIdentical ? 'yes' : 'NO'}`,
      `best: one thread ${fixed(bestOne, 2)} GB/s = ${fixed(bestOne / readRate, 2)}x of the single-core read rate; ${threads} threads ${fixed(bestThreaded, 2)} GB/s = ${fixed(bestThreaded / readRate, 2)}x (target >= 0.5x)${fusedThreaded ? `; with the fused kernel (opt-in: exact only where the engine fuses relaxed_madd) ${fixed(rate(fusedThreaded.what) / readRate, 2)}x` : ''}${promotedThreaded ? `; reading by promotion, 128 bits wide (as without AVX2) ${fixed(rate(promotedThreaded.what) / readRate, 2)}x` : ''}`,
      `the exact split's arithmetic alone (the fastest fold kernel, inputs in cache, no input read from memory): ${fixed(bound, 2)} GB/s = ${fixed(bound / readRate, 2)}x of the read rate: ${bound / readRate < 0.5 ? 'below 0.5x, so no way of moving the inputs can bring this exact sum to 0.5x on one core here' : 'the bound leaves room for reading the inputs'}`,
      `the mean (RoundAccumulator.take over the sum's own memory, ${(n / 1e6).toFixed(0)}M elements), timed apart: ${fixed(takeS * 1000, 0)} ms; each row's fastest of ${reps} rounds, the rows in turn`,
    ],
  );
  if (sunk === 0.123456789) process.stdout.write(' ');
  const figure = (what: string) => {
    const s = fastest[rows.findIndex((r) => r.what === what)]!;
    return { seconds: s, GBps: gbps(s), ratio: gbps(s) / readRate, ratioToJsReadRate: gbps(s) / jsReadRate };
  };
  return {
    parameters: n,
    updates: count,
    inputBytes,
    foldKernel: 'plain',
    inputReading: READING,
    wideSimd: wideSimd(),
    readRateGBps: {
      wasmSimdSum: rate(reads[0]!.what),
      float64Sum: rate(reads[1]!.what),
      float32Sum: rate(reads[2]!.what),
      memcpy: rate(reads[3]!.what),
      reference: readRate,
      jsReference: jsReadRate,
    },
    exactWeightedSum: figure(folds[0]!.what),
    roundAccumulator: { ...figure(folds[1]!.what), takeSeconds: takeS, identicalMean: meanIdentical },
    exactWeightedSumBlocked: { ...figure(folds[2]!.what), identicalToOneAtATime: identical },
    rangeByRange: { range: width, add: figure(folds[3]!.what), addAll: figure(folds[4]!.what), identicalMeans: rangesIdentical },
    naiveFloat64: figure(folds[5]!.what),
    foldKernelInCache: Object.fromEntries(kernelOnly.map(({ kernel }, i) => [kernel, figure(folds[6 + i]!.what)])),
    threaded: {
      threads,
      identical: threadedIdentical,
      rows: Object.fromEntries(threadedRows.map((r) => [r.what, figure(r.what)])),
      best: { GBps: bestThreaded, ratio: bestThreaded / readRate },
    },
    oneThreadBest: { GBps: bestOne, ratio: bestOne / readRate },
    inputSlotsOneThread: figure(folds.find((r) => r.what.includes('input slots (no copy), 1 thread'))!.what),
  };
}
