import { describe, expect, it } from 'vitest';
import { BLOCK, type FoldKernel, fusedMultiplyAdd, GROUP, type InputReading, maxAbs } from '../../core/aggregation/exact-kernel.ts';
import { allowWideSimd } from '../../core/aggregation/wide-simd.ts';
import { ExactWeightedSum, slotFolds } from '../../core/aggregation/exact-sum.ts';
import { foldPool } from '../../core/aggregation/fold-pool.ts';
import { RoundAccumulator } from '../../core/aggregation/round-accumulator.ts';
import { Rng } from '../../core/rng.ts';
import type { SiteFitResult } from '../../core/strategies/strategy.ts';

// As a coordinator process does: where the CPU has AVX2, the folds run 256 bits wide (this test
// process trains nothing), so that the tests below check that code too.
allowWideSimd();

const SIZE = 64;

interface Update {
  values: Float32Array;
  weight: number;
}

/** ~20 updates whose elements span 1e-6..1e3 in magnitude, with random signs and weights. */
function randomUpdates(rng: Rng, count: number, size: number): Update[] {
  return Array.from({ length: count }, () => {
    const values = new Float32Array(size);
    for (let i = 0; i < size; i++) values[i] = (rng.uniform() < 0.5 ? -1 : 1) * 10 ** (-6 + 9 * rng.uniform());
    // Sample-count-like weights, integer and not, from 1 to ~5000.
    const weight = rng.uniform() < 0.5 ? 1 + rng.int(5000) : 1 + 4999 * rng.uniform();
    return { values, weight };
  });
}

function bytes(a: Float64Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
}

/** round(v), ties to even, of a finite double, as a BigInt. */
function roundHalfEven(v: number): bigint {
  const f = Math.floor(v);
  const frac = v - f;
  return BigInt(frac > 0.5 || (frac === 0.5 && f % 2 !== 0) ? f + 1 : f);
}

function exactOf(updates: Update[], order: number[], opts: { shardElements?: number } = {}): ExactWeightedSum {
  const sum = new ExactWeightedSum(SIZE, opts);
  for (const k of order) sum.add(updates[k]!.values, updates[k]!.weight);
  return sum;
}

