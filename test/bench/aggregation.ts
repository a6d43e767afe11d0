// Aggregation throughput: 10 updates of 10M float32 folded into the round's exact weighted sum
// (ExactWeightedSum, and RoundAccumulator around it, as the coordinator does), in GB/s of input
// (the updates' float32 bytes), against this machine's single-core memory read rate measured
// in the same process just before: a tight 4-accumulator sum over the same bytes as Float32 and
// as Float64, and a memcpy (TypedArray.set). Two ways to fold: one update at a time (add, what a
// coordinator does as updates arrive: each pass streams the 160 MB of state through memory),
// and all ten block by block (addAll: each block of state stays in cache while every update is
// folded into it); both give the same bits (checked). A naive float64 `acc[i] += w * x[i]` fold
// is printed beside them for reference. Every figure is the best of a few repetitions, on an
// accumulator whose memory was used before (a fresh one adds the page faults of its first pass).
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

  const oneAtATime = new ExactWeightedSum(n);
  const exact = best(
    reps,
    () => oneAtATime.reset(),
    () => {
      for (let k = 0; k < count; k++) oneAtATime.add(ups[k]!, weights[k]!);
      return oneAtATime.count;
    },
  );
  const batched = new ExactWeightedSum(n);
  const blocked = best(
    reps,
    () => batched.reset(),
    () => {
      batched.addAll(ups.map((values, k) => ({ values, weight: weights[k]! })));
      return batched.count;
    },
  );
  // Same bits either way?
  const a = oneAtATime.snapshot();
  const b = batched.snapshot();
  let identical = true;
  for (let i = 0; i < n && identical; i++) identical = a.hi[i] === b.hi[i] && a.lo[i] === b.lo[i];
  let finishS = 0;
  const roundAccumulator = new RoundAccumulator(n);
  const accumulator = best(
    reps,
    () => roundAccumulator.reset(),
    () => {
      const acc = roundAccumulator;
      for (let k = 0; k < count; k++) acc.add({ site: `site-${k}`, samples: weights[k]!, delta: ups[k]!, trainLoss: 0 });
      const t0 = performance.now();
      const agg = acc.take(1);
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

  const rows = [
    ['read rate: Float32 sum (4 accumulators)', read32, read32 / readRate],
    ['read rate: Float64 sum (4 accumulators)', read64, read64 / readRate],
    ['read rate: memcpy (TypedArray.set)', copy, copy / readRate],
    ['ExactWeightedSum.add x10, one update at a time', gbps(inputBytes, exact), gbps(inputBytes, exact) / readRate],
    ['ExactWeightedSum.addAll of the 10, block by block', gbps(inputBytes, blocked), gbps(inputBytes, blocked) / readRate],
    ['RoundAccumulator.add x10 + take (the mean)', gbps(inputBytes, accumulator), gbps(inputBytes, accumulator) / readRate],
    ['naive float64 acc[i] += w*x[i] x10', gbps(inputBytes, naive), gbps(inputBytes, naive) / readRate],
  ] as const;
  printTable(
    `Aggregation throughput: ${count} updates of ${(n / 1e6).toFixed(0)}M float32 (${(inputBytes / 1e9).toFixed(2)} GB of input), one core`,
    ['what', 'GB/s of input', 'vs read rate', 'ns / element'],
    rows.map(([what, rate, ratio]) => [what, fixed(rate, 2), `${fixed(ratio, 2)}x`, fixed(4 / rate, 2)]),
    [
      `read rate = the fastest of the three reads (${fixed(readRate, 2)} GB/s); target for the exact sum: >= 0.5x of it`,
      `ExactWeightedSum keeps two int64 per element (WebAssembly SIMD): one update at a time, each element moves 4 bytes of input and reads and writes 16 bytes of state (36 bytes of memory traffic per 4 bytes of input); block by block, the state stays in cache`,
      `add and addAll leave the same state bit for bit: ${identical ? 'yes' : 'NO'}`,
      `RoundAccumulator.take (the mean of ${(n / 1e6).toFixed(0)}M elements, over the sum's own memory, as the coordinator takes it): ${fixed(finishS * 1000, 0)} ms; best of ${reps} runs each`,
    ],
  );
  if (sunk === 0.123456789) process.stdout.write(' ');
  return {
    parameters: n,
    updates: count,
    inputBytes,
    readRateGBps: { float32Sum: read32, float64Sum: read64, memcpy: copy, reference: readRate },
    exactWeightedSum: { seconds: exact, GBps: gbps(inputBytes, exact), ratio: gbps(inputBytes, exact) / readRate },
    exactWeightedSumBlocked: {
      seconds: blocked,
      GBps: gbps(inputBytes, blocked),
      ratio: gbps(inputBytes, blocked) / readRate,
      identicalToOneAtATime: identical,
    },
    roundAccumulator: { seconds: accumulator, GBps: gbps(inputBytes, accumulator), ratio: gbps(inputBytes, accumulator) / readRate, finishSeconds: finishS },
    naiveFloat64: { seconds: naive, GBps: gbps(inputBytes, naive), ratio: gbps(inputBytes, naive) / readRate },
  };
}
