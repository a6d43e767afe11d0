import { describe, expect, it } from 'vitest';
import type { CompressionSpec } from '../../core/job/federated-job.ts';
import { layoutSize, type ParameterLayout } from '../../core/model/layout.ts';
import {
  bytesOfUpdate,
  type Codec,
  decodeUpdate,
  encodeUpdate,
  float16BitsToFloat32,
  float32ToFloat16Bits,
  topkCount,
  UpdateDecodeError,
} from '../../core/protocol/codecs.ts';
import { Rng } from '../../core/rng.ts';
import { decodeTensors, encodeTensors, type NamedTensor } from '../../core/tensor/safetensors.ts';

const LAYOUT: ParameterLayout = [
  { name: 'conv/kernel', shape: [3, 3, 2, 4] },
  { name: 'conv/bias', shape: [4] },
  { name: 'dense/kernel', shape: [16, 5] },
  { name: 'dense/bias', shape: [5] },
];
const N = layoutSize(LAYOUT);
const LIMITS = { maxBytes: 1 << 20 };
const spec = (codec: Codec, topkFraction = 0.1): CompressionSpec => ({ codec, topkFraction });

function randomDelta(rng: Rng, n = N, scale = 0.05): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal(0, scale));
}

function decodeError(fn: () => unknown): UpdateDecodeError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(UpdateDecodeError);
    expect(err).toBeInstanceOf(RangeError);
    return err as UpdateDecodeError;
  }
  throw new Error('expected an UpdateDecodeError');
}

/** The tensors of an encoded update, to tamper with and re-encode. */
function tensorsOf(bytes: Uint8Array): { tensors: NamedTensor[]; metadata: Record<string, string> } {
  const { tensors, metadata } = decodeTensors(bytes, { maxBytes: 1 << 24, maxTensors: 1000 });
  return { tensors: [...tensors.values()], metadata };
}

describe('float16 conversion', () => {
  const f32 = (x: number) => Math.fround(x);
  it.each([
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [0.5, 0x3800],
    [f32(0.1), 0x2e66],
    [65504, 0x7bff], // largest finite half
    [65519, 0x7bff], // just below the midpoint to infinity
    [65520, 0x7c00], // the midpoint rounds (to even) to infinity
    [1e6, 0x7c00],
    [Number.POSITIVE_INFINITY, 0x7c00],
    [Number.NEGATIVE_INFINITY, 0xfc00],
    [2 ** -14, 0x0400], // 6.103515625e-5: smallest normal
    [f32(6.1e-5), 0x03ff], // just below it: the largest subnormal, 1023 * 2^-24
    [2 ** -14 - 2 ** -25, 0x0400], // halfway between 0x03ff (odd) and 0x0400: to even
    [2 ** -14 - 2 ** -24, 0x03ff],
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // halfway between 0 and 2^-24: to even (0)
    [f32(2 ** -25 * 1.001), 0x0001],
    [3 * 2 ** -25, 0x0002], // halfway between 1 and 2 units: to even
    [-(2 ** -24), 0x8001],
    [1e-40, 0x0000], // a float32 subnormal
    [1 + 2 ** -11, 0x3c00], // halfway between 1 and 1 + 2^-10: to even
    [1 + 3 * 2 ** -11, 0x3c02], // halfway between 0x3c01 and 0x3c02: to even
    [2048 + 1, 0x6800], // 2049 is halfway: to even 2048
    [2048 + 3, 0x6802],
  ])('%s -> 0x%s', (x, bits) => {
    expect(float32ToFloat16Bits(x).toString(16)).toBe(bits.toString(16));
  });

  it('keeps NaN a NaN', () => {
    const h = float32ToFloat16Bits(Number.NaN);
    expect(h & 0x7c00).toBe(0x7c00);
    expect(h & 0x3ff).not.toBe(0);
    expect(float16BitsToFloat32(h)).toBeNaN();
  });

  it('round-trips every finite half exactly', () => {
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7c00) === 0x7c00) continue;
      expect(float32ToFloat16Bits(float16BitsToFloat32(h))).toBe(h);
    }
    expect(float16BitsToFloat32(0x7bff)).toBe(65504);
    expect(float16BitsToFloat32(0x0001)).toBe(2 ** -24);
    expect(Object.is(float16BitsToFloat32(0x8000), -0)).toBe(true);
  });

  it('rounds random floats to the nearest half, ties to even (checked against a search)', () => {
    const rng = Rng.from(7, 'fp16');
    const halves = Array.from({ length: 0x7c00 }, (_, h) => float16BitsToFloat32(h)); // 0 .. 65504, ascending
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (let i = 0; i < 20_000; i++) {
      u[0] = (rng.uint32() & 0x7fffffff) % 0x47800000; // magnitudes below 65536
      const x = f[0]!;
      let lo = 0;
      let hi = halves.length - 1;
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (halves[mid]! <= x) lo = mid;
        else hi = mid;
      }
      const dl = x - halves[lo]!;
      const dh = halves[hi]! - x;
      const want = x >= 65520 ? 0x7c00 : dl < dh ? lo : dh < dl ? hi : lo % 2 === 0 ? lo : hi;
      expect(float32ToFloat16Bits(x)).toBe(x < halves[hi]! || x >= 65520 ? want : hi);
    }
  });
});