describe('ExactWeightedSum', () => {
  const rng = Rng.from(7, 'exact-sum');
  const updates = randomUpdates(rng, 20, SIZE);
  const identity = updates.map((_, k) => k);

  it('gives bit-identical means whatever the arrival order (200 shuffles)', () => {
    const reference = exactOf(updates, identity);
    const refMean = bytes(reference.mean());
    const refSum = bytes(reference.sum());
    for (let t = 0; t < 200; t++) {
      const order = rng.shuffle([...identity]) as number[];
      const sum = exactOf(updates, order);
      expect(bytes(sum.mean())).toEqual(refMean);
      expect(bytes(sum.sum())).toEqual(refSum);
      expect(sum.totalWeight).toBe(reference.totalWeight);
      expect(sum.count).toBe(20);
    }
  });

  it('agrees with the naive float64 mean to ~1e-12 of the terms it sums', () => {
    const mean = exactOf(updates, identity).mean();
    let weight = 0;
    for (const u of updates) weight += u.weight;
    for (let i = 0; i < SIZE; i++) {
      let naive = 0;
      let absSum = 0;
      for (const u of updates) {
        naive += u.weight * u.values[i]!;
        absSum += u.weight * Math.abs(u.values[i]!);
      }
      naive /= weight;
      expect(Math.abs(mean[i]! - naive)).toBeLessThanOrEqual(1e-12 * (absSum / weight));
      // Almost all elements have no catastrophic cancellation: plain relative error too.
      if (Math.abs(naive) > 1e-3 * (absSum / weight)) {
        expect(Math.abs(mean[i]! - naive)).toBeLessThanOrEqual(1e-12 * Math.abs(naive));
      }
    }
  });

  it('holds the exact sum of the contributions rounded to 2^-60, ties to even (BigInt reference)', () => {
    const sum = exactOf(updates, identity).sum();
    for (let i = 0; i < SIZE; i++) {
      let exact = 0n;
      for (const u of updates) exact += roundHalfEven(u.weight * u.values[i]! * 2 ** 60);
      // Number(BigInt) rounds to nearest, as the final hi + lo does: the same double.
      expect(sum[i]).toBe(Number(exact) * 2 ** -60);
    }
  });

  it('rounds a contribution that falls exactly between two grid points to the even one', () => {
    // [weight, x, the contribution rounded to 2^-60]: 1.5 and 2.5 units of 2^-60 both go to 2, also
    // where the contribution is split at 2^-8 (2^51 + 1.5 units: the part below 2^-8 is the tie).
    for (const [w, x, expected] of [
      [2 ** -20, 3 * 2 ** -41, 2 ** -59],
      [2 ** -20, 5 * 2 ** -41, 2 ** -59],
      [2 ** -20, -3 * 2 ** -41, -(2 ** -59)],
      [2 ** -9 + 3 * 2 ** -61, 1, 2 ** -9 + 2 ** -59],
      [2 ** -9 + 5 * 2 ** -61, 1, 2 ** -9 + 2 ** -59],
      [2 ** -9 + 3 * 2 ** -61, -1, -(2 ** -9 + 2 ** -59)],
    ] as const) {
      const sum = new ExactWeightedSum(1);
      sum.add(new Float32Array([x]), w);
      expect(sum.sum()[0]).toBe(expected);
    }
  });

  it('gives the same state over several shards, for addAll and for add in any order', () => {
    const n = 3 * BLOCK + 37;
    const rng2 = Rng.from(11, 'shards');
    const big = randomUpdates(rng2, 7, n);
    const one = new ExactWeightedSum(n);
    for (const u of big) one.add(u.values, u.weight);
    const reference = one.snapshot();
    for (const shardElements of [BLOCK, 2 * BLOCK]) {
      const sharded = new ExactWeightedSum(n, { shardElements });
      sharded.addAll((rng2.shuffle([...big]) as Update[]).map((u) => ({ values: u.values, weight: u.weight })));
      const snap = sharded.snapshot();
      expect(bytes(snap.hi)).toEqual(bytes(reference.hi));
      expect(bytes(snap.lo)).toEqual(bytes(reference.lo));
      expect(bytes(sharded.mean())).toEqual(bytes(one.mean()));
      const restored = ExactWeightedSum.fromSnapshot(snap, { shardElements });
      expect(bytes(restored.mean())).toEqual(bytes(one.mean()));
    }
  });

  it('carries between its two words every 1024 updates without changing the result', () => {
    const rng2 = Rng.from(5, 'carries');
    const few = randomUpdates(rng2, 3, SIZE);
    const sum = new ExactWeightedSum(SIZE);
    let exact = Array.from({ length: SIZE }, () => 0n);
    for (let t = 0; t < 2500; t++) {
      const u = few[t % 3]!;
      sum.add(u.values, u.weight);
      exact = exact.map((e, i) => e + roundHalfEven(u.weight * u.values[i]! * 2 ** 60));
    }
    const s = sum.sum();
    for (let i = 0; i < SIZE; i++) expect(s[i]).toBe(Number(exact[i]!) * 2 ** -60);
  });

  it('refuses a bad update in a late block, or in a batch, leaving the state untouched', () => {
    const n = 3 * BLOCK + 5;
    const sum = new ExactWeightedSum(n, { shardElements: 2 * BLOCK });
    const ok = new Float32Array(n).fill(0.25);
    sum.add(ok, 3);
    const before = sum.snapshot();
    const late = ok.slice();
    late[n - 2] = Number.NaN;
    expect(() => sum.add(late, 2)).toThrow(/NaN/);
    const large = ok.slice();
    large[2 * BLOCK + 1] = 2 ** 30;
    // 2^30 * 2^14 = 2^44: beyond what one update may weigh.
    expect(() => sum.add(large, 2 ** 14)).toThrow(/exact range/);
    expect(() =>
      sum.addAll([
        { values: ok, weight: 1 },
        { values: late, weight: 1 },
      ]),
    ).toThrow(/NaN/);
    const after = sum.snapshot();
    expect(bytes(after.hi)).toEqual(bytes(before.hi));
    expect(bytes(after.lo)).toEqual(bytes(before.lo));
    expect(sum.count).toBe(1);
    expect(sum.totalWeight).toBe(3);
    // And it goes on as if nothing had been tried.
    const clean = new ExactWeightedSum(n, { shardElements: 2 * BLOCK });
    clean.add(ok, 3);
    for (const s of [sum, clean])
      s.add(
        ok.map((x, i) => x * (i % 7)),
        5,
      );
    expect(bytes(sum.mean())).toEqual(bytes(clean.mean()));
  });

  it('takes the mean over its own memory once, then only reset() may follow', () => {
    const sum = exactOf(updates, identity);
    const mean = sum.mean();
    const taken = sum.takeMean();
    expect(bytes(taken)).toEqual(bytes(mean));
    expect(() => sum.add(updates[0]!.values, 1)).toThrow(/reset/);
    expect(() => sum.mean()).toThrow(/reset/);
    sum.reset();
    for (const k of identity) sum.add(updates[k]!.values, updates[k]!.weight);
    expect(bytes(sum.mean())).toEqual(bytes(mean));
  });

  it('is exact where float64 summation is not', () => {
    const big = new Float32Array([1e6]);
    const small = new Float32Array([0.001]);
    const minusBig = new Float32Array([-1e6]);
    // Naive float64: 5e12 + 0.001 loses part of the 0.001 to rounding (ulp(5e12) = 2^-10).
    expect(5e12 + Math.fround(0.001) - 5e12).not.toBe(Math.fround(0.001));
    for (const order of [
      [big, small, minusBig],
      [big, minusBig, small],
      [small, big, minusBig],
    ]) {
      const sum = new ExactWeightedSum(1);
      for (const x of order) sum.add(x, x === small ? 1 : 5e6);
      expect(sum.sum()[0]).toBe(Math.fround(0.001));
    }
  });

  it('merges partial sums in any split and order to the same bits', () => {
    const reference = exactOf(updates, identity).snapshot();
    for (let t = 0; t < 50; t++) {
      const parts = 1 + rng.int(6);
      const partials = Array.from({ length: parts }, () => new ExactWeightedSum(SIZE));
      for (const k of rng.shuffle([...identity]) as number[]) partials[rng.int(parts)]!.add(updates[k]!.values, updates[k]!.weight);
      const order = rng.shuffle(partials.map((_, i) => i)) as number[];
      const total = partials[order[0]!]!;
      for (const i of order.slice(1)) total.merge(partials[i]!);
      const snap = total.snapshot();
      expect(bytes(snap.hi)).toEqual(bytes(reference.hi));
      expect(bytes(snap.lo)).toEqual(bytes(reference.lo));
      expect(bytes(snap.weight)).toEqual(bytes(reference.weight));
      expect(bytes(snap.magnitude)).toEqual(bytes(reference.magnitude));
      expect(snap.count).toBe(20);
    }
  });

  it('round-trips a snapshot: restore then continue equals uninterrupted', () => {
    const first = exactOf(updates, identity.slice(0, 10));
    const restored = ExactWeightedSum.fromSnapshot(first.snapshot());
    for (const k of identity.slice(10)) {
      first.add(updates[k]!.values, updates[k]!.weight);
      restored.add(updates[k]!.values, updates[k]!.weight);
    }
    expect(bytes(restored.mean())).toEqual(bytes(first.mean()));
    expect(restored.count).toBe(first.count);
    expect(restored.totalWeight).toBe(first.totalWeight);
    // The snapshot is a copy, not a view.
    const snap = restored.snapshot();
    snap.hi[0] = 12345;
    expect(restored.snapshot().hi[0]).not.toBe(12345);
  });

  it('rejects snapshots that are not canonical', () => {
    const snap = exactOf(updates, identity).snapshot();
    expect(() => ExactWeightedSum.fromSnapshot({ ...snap, lo: snap.lo.slice(1) })).toThrow(RangeError);
    const badLo = snap.lo.slice();
    badLo[3] = 0.5;
    expect(() => ExactWeightedSum.fromSnapshot({ ...snap, lo: badLo })).toThrow(RangeError);
    const badHi = snap.hi.slice();
    badHi[3] = 0.001;
    expect(() => ExactWeightedSum.fromSnapshot({ ...snap, hi: badHi })).toThrow(RangeError);
    expect(() => ExactWeightedSum.fromSnapshot({ ...snap, count: -1 })).toThrow(RangeError);
  });

  it('rejects bad input with RangeError and leaves its state untouched', () => {
    const sum = exactOf(updates, identity.slice(0, 3));
    const before = sum.snapshot();
    const ok = new Float32Array(SIZE).fill(1);
    const withNaN = ok.slice();
    withNaN[5] = Number.NaN;
    const withInf = ok.slice();
    withInf[SIZE - 1] = -Infinity;
    expect(() => sum.add(new Float32Array(SIZE - 1), 1)).toThrow(RangeError);
    for (const w of [0, -1, Number.NaN, Infinity, 1e-9]) expect(() => sum.add(ok, w)).toThrow(RangeError);
    expect(() => sum.add(withNaN, 1)).toThrow(/NaN/);
    expect(() => sum.add(withInf, 1)).toThrow(/NaN or Infinity/);
    // Beyond the exactness bound (weight * max|x| reaching 2^44).
    expect(() => sum.add(ok, 2 ** 44)).toThrow(/exact range/);
    expect(() => sum.merge(new ExactWeightedSum(SIZE + 1))).toThrow(RangeError);
    expect(() => sum.merge(sum)).toThrow(RangeError);
    expect(() => new ExactWeightedSum(3).mean()).toThrow(RangeError);
    const after = sum.snapshot();
    expect(bytes(after.hi)).toEqual(bytes(before.hi));
    expect(bytes(after.lo)).toEqual(bytes(before.lo));
    expect(bytes(after.weight)).toEqual(bytes(before.weight));
    expect(after.count).toBe(3);
  });
});

