// Aggregation throughput: 10 updates of 10M float32 folded into the round's exact weighted sum
// (ExactWeightedSum, and RoundAccumulator around it, as the coordinator does), in GB/s of input
// (the updates' float32 bytes), against this machine's single-core memory read rate measured
// in the same process just before: a tight 4-accumulator sum over the same bytes as Float32 and
// as Float64, and a memcpy (TypedArray.set). A naive float64 `acc[i] += w * x[i]` fold is
// printed beside it for reference. Every figure is the best of a few repetitions.
import { ExactWeightedSum } from '../../core/aggregation/exact-sum.ts';
import { RoundAccumulator } from '../../core/aggregation/round-accumulator.ts';
import { fixed, printTable } from './table.ts';

export interface AggregationArgs {
  quick: boolean;
}

/** Deterministic values in [-0.01, 0.01) (xorshift32), like a round's deltas. */
function updates(count: number, n: number): Float32Array[] {
  let s = 0x9e3779b9;
  return Array.from({ length: count }, () => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      a[i] = ((s >>> 0) / 2 ** 32 - 0.5) * 0.02;
    }
    return a;
  });
}

/** Best wall time (s) of `reps` runs of `fn`; `setup` (untimed) runs before each. */
function best<S>(reps: number, setup: () => S, fn: (s: S) => unknown): number {
  let t = Number.POSITIVE_INFINITY;
  for (let r = 0; r < reps; r++) {
    const s = setup();
    const t0 = performance.now();
    sink(fn(s));
    t = Math.min(t, (performance.now() - t0) / 1000);
  }
  return t;
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

/**
 * The proposal, not product code: the same exact fold as ExactWeightedSum.add, chunk-major over
 * all the round's updates at once (as a coordinator that aggregates over the stored objects'
 * chunks would), so that a block of state stays in cache while every update is folded into it.
 * Same arithmetic, so the same bits (checked below).
 */
function blockedExactFold(hi: Float64Array, lo: Float64Array, xs: Float32Array[], ws: number[], block: number): void {
  const TWO60 = 2 ** 60;
  const INV60 = 2 ** -60;
  const TWO8 = 2 ** 8;
  const INV8 = 2 ** -8;
  const n = hi.length;
  for (let b = 0; b < n; b += block) {
    const end = Math.min(n, b + block);
    for (let k = 0; k < xs.length; k++) {
      const x = xs[k]!;
      const w = ws[k]!;
      for (let i = b; i < end; i++) {
        const qr = Math.floor(w * x[i]! * TWO60 + 0.5) * INV60;
        const qh = Math.floor(qr * TWO8) * INV8;
        const l = lo[i]! + (qr - qh);
        const c = Math.floor(l * TWO8) * INV8;
        hi[i] = hi[i]! + (qh + c);
        lo[i] = l - c;
      }
    }
  }
}

function naiveFold(acc: Float64Array, x: Float32Array, w: number): void {
  for (let i = 0; i < x.length; i++) acc[i] = acc[i]! + w * x[i]!;
}

export async function run(args: AggregationArgs): Promise<unknown> {
  const n = args.quick ? 2_000_000 : 10_000_000;
  const count = 10;
  const reps = args.quick ? 2 : 3;
  const ups = updates(count, n);
  const weights = ups.map((_, k) => 50 + 17 * k);
  const inputBytes = count * n * 4;
  const gbps = (bytes: number, s: number) => bytes / s / 1e9;

  // The reference: reading the same number of bytes as fast as one core does here.
  // Every page written: a never-written page reads as the kernel's shared zero page, from cache.
  const as64 = new Float64Array(inputBytes / 8);
  for (let at = 0; at < as64.length; at += n) as64.set(ups[(at / n) % count]!.subarray(0, Math.min(n, as64.length - at)), at);
  const dst = new Float32Array(n).fill(1);
  const read32 = gbps(
    inputBytes,
    best(
      reps,
      () => 0,
      () => {
        let s = 0;
        for (const u of ups) s += sum32(u);
        return s;
      },
    ),
  );
  const read64 = gbps(
    inputBytes,
    best(
      reps,
      () => 0,
      () => sum64(as64),
    ),
  );
  const copy = gbps(
    inputBytes,
    best(
      reps,
      () => 0,
      () => {
        for (const u of ups) dst.set(u);
        return dst;
      },
    ),
  );
  const readRate = Math.max(read32, read64, copy);

  const exact = best(
    reps,
    () => new ExactWeightedSum(n),
    (sum) => {
      for (let k = 0; k < count; k++) sum.add(ups[k]!, weights[k]!);
      return sum.count;
    },
  );
  let finishS = 0;
  const accumulator = best(
    reps,
    () => new RoundAccumulator(n),
    (acc) => {
      for (let k = 0; k < count; k++) acc.add({ site: `site-${k}`, samples: weights[k]!, delta: ups[k]!, trainLoss: 0 });
      const t0 = performance.now();
      const agg = acc.finish(1);
      finishS = (performance.now() - t0) / 1000;
      return agg.meanDelta;
    },
  );
  const naive = best(
    reps,
    () => new Float64Array(n),
    (acc) => {
      for (let k = 0; k < count; k++) naiveFold(acc, ups[k]!, weights[k]!);
      return acc;
    },
  );

  const block = 4096;
  const blocked = best(
    reps,
    () => ({ hi: new Float64Array(n), lo: new Float64Array(n) }),
    (st) => {
      blockedExactFold(st.hi, st.lo, ups, weights, block);
      return st.hi;
    },
  );
  // Same bits as ExactWeightedSum?
  const reference = new ExactWeightedSum(n);
  for (let k = 0; k < count; k++) reference.add(ups[k]!, weights[k]!);
  const mine = { hi: new Float64Array(n), lo: new Float64Array(n) };
  blockedExactFold(mine.hi, mine.lo, ups, weights, block);
  const snap = reference.snapshot();
  let identical = true;
  for (let i = 0; i < n && identical; i++) identical = snap.hi[i] === mine.hi[i] && snap.lo[i] === mine.lo[i];

  const rows = [
    ['read rate: Float32 sum (4 accumulators)', read32, read32 / readRate],
    ['read rate: Float64 sum (4 accumulators)', read64, read64 / readRate],
    ['read rate: memcpy (TypedArray.set)', copy, copy / readRate],
    ['ExactWeightedSum.add x10', gbps(inputBytes, exact), gbps(inputBytes, exact) / readRate],
    ['RoundAccumulator.add x10 + finish', gbps(inputBytes, accumulator), gbps(inputBytes, accumulator) / readRate],
    ['naive float64 acc[i] += w*x[i] x10', gbps(inputBytes, naive), gbps(inputBytes, naive) / readRate],
    [`proposal: same exact fold, chunk-major (${block}-element blocks)`, gbps(inputBytes, blocked), gbps(inputBytes, blocked) / readRate],
  ] as const;
  printTable(
    `Aggregation throughput: ${count} updates of ${(n / 1e6).toFixed(0)}M float32 (${(inputBytes / 1e9).toFixed(2)} GB of input), one core`,
    ['what', 'GB/s of input', 'vs read rate', 'ns / element'],
    rows.map(([what, rate, ratio]) => [what, fixed(rate, 2), `${fixed(ratio, 2)}x`, fixed(4 / rate, 2)]),
    [
      `read rate = the fastest of the three reads (${fixed(readRate, 2)} GB/s); target for the exact sum: >= 0.5x of it`,
      `ExactWeightedSum keeps 2 float64 per element (hi, lo): each add reads the update twice (range check, fold) and reads and writes 16 bytes of state per 4 bytes of input`,
      `proposal row: bench code, not product code; its state equals ExactWeightedSum's bit for bit: ${identical ? 'yes' : 'NO'}`,
      `RoundAccumulator.finish (the mean of ${(n / 1e6).toFixed(0)}M elements): ${fixed(finishS * 1000, 0)} ms; best of ${reps} runs each`,
    ],
  );
  if (sunk === 0.123456789) process.stdout.write(' ');
  return {
    parameters: n,
    updates: count,
    inputBytes,
    readRateGBps: { float32Sum: read32, float64Sum: read64, memcpy: copy, reference: readRate },
    exactWeightedSum: { seconds: exact, GBps: gbps(inputBytes, exact), ratio: gbps(inputBytes, exact) / readRate },
    roundAccumulator: { seconds: accumulator, GBps: gbps(inputBytes, accumulator), ratio: gbps(inputBytes, accumulator) / readRate, finishSeconds: finishS },
    blockedExactProposal: {
      seconds: blocked,
      GBps: gbps(inputBytes, blocked),
      ratio: gbps(inputBytes, blocked) / readRate,
      block,
      identicalToExactWeightedSum: identical,
    },
    naiveFloat64: { seconds: naive, GBps: gbps(inputBytes, naive), ratio: gbps(inputBytes, naive) / readRate },
  };
}