describe('encodeUpdate / decodeUpdate', () => {
  it('none is exact', () => {
    const rng = Rng.from(1, 'none');
    const delta = randomDelta(rng);
    delta[0] = 3.4e38;
    delta[1] = -1e-42;
    const { bytes, residual } = encodeUpdate(delta, LAYOUT, spec('none'));
    expect(residual).toBeUndefined();
    const back = decodeUpdate(bytes, LAYOUT, 'none', LIMITS);
    expect(Buffer.from(back.delta.buffer, back.delta.byteOffset, back.delta.byteLength).equals(Buffer.from(delta.buffer))).toBe(true);
    expect(back.control).toBeUndefined();
    expect(back.maxAbs).toBe(Math.fround(3.4e38));
  });

  it('none reads the values in place when they lie in layout order, and copies them otherwise', () => {
    const rng = Rng.from(9, 'none-order');
    const delta = randomDelta(rng);
    const control = randomDelta(rng);
    const { bytes } = encodeUpdate(delta, LAYOUT, spec('none'), { control });
    const inPlace = decodeUpdate(bytes, LAYOUT, 'none', LIMITS);
    expect(inPlace.delta.buffer).toBe(bytes.buffer);
    expect(inPlace.control!.buffer).toBe(bytes.buffer);
    // The same tensors written in another order (a valid file): the same values, copied.
    const { tensors, metadata } = decodeTensors(bytes, { maxBytes: 1 << 20, maxTensors: 64 });
    const shuffled = encodeTensors([...tensors.values()].reverse(), metadata);
    const copied = decodeUpdate(shuffled, LAYOUT, 'none', LIMITS);
    expect(copied.delta.buffer).not.toBe(shuffled.buffer);
    expect([...copied.delta]).toEqual([...delta]);
    expect([...copied.control!]).toEqual([...control]);
    // Not 4-byte aligned in memory: copied too.
    const odd = new Uint8Array(bytes.length + 1).subarray(1);
    odd.set(bytes);
    expect([...decodeUpdate(odd, LAYOUT, 'none', LIMITS).delta]).toEqual([...delta]);
  });

  it('fp16 decodes to the nearest half of each value and saturates at ±65504, the rest in the residual', () => {
    const rng = Rng.from(2, 'fp16');
    const delta = randomDelta(rng);
    delta[0] = 1e6;
    delta[1] = -70000;
    delta[2] = 1e-9;
    const { bytes, residual } = encodeUpdate(delta, LAYOUT, spec('fp16'));
    const back = decodeUpdate(bytes, LAYOUT, 'fp16', LIMITS).delta;
    expect(back[0]).toBe(65504);
    expect(back[1]).toBe(-65504);
    expect(back[2]).toBe(0);
    expect(residual![0]).toBe(Math.fround(1e6 - 65504));
    for (let i = 3; i < N; i++) {
      expect(back[i]).toBe(float16BitsToFloat32(float32ToFloat16Bits(delta[i]!)));
      expect(residual![i]).toBe(Math.fround(delta[i]! - back[i]!));
    }
    const fp16Tensor = tensorsOf(bytes).tensors.find((t) => t.name === 'dense/bias')!;
    expect(fp16Tensor.dtype).toBe('F16');
  });

  it('refuses NaN and Infinity on encode input', () => {
    for (const codec of ['none', 'fp16', 'int8', 'topk'] as const) {
      for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
        const delta = new Float32Array(N);
        delta[7] = bad;
        expect(() => encodeUpdate(delta, LAYOUT, spec(codec))).toThrow(RangeError);
        expect(() => encodeUpdate(new Float32Array(N), LAYOUT, spec(codec), { residual: delta })).toThrow(/residual\[7\]/);
        expect(() => encodeUpdate(new Float32Array(N), LAYOUT, spec(codec), { control: delta })).toThrow(/control\[7\]/);
      }
      const huge = new Float32Array(N).fill(3e38);
      expect(() => encodeUpdate(huge, LAYOUT, spec(codec), { residual: huge })).toThrow(/delta \+ residual/);
      expect(() => encodeUpdate(new Float32Array(N - 1), LAYOUT, spec(codec))).toThrow(/layout/);
    }
  });

  it('int8: per-tensor scale max|x|/127, error at most scale/2', () => {
    const rng = Rng.from(3, 'int8');
    for (let trial = 0; trial < 20; trial++) {
      const delta = randomDelta(rng, N, 10 ** (rng.uniform() * 8 - 6));
      const offset = 72 + 4; // dense/kernel
      for (let i = offset; i < offset + 80; i++) delta[i]! *= 1000; // tensors of very different ranges
      delta.fill(0, 72, 76); // conv/bias all zeros
      const { bytes, residual } = encodeUpdate(delta, LAYOUT, spec('int8'));
      const back = decodeUpdate(bytes, LAYOUT, 'int8', LIMITS).delta;
      const { tensors } = tensorsOf(bytes);
      let at = 0;
      for (const t of LAYOUT) {
        const size = t.shape.reduce((a, b) => a * b, 1);
        const scale = (tensors.find((x) => x.name === `${t.name}:scale`)!.data as Float32Array)[0]!;
        let maxAbs = 0;
        for (let i = at; i < at + size; i++) maxAbs = Math.max(maxAbs, Math.abs(delta[i]!));
        expect(scale).toBe(Math.fround(maxAbs / 127));
        expect(tensors.find((x) => x.name === t.name)!.dtype).toBe('I8');
        for (let i = at; i < at + size; i++) {
          expect(Math.abs(back[i]! - delta[i]!)).toBeLessThanOrEqual((scale / 2) * (1 + 1e-6) + 1e-45);
          expect(residual![i]).toBe(Math.fround(delta[i]! - back[i]!));
        }
        at += size;
      }
      expect([...back.subarray(72, 76)]).toEqual([0, 0, 0, 0]);
    }
  });

  it('topk keeps exactly the k largest magnitudes, indices ascending, ties to the lower index', () => {
    const rng = Rng.from(4, 'topk');
    for (const fraction of [0.01, 0.1, 0.37, 1]) {
      const delta = randomDelta(rng);
      delta[5] = 0.5;
      delta[9] = -0.5; // a tie
      const k = topkCount(N, fraction);
      expect(k).toBe(Math.max(1, Math.ceil(fraction * N)));
      const { bytes, residual } = encodeUpdate(delta, LAYOUT, spec('topk', fraction));
      const { tensors } = tensorsOf(bytes);
      const indices = [...(tensors.find((t) => t.name === 'indices')!.data as Int32Array)];
      expect(indices.length).toBe(k);
      expect(indices).toEqual([...indices].sort((a, b) => a - b));
      const want = [...delta.keys()]
        .sort((a, b) => Math.abs(delta[b]!) - Math.abs(delta[a]!) || a - b)
        .slice(0, k)
        .sort((a, b) => a - b);
      expect(indices).toEqual(want);
      const back = decodeUpdate(bytes, LAYOUT, 'topk', LIMITS).delta;
      for (let i = 0; i < N; i++) {
        expect(back[i]).toBe(want.includes(i) ? delta[i] : 0);
        expect(residual![i]).toBe(want.includes(i) ? 0 : delta[i]);
      }
    }
    // All equal magnitudes: the first k.
    const flat = new Float32Array(N).fill(0.25);
    const { bytes } = encodeUpdate(flat, LAYOUT, spec('topk', 0.05));
    const indices = tensorsOf(bytes).tensors.find((t) => t.name === 'indices')!.data as Int32Array;
    expect([...indices]).toEqual(Array.from({ length: topkCount(N, 0.05) }, (_, i) => i));
  });

  it('topk error feedback: what arrives sums to what was sent, minus a bounded residual', () => {
    const rng = Rng.from(5, 'feedback');
    const fraction = 0.05;
    const k = topkCount(N, fraction);
    const sent = new Float64Array(N);
    const arrived = new Float64Array(N);
    let residual: Float32Array | undefined;
    let maxDelta = 0;
    let maxResidual = 0;
    for (let step = 0; step < 200; step++) {
      const delta = randomDelta(rng, N, 0.01);
      for (let i = 0; i < N; i++) {
        sent[i]! += delta[i]!;
        maxDelta = Math.max(maxDelta, Math.abs(delta[i]!));
      }
      const encoded = encodeUpdate(delta, LAYOUT, spec('topk', fraction), residual ? { residual } : {});
      residual = encoded.residual!;
      const back = decodeUpdate(encoded.bytes, LAYOUT, 'topk', { maxBytes: 1 << 20, topkFraction: fraction }).delta;
      for (let i = 0; i < N; i++) arrived[i]! += back[i]!;
      for (let i = 0; i < N; i++) maxResidual = Math.max(maxResidual, Math.abs(residual[i]!));
    }
    // Telescoping: sum(sent) - sum(arrived) = final residual (up to float32 rounding of each step).
    for (let i = 0; i < N; i++) expect(Math.abs(sent[i]! - arrived[i]! - residual![i]!)).toBeLessThan(1e-5);
    // Every coordinate is eventually sent: the residual stays within (n/k + 1) steps' worth of deltas.
    expect(maxResidual).toBeLessThanOrEqual((N / k + 1) * maxDelta);
    // And much less than what a no-feedback top-k would have dropped.
    let dropped = 0;
    for (let i = 0; i < N; i++) dropped = Math.max(dropped, Math.abs(sent[i]!));
    expect(maxResidual).toBeLessThan(dropped * 4);
  });

  it('lossy codecs feed their residual back; none drains it', () => {
    const rng = Rng.from(6, 'residual');
    const delta = randomDelta(rng);
    const residual = randomDelta(rng, N, 0.001);
    const sum = Float32Array.from(delta, (x, i) => x + residual[i]!);
    const none = encodeUpdate(delta, LAYOUT, spec('none'), { residual });
    expect([...decodeUpdate(none.bytes, LAYOUT, 'none', LIMITS).delta]).toEqual([...sum]);
    expect(none.residual).toBeUndefined();
    const int8 = encodeUpdate(delta, LAYOUT, spec('int8'), { residual });
    const back = decodeUpdate(int8.bytes, LAYOUT, 'int8', LIMITS).delta;
    for (let i = 0; i < N; i++) expect(int8.residual![i]).toBe(Math.fround(sum[i]! - back[i]!));
  });

  it('carries a SCAFFOLD control delta uncompressed beside every codec', () => {
    const rng = Rng.from(8, 'control');
    const delta = randomDelta(rng);
    const control = randomDelta(rng);
    for (const codec of ['none', 'fp16', 'int8', 'topk'] as const) {
      const { bytes } = encodeUpdate(delta, LAYOUT, spec(codec), { control });
      expect(bytes.length).toBe(bytesOfUpdate(LAYOUT, spec(codec), { control: true }));
      const back = decodeUpdate(bytes, LAYOUT, codec, LIMITS);
      expect([...back.control!]).toEqual([...control]);
      const names = tensorsOf(bytes).tensors.map((t) => t.name);
      expect(names.filter((n) => n.startsWith('control:'))).toEqual(LAYOUT.map((t) => `control:${t.name}`));
    }
  });

  it('bytesOf: the encoded size of each codec, known in advance', () => {
    const delta = randomDelta(Rng.from(9));
    const sizes: Record<string, number> = {};
    for (const codec of ['none', 'fp16', 'int8', 'topk'] as const) {
      const { bytes } = encodeUpdate(delta, LAYOUT, spec(codec, 0.01));
      expect(bytes.length).toBe(bytesOfUpdate(LAYOUT, spec(codec, 0.01)));
      sizes[codec] = bytes.length;
    }
    expect(sizes.fp16!).toBeLessThan(sizes.none!);
    expect(sizes.topk!).toBeLessThan(sizes.fp16!);
    // On a large model the data dominates: fp16 ~1/2, int8 ~1/4, top-k 1% ~2% (an index and a value each).
    const big: ParameterLayout = [{ name: 'w', shape: [1000, 1000] }];
    const none = bytesOfUpdate(big, spec('none'));
    expect(bytesOfUpdate(big, spec('fp16')) / none).toBeCloseTo(0.5, 3);
    expect(bytesOfUpdate(big, spec('int8')) / none).toBeCloseTo(0.25, 3);
    expect(bytesOfUpdate(big, spec('topk', 0.01)) / none).toBeCloseTo(0.02, 3);
  });
});