describe('ExactWeightedSum in batches, with either fold kernel and either reading of the inputs', () => {
  const kernels: Array<{ kernel: FoldKernel; reading: InputReading }> = (fusedMultiplyAdd() ? (['plain', 'fused'] as const) : (['plain'] as const)).flatMap(
    (kernel) => (['promote', 'bits'] as const).map((reading) => ({ kernel, reading })),
  );

  /** Values that stress the fold: wide magnitudes, zeros, subnormals, and ties at both splits (2^-8, 2^-60). */
  function hardValues(rng: Rng, n: number): Float32Array {
    const kinds = [
      () => 0,
      () => 1e-40 * (1 + rng.int(1000)), // float32 subnormals
      () => (2 * rng.int(1000) + 1) * 2 ** -61, // halfway between multiples of 2^-60 (weight 1)
      () => (rng.int(1000) + 0.5) * 2 ** -8, // halfway between multiples of 2^-8
      () => 10 ** (-9 + 12 * rng.uniform()),
    ];
    const values = new Float32Array(n);
    for (let i = 0; i < n; i++) values[i] = (rng.uniform() < 0.5 ? -1 : 1) * kinds[Math.min(rng.int(10), 4)]!();
    return values;
  }

  /** Per element, Sum_k round(w_k x_k 2^60), ties to even: the exact state, in units of 2^-60. */
  function exactSums(batch: Update[], n: number): bigint[] {
    const exact = Array.from({ length: n }, () => 0n);
    for (const u of batch) for (let i = 0; i < n; i++) exact[i]! += roundHalfEven(u.weight * u.values[i]! * 2 ** 60);
    return exact;
  }

  /** The state against the BigInt reference: (hi, lo) is its canonical pair, bit for bit. */
  function expectState(sum: ExactWeightedSum, exact: bigint[]): void {
    const snap = sum.snapshot();
    for (let i = 0; i < exact.length; i++) {
      const h = exact[i]! >> 52n;
      if (snap.hi[i] !== Number(h) * 2 ** -8 || snap.lo[i] !== Number(exact[i]! - (h << 52n)) * 2 ** -60) {
        expect({ i, hi: snap.hi[i], lo: snap.lo[i] }).toEqual({ i, hi: Number(h) * 2 ** -8, lo: Number(exact[i]! - (h << 52n)) * 2 ** -60 });
      }
    }
  }

  it('folds a batch to the bits of one update at a time and of a BigInt reference', () => {
    const rng = Rng.from(3, 'batches');
    for (let t = 0; t < 5; t++) {
      // Sizes across blocks (and a shard boundary), batches across groups of GROUP.
      const n = t === 0 ? 37 : BLOCK * (1 + rng.int(2)) + rng.int(BLOCK);
      const count = 1 + rng.int(3 * GROUP);
      const batch: Update[] = Array.from({ length: count }, () => ({
        values: hardValues(rng, n),
        weight: [1, 1 + rng.int(5000), 1 + 4999 * rng.uniform(), 2 ** -20 * (1 + rng.uniform())][rng.int(4)]!,
      }));
      const exact = exactSums(batch, n);
      let reference: Uint8Array | undefined;
      for (const fold of kernels) {
        const one = new ExactWeightedSum(n, { ...fold });
        for (const u of batch) one.add(u.values, u.weight);
        const sharded = new ExactWeightedSum(n, { ...fold, shardElements: BLOCK });
        const shuffled = rng.shuffle([...batch]) as Update[];
        for (let at = 0; at < count; ) {
          const take = 1 + rng.int(count - at);
          sharded.addAll(shuffled.slice(at, at + take));
          at += take;
        }
        expectState(one, exact);
        expectState(sharded, exact);
        expect(bytes(sharded.mean())).toEqual(bytes(one.mean()));
        expect(sharded.count).toBe(count);
        reference ??= bytes(one.mean());
        expect(bytes(one.mean())).toEqual(reference);
      }
    }
  });

  it('takes a batch with a refused update out exactly, whatever its group and block', () => {
    const rng = Rng.from(9, 'refused');
    const n = 3 * BLOCK + 11;
    const batch: Update[] = Array.from({ length: 2 * GROUP + 1 }, () => ({ values: hardValues(rng, n), weight: 1 + rng.int(100) }));
    for (const fold of kernels) {
      const sum = new ExactWeightedSum(n, { ...fold });
      sum.addAll(batch.slice(0, 3));
      const before = sum.snapshot();
      for (let t = 0; t < 6; t++) {
        const bad = batch.map((u) => ({ values: u.values, weight: u.weight }));
        const k = rng.int(bad.length);
        const values = bad[k]!.values.slice();
        const i = n - 1 - rng.int(BLOCK);
        values[i] = [Number.NaN, Infinity, 2 ** 43][t % 3]!;
        bad[k] = { values, weight: bad[k]!.weight };
        expect(() => sum.addAll(bad)).toThrow(t % 3 === 2 ? /exact range/ : /NaN or Infinity/);
        const after = sum.snapshot();
        expect(bytes(after.hi)).toEqual(bytes(before.hi));
        expect(bytes(after.lo)).toEqual(bytes(before.lo));
        expect(bytes(after.magnitude)).toEqual(bytes(before.magnitude));
        expect(sum.count).toBe(3);
      }
      sum.addAll(batch.slice(3));
      expectState(sum, exactSums(batch, n));
    }
  });

  it('carries a block within one batch of thousands of updates, and across thousands of merges', () => {
    // Each contribution puts almost 2^51 (or, carried, almost 2^52) into L: 5000 of them would
    // overflow its int64 without the carries a block makes on its own.
    const x = new Float32Array(16).fill(2 ** -9 - 2 ** -30);
    const batch = Array.from({ length: 5000 }, () => ({ values: x, weight: 1 }));
    const y = new Float32Array(16).fill(2 ** -8 - 2 ** -30);
    for (const fold of kernels) {
      const sum = new ExactWeightedSum(16, { ...fold });
      sum.addAll(batch);
      expectState(sum, exactSums(batch, 16));
      const one = new ExactWeightedSum(16, { ...fold });
      one.add(y, 1);
      one.sum(); // carried: L is 2^52 - 2^30, and stays so
      const total = new ExactWeightedSum(16, { ...fold });
      for (let t = 0; t < 4500; t++) total.merge(one);
      expectState(total, exactSums([{ values: y, weight: 4500 }], 16));
    }
  });

  it('reads inputs by their bits to the same sums as by promotion, also once V8 has optimized (and, with AVX2, widened) the kernels', () => {
    // The first calls run V8's baseline code; some hundred blocks later the optimized (and, where
    // wide-simd.ts turned it on, revectorized) code takes over. Three passes over batches of 9, 4,
    // 2 and 1 updates (fold3, fold4, fold2, fold1), so that the last ones run the optimized code,
    // compared bit for bit with the other reading and with the BigInt reference on every element
    // with a special value and a sample of the rest.
    const rng = Rng.from(12, 'readings');
    const n = 32 * BLOCK + 40;
    const specials = [0, -0, 2 ** -149, -(2 ** -149), 2 ** -126 - 2 ** -149, 2 ** -126, -(2 ** 42), 2 ** 42, 2 ** 42 - 2 ** 18, 1, -1];
    const at = (k: number, i: number) => (k * 7919 + i * 104729) % n;
    const batch: Update[] = Array.from({ length: 2 * GROUP + 1 }, (_, k) => {
      const weight = k === 0 ? 1 : [1 + rng.int(5000), 1 + 4999 * rng.uniform(), 2 ** -20 * (1 + rng.uniform())][rng.int(3)]!;
      const values = hardValues(rng, n);
      // Magnitudes of 2^42 only at weight 1, so that the batch stays in the exact range.
      for (let i = 0; i < specials.length; i++) values[at(k, i)] = weight === 1 ? specials[i]! : specials[i]! / 2 ** 22;
      return { values, weight };
    });
    const watched = new Set<number>();
    for (let k = 0; k < batch.length; k++) for (let i = 0; i < specials.length; i++) watched.add(at(k, i));
    for (let i = 0; i < n; i += 4099) watched.add(i);
    for (let pass = 0; pass < 3; pass++) {
      for (const take of [2 * GROUP + 1, GROUP, 2, 1]) {
        const updates = batch.slice(0, take);
        const snaps = (['promote', 'bits'] as const).map((reading) => {
          const sum = new ExactWeightedSum(n, { reading });
          sum.addAll(updates);
          return sum.snapshot();
        });
        // The first element whose bits differ, if any (toEqual on megabytes is slow).
        const firstDifference = (a: Float64Array, b: Float64Array) => a.findIndex((v, i) => !Object.is(v, b[i]));
        expect([take, firstDifference(snaps[1]!.hi, snaps[0]!.hi), firstDifference(snaps[1]!.lo, snaps[0]!.lo)]).toEqual([take, -1, -1]);
        for (const i of watched) {
          const e = updates.reduce((acc, u) => acc + roundHalfEven(u.weight * u.values[i]! * 2 ** 60), 0n);
          const h = e >> 52n;
          expect([i, snaps[1]!.hi[i], snaps[1]!.lo[i]]).toEqual([i, Number(h) * 2 ** -8, Number(e - (h << 52n)) * 2 ** -60]);
        }
      }
    }
  });

  it('scans max|x| on the bit patterns: NaN of either sign, infinities, subnormals, zeros', () => {
    const rng = Rng.from(4, 'scan');
    for (let t = 0; t < 20; t++) {
      const values = hardValues(rng, 1 + rng.int(2 * BLOCK));
      let m = 0;
      for (const v of values) m = Math.max(m, Math.abs(v));
      expect(maxAbs(values)).toBe(m);
      const at = rng.int(values.length);
      values[at] = -Infinity;
      expect(maxAbs(values)).toBe(Infinity);
      new Uint32Array(values.buffer)[rng.int(values.length)] = t % 2 === 0 ? 0xffc00000 : 0x7f800001; // -NaN, a signalling NaN
      expect(maxAbs(values)).toBeNaN();
    }
  });
});

describe('ExactWeightedSum folded by several threads', () => {
  /** `values` copied into a SharedArrayBuffer (what helper threads can read). */
  const shared = (values: Float32Array) => {
    const out = new Float32Array(new SharedArrayBuffer(values.byteLength));
    out.set(values);
    return out;
  };
  const wide = (rng: Rng, n: number) => Float32Array.from({ length: n }, () => (rng.uniform() < 0.5 ? -1 : 1) * 10 ** (-9 + 12 * rng.uniform()));

  it('gives the bits of one thread, in batches, one at a time and over several shards; the helpers fold their runs', () => {
    const rng = Rng.from(21, 'threads');
    const n = 11 * BLOCK + 123;
    const batch = Array.from({ length: 2 * GROUP + 3 }, () => ({ values: shared(wide(rng, n)), weight: 1 + rng.int(3000) }));
    const one = new ExactWeightedSum(n);
    one.addAll(batch.map((u) => ({ values: u.values.slice(), weight: u.weight })));
    const reference = one.snapshot();
    const before = foldPool().helperBlocks;
    for (const threads of [2, 3]) {
      const many = new ExactWeightedSum(n, { threads });
      many.addAll(batch.slice(0, 5));
      for (const u of batch.slice(5)) many.add(u.values, u.weight);
      const sharded = new ExactWeightedSum(n, { threads, shardElements: 8 * BLOCK });
      sharded.addAll(batch);
      for (const sum of [many, sharded]) {
        const snap = sum.snapshot();
        expect(Buffer.from(bytes(snap.hi)).equals(Buffer.from(bytes(reference.hi)))).toBe(true);
        expect(Buffer.from(bytes(snap.lo)).equals(Buffer.from(bytes(reference.lo)))).toBe(true);
        expect(Buffer.from(bytes(sum.mean())).equals(Buffer.from(bytes(one.mean())))).toBe(true);
      }
    }
    expect(foldPool().helperBlocks).toBeGreaterThan(before);
  });

  it("refuses a batch with a bad value in any thread's run, leaving the state as it was, and goes on to the same bits", () => {
    const rng = Rng.from(22, 'threads-refused');
    const n = 12 * BLOCK + 5;
    const batch = Array.from({ length: GROUP + 2 }, () => ({ values: shared(wide(rng, n)), weight: 1 + rng.int(100) }));
    const sum = new ExactWeightedSum(n, { threads: 3 });
    sum.addAll(batch.slice(0, 2));
    const before = sum.snapshot();
    // A value in the caller's run (first blocks), in the middle helper's, in the last one's.
    for (const [t, at] of [5, 6 * BLOCK + 7, n - 2].entries()) {
      const bad = batch.slice(2).map((u) => ({ values: shared(u.values), weight: u.weight }));
      bad[t % bad.length]!.values[at] = [Number.NaN, -Infinity, 2 ** 43][t]!;
      expect(() => sum.addAll(bad)).toThrow(t === 2 ? /beyond the exact range 2\^43/ : /NaN or Infinity/);
      const after = sum.snapshot();
      expect(bytes(after.hi)).toEqual(bytes(before.hi));
      expect(bytes(after.lo)).toEqual(bytes(before.lo));
      expect(bytes(after.magnitude)).toEqual(bytes(before.magnitude));
      expect(sum.count).toBe(2);
    }
    // A total past the exact range (M = Sum weight * max|x| >= 2^44), found only once every run is folded.
    const heavy = Array.from({ length: 5 }, () => ({ values: shared(new Float32Array(n).fill(2 ** 20)), weight: 2 ** 22 }));
    expect(() => sum.addAll(heavy)).toThrow(/Sum weight\*max\|x\| would reach .* beyond the exact range 2\^44/);
    expect(bytes(sum.snapshot().hi)).toEqual(bytes(before.hi));
    sum.addAll(batch.slice(2));
    const one = new ExactWeightedSum(n);
    one.addAll(batch);
    expect(bytes(sum.snapshot().hi)).toEqual(bytes(one.snapshot().hi));
    expect(bytes(sum.snapshot().lo)).toEqual(bytes(one.snapshot().lo));
  });

  it('folds updates written into its input slots where they lie (one thread or several), to the same bits; a refused batch is taken out', () => {
    const rng = Rng.from(24, 'slots');
    const n = 9 * BLOCK + 77;
    const batch = Array.from({ length: GROUP + 3 }, () => ({ values: wide(rng, n), weight: 1 + rng.int(500) }));
    const one = new ExactWeightedSum(n);
    one.addAll(batch);
    const reference = one.snapshot();
    for (const threads of [1, 2]) {
      const sum = new ExactWeightedSum(n, { threads, inputs: batch.length });
      const slots = batch.map((u, k) => {
        const slot = sum.input(k);
        slot.set(u.values);
        return { values: slot, weight: u.weight };
      });
      expect(() => sum.input(batch.length)).toThrow(RangeError);
      const folds = slotFolds.batches;
      sum.addAll(slots.slice(0, 3));
      expect(slotFolds.batches).toBe(folds + 1);
      const before = sum.snapshot();
      slots[4]!.values[n - 1] = Number.NaN;
      expect(() => sum.addAll(slots.slice(3))).toThrow(/NaN or Infinity/);
      expect(Buffer.from(bytes(sum.snapshot().hi)).equals(Buffer.from(bytes(before.hi)))).toBe(true);
      slots[4]!.values[n - 1] = batch[4]!.values[n - 1]!;
      sum.addAll(slots.slice(3));
      const snap = sum.snapshot();
      expect(Buffer.from(bytes(snap.hi)).equals(Buffer.from(bytes(reference.hi)))).toBe(true);
      expect(Buffer.from(bytes(snap.lo)).equals(Buffer.from(bytes(reference.lo)))).toBe(true);
    }
    expect(() => new ExactWeightedSum(3 * BLOCK, { shardElements: BLOCK, inputs: 1 })).toThrow(/input slots need a sum of one shard/);
  });

  it('folds updates that are not in SharedArrayBuffers in the calling thread', () => {
    const rng = Rng.from(23, 'threads-unshared');
    const n = 10 * BLOCK;
    const u = wide(rng, n);
    const before = foldPool().helperBlocks;
    const sum = new ExactWeightedSum(n, { threads: 2 });
    sum.add(u, 7);
    expect(foldPool().helperBlocks).toBe(before);
    const one = new ExactWeightedSum(n);
    one.add(u, 7);
    expect(bytes(sum.mean())).toEqual(bytes(one.mean()));
  });
});