describe('decodeUpdate on hostile objects', () => {
  const rng = Rng.from(10, 'hostile');
  const delta = randomDelta(rng);
  const encoded = (codec: Codec) => encodeUpdate(delta, LAYOUT, spec(codec)).bytes;
  /** Re-encodes a valid update after `edit` changed its tensors or metadata. */
  const tampered = (codec: Codec, edit: (t: NamedTensor[], m: Record<string, string>) => NamedTensor[] | undefined) => {
    const { tensors, metadata } = tensorsOf(encoded(codec));
    return encodeTensors(edit(tensors, metadata) ?? tensors, metadata);
  };
  const find = (t: NamedTensor[], name: string) => t.find((x) => x.name === name)!;

  it('BAD_ENCODING: not safetensors, too large, other codec or format', () => {
    expect(decodeError(() => decodeUpdate(new Uint8Array(5), LAYOUT, 'none', LIMITS)).code).toBe('CONSORT_R_BAD_ENCODING');
    expect(decodeError(() => decodeUpdate(encoded('none'), LAYOUT, 'none', { maxBytes: 100 })).message).toMatch(/limit/);
    expect(decodeError(() => decodeUpdate(encoded('fp16'), LAYOUT, 'none', LIMITS)).message).toMatch(/encoded with "fp16"/);
    const noFormat = tampered('none', (_, m) => {
      delete m.format;
      return undefined;
    });
    expect(decodeError(() => decodeUpdate(noFormat, LAYOUT, 'none', LIMITS)).code).toBe('CONSORT_R_BAD_ENCODING');
    const wrongDtype = tampered('none', (t) => t.map((x) => (x.name === 'conv/bias' ? { ...x, dtype: 'I32', data: new Int32Array(x.data.length) } : x)));
    expect(decodeError(() => decodeUpdate(wrongDtype, LAYOUT, 'none', LIMITS)).message).toMatch(/conv\/bias is I32, expected F32/);
  });

  it('WRONG_SHAPE: missing, extra, renamed or reshaped tensors; partial control', () => {
    const cases = [
      tampered('none', (t) => t.slice(1)),
      tampered('none', (t) => [...t, { name: 'extra', dtype: 'F32', shape: [1], data: new Float32Array(1) }]),
      tampered('none', (t) => t.map((x, i) => (i === 0 ? { ...x, name: 'conv/kernel2' } : x))),
      tampered('none', (t) => t.map((x) => (x.name === 'dense/kernel' ? { ...x, shape: [5, 16] } : x))),
      tampered('int8', (t) => t.map((x) => (x.name === 'dense/bias:scale' ? { ...x, shape: [] } : x))),
      tampered('topk', (t) => t.map((x) => (x.name === 'values' ? { ...x, shape: [1, x.shape[0]!] } : x))),
      tampered('none', (t) => [...t, { name: 'control:conv/bias', dtype: 'F32', shape: [4], data: new Float32Array(4) }]),
    ];
    const codecs: Codec[] = ['none', 'none', 'none', 'none', 'int8', 'topk', 'none'];
    cases.forEach((bytes, i) => expect(decodeError(() => decodeUpdate(bytes, LAYOUT, codecs[i]!, LIMITS)).code).toBe('CONSORT_R_WRONG_SHAPE'));
    const otherLayout: ParameterLayout = [{ name: 'w', shape: [N] }];
    expect(decodeError(() => decodeUpdate(encoded('none'), otherLayout, 'none', LIMITS)).code).toBe('CONSORT_R_WRONG_SHAPE');
    // topk with k pinned by the job's fraction
    expect(decodeError(() => decodeUpdate(encoded('topk'), LAYOUT, 'topk', { maxBytes: 1 << 20, topkFraction: 0.5 })).code).toBe('CONSORT_R_WRONG_SHAPE');
  });

  it('NON_FINITE: NaN or Infinity in any codec', () => {
    const cases: Array<[Codec, Uint8Array]> = [
      ['none', tampered('none', (t) => void ((find(t, 'dense/bias').data as Float32Array)[2] = Number.NaN))],
      ['none', tampered('none', (t) => void ((find(t, 'conv/kernel').data as Float32Array)[0] = Number.NEGATIVE_INFINITY))],
      ['fp16', tampered('fp16', (t) => void ((find(t, 'dense/bias').data as Uint16Array)[0] = 0x7c00))],
      ['fp16', tampered('fp16', (t) => void ((find(t, 'dense/bias').data as Uint16Array)[0] = 0xfe01))],
      ['int8', tampered('int8', (t) => void ((find(t, 'dense/bias:scale').data as Float32Array)[0] = Number.NaN))],
      ['int8', tampered('int8', (t) => void ((find(t, 'dense/bias:scale').data as Float32Array)[0] = 3e38))],
      ['topk', tampered('topk', (t) => void ((find(t, 'values').data as Float32Array)[0] = Number.POSITIVE_INFINITY))],
    ];
    for (const [codec, bytes] of cases) expect(decodeError(() => decodeUpdate(bytes, LAYOUT, codec, LIMITS)).code).toBe('CONSORT_R_NON_FINITE');
    const control = encodeUpdate(delta, LAYOUT, spec('none'), { control: delta }).bytes;
    const { tensors, metadata } = tensorsOf(control);
    (find(tensors, 'control:dense/bias').data as Float32Array)[1] = Number.NaN;
    expect(decodeError(() => decodeUpdate(encodeTensors(tensors, metadata), LAYOUT, 'none', LIMITS)).message).toMatch(/control tensor dense\/bias\[1\]/);
  });

  it('topk: indices out of range, repeated or descending; int8: -128 or a negative scale', () => {
    const k = topkCount(N, 0.1);
    const withIndices = (edit: (ix: Int32Array) => void) =>
      tampered('topk', (t) => {
        edit(find(t, 'indices').data as Int32Array);
        return undefined;
      });
    const bad = [
      withIndices((ix) => void (ix[k - 1] = N)),
      withIndices((ix) => void (ix[0] = -1)),
      withIndices((ix) => void (ix[1] = ix[0]!)),
      withIndices((ix) => ix.reverse()),
      withIndices((ix) => void (ix[0] = 2 ** 31 - 1)),
      tampered('topk', (t) =>
        t.map((x) =>
          x.name === 'indices' || x.name === 'values' ? { ...x, shape: [0], data: x.name === 'indices' ? new Int32Array(0) : new Float32Array(0) } : x,
        ),
      ),
    ];
    for (const bytes of bad) expect(decodeError(() => decodeUpdate(bytes, LAYOUT, 'topk', LIMITS)).code).toBe('CONSORT_R_BAD_ENCODING');
    const minus128 = tampered('int8', (t) => void ((find(t, 'conv/bias').data as Int8Array)[0] = -128));
    expect(decodeError(() => decodeUpdate(minus128, LAYOUT, 'int8', LIMITS)).message).toMatch(/-128/);
    const negative = tampered('int8', (t) => void ((find(t, 'conv/bias:scale').data as Float32Array)[0] = -1));
    expect(decodeError(() => decodeUpdate(negative, LAYOUT, 'int8', LIMITS)).message).toMatch(/negative scale/);
  });
});