describe('RoundAccumulator', () => {
  const result = (site: string, samples: number, delta: number[], controlDelta?: number[]): SiteFitResult => ({
    site,
    samples,
    delta: new Float32Array(delta),
    ...(controlDelta ? { controlDelta: new Float32Array(controlDelta) } : {}),
    trainLoss: samples / 100,
  });

  it('weights deltas by samples and control deltas by 1', () => {
    const acc = new RoundAccumulator(3, { control: true });
    expect(acc.add(result('a', 1, [1, 2, -3], [0.5, 0, 1]))).toBe(true);
    expect(acc.add(result('b', 3, [5, -2, 1], [1.5, 1, -2]))).toBe(true);
    const agg = acc.finish(4);
    // (1*[1,2,-3] + 3*[5,-2,1]) / 4 and ([0.5,0,1] + [1.5,1,-2]) / 2
    expect([...agg.meanDelta]).toEqual([4, -1, 0]);
    expect([...agg.meanControlDelta!]).toEqual([1, 0.5, -0.5]);
    expect(agg).toMatchObject({ round: 4, sites: 2, totalSamples: 4 });
    expect(acc.participants()).toEqual(['a', 'b']);
    expect(acc.fitLoss()).toBeCloseTo(0.02, 15);
  });

  it('takes the aggregate over its own memory: the same bits as finish, then reset() for the next round', () => {
    const acc = new RoundAccumulator(3, { control: true });
    acc.add(result('a', 1, [1, 2, -3], [0.5, 0, 1]));
    acc.add(result('b', 3, [5, -2, 1], [1.5, 1, -2]));
    const finished = acc.finish(4);
    const taken = acc.take(4);
    expect(bytes(taken.meanDelta)).toEqual(bytes(finished.meanDelta));
    expect(bytes(taken.meanControlDelta!)).toEqual(bytes(finished.meanControlDelta!));
    expect(() => acc.finish(4)).toThrow(/reset/);
    acc.reset();
    expect(acc.sites).toBe(0);
    acc.add(result('a', 1, [1, 2, -3], [0.5, 0, 1]));
    acc.add(result('b', 3, [5, -2, 1], [1.5, 1, -2]));
    expect(bytes(acc.take(5).meanDelta)).toEqual(bytes(finished.meanDelta));
  });

  it('ignores a second update from the same site', () => {
    const acc = new RoundAccumulator(2);
    expect(acc.add(result('a', 2, [1, 1]))).toBe(true);
    expect(acc.add(result('a', 5, [9, 9]))).toBe(false);
    expect(acc.sites).toBe(1);
    expect([...acc.finish(1).meanDelta]).toEqual([1, 1]);
  });

  it('throws on shape mismatch and bad sample counts, changing nothing', () => {
    const acc = new RoundAccumulator(2);
    expect(() => acc.add(result('a', 2, [1, 1, 1]))).toThrow(RangeError);
    expect(() => acc.add(result('a', 0, [1, 1]))).toThrow(RangeError);
    expect(() => acc.add(result('a', 1.5, [1, 1]))).toThrow(RangeError);
    expect(() => acc.add(result('a', 2, [1, 1], [0, 0]))).toThrow(/unexpected controlDelta/);
    expect(() => acc.add(result('a', 2, [Number.NaN, 1]))).toThrow(/site "a"/);
    const scaffold = new RoundAccumulator(2, { control: true });
    expect(() => scaffold.add(result('a', 2, [1, 1]))).toThrow(/without controlDelta/);
    expect(() => scaffold.add(result('a', 2, [1, 1], [0]))).toThrow(RangeError);
    expect(() => scaffold.add(result('a', 2, [1, 1], [Number.NaN, 0]))).toThrow(RangeError);
    expect(acc.sites).toBe(0);
    expect(scaffold.sites).toBe(0);
    expect(() => acc.finish(1)).toThrow(RangeError);
    // A failed attempt does not count as the site's update.
    expect(acc.add(result('a', 2, [1, 1]))).toBe(true);
  });

  it('is order-free and merges disjoint partials to the same bits', () => {
    const rng = Rng.from(3, 'round-accumulator');
    const results = randomUpdates(rng, 12, SIZE).map((u, k) => ({
      site: `site-${k}`,
      samples: 1 + rng.int(1000),
      delta: u.values,
      controlDelta: randomUpdates(rng, 1, SIZE)[0]!.values,
      trainLoss: rng.uniform(),
    }));
    const single = new RoundAccumulator(SIZE, { control: true });
    for (const r of results) single.add(r);
    const ref = single.finish(2);
    for (let t = 0; t < 20; t++) {
      const a = new RoundAccumulator(SIZE, { control: true });
      const b = new RoundAccumulator(SIZE, { control: true });
      for (const r of rng.shuffle([...results]) as SiteFitResult[]) (rng.uniform() < 0.5 ? a : b).add(r);
      if (rng.uniform() < 0.5) {
        a.merge(b);
      } else {
        b.merge(a);
      }
      const merged = (a.sites === 12 ? a : b).finish(2);
      expect(bytes(merged.meanDelta)).toEqual(bytes(ref.meanDelta));
      expect(bytes(merged.meanControlDelta!)).toEqual(bytes(ref.meanControlDelta!));
      expect(merged.totalSamples).toBe(ref.totalSamples);
      expect((a.sites === 12 ? a : b).fitLoss()).toBe(single.fitLoss());
    }
  });

  it('refuses to merge overlapping or differently shaped partials', () => {
    const a = new RoundAccumulator(2);
    const b = new RoundAccumulator(2);
    a.add(result('x', 1, [1, 1]));
    b.add(result('x', 1, [1, 1]));
    expect(() => a.merge(b)).toThrow(/both/);
    expect(() => a.merge(new RoundAccumulator(3))).toThrow(RangeError);
    expect(() => a.merge(new RoundAccumulator(2, { control: true }))).toThrow(RangeError);
    expect(a.sites).toBe(1);
  });
});
