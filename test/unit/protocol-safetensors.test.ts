import { describe, expect, it } from 'vitest';
import { Rng } from '../../core/rng.ts';
import {
  bytesOfTensors,
  concatBytes,
  decodeSafetensors,
  decodeTensors,
  encodeSafetensors,
  encodeTensors,
  type NamedTensor,
  safetensorsParts,
  tensorsParts,
} from '../../core/tensor/safetensors.ts';

const LIMITS = { maxBytes: 1 << 20, maxTensors: 100 };

/** A file from a header (object or raw text) and data bytes, with a header length that may lie. */
function file(header: unknown, data: Uint8Array = new Uint8Array(0), declared?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, declared ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function sample(): NamedTensor[] {
  return [
    { name: 'w', dtype: 'F32', shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 0, -0, 1e-40]) },
    { name: 'h', dtype: 'F16', shape: [3], data: Uint16Array.from([0x3c00, 0x7bff, 0x8001]) },
    { name: 'q', dtype: 'I8', shape: [5], data: Int8Array.from([-127, -1, 0, 1, 127]) },
    { name: 'i', dtype: 'I32', shape: [2], data: Int32Array.from([-(2 ** 31), 2 ** 31 - 1]) },
    { name: 'scalar', dtype: 'F32', shape: [], data: Float32Array.from([7]) },
    { name: 'empty', dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
  ];
}

function expectRange(bytes: Uint8Array, message: RegExp, limits = LIMITS): void {
  let thrown: unknown;
  try {
    decodeTensors(bytes, limits);
  } catch (err) {
    thrown = err;
  }
  expect(thrown).toBeInstanceOf(RangeError);
  expect((thrown as Error).message).toMatch(message);
}

describe('encodeTensors / decodeTensors', () => {
  it('round-trips every dtype, scalars, empty tensors and metadata, 8-byte aligned', () => {
    const tensors = sample();
    const bytes = encodeTensors(tensors, { format: 'test', note: 'é' });
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect((8 + headerLength) % 8).toBe(0);
    expect(bytes.length).toBe(bytesOfTensors(tensors, { format: 'test', note: 'é' }));
    const { tensors: back, metadata } = decodeTensors(bytes, LIMITS);
    expect(metadata).toEqual({ format: 'test', note: 'é' });
    expect([...back.keys()]).toEqual(tensors.map((t) => t.name));
    for (const t of tensors) {
      const b = back.get(t.name)!;
      expect(b.dtype).toBe(t.dtype);
      expect(b.shape).toEqual(t.shape);
      expect(b.data.constructor).toBe(t.data.constructor);
      expect([...b.data]).toEqual([...t.data]);
    }
  });

  it('decodes from an unaligned view of a larger buffer', () => {
    const bytes = encodeTensors(sample());
    const big = new Uint8Array(bytes.length + 3);
    big.set(bytes, 3);
    const { tensors } = decodeTensors(big.subarray(3), LIMITS);
    expect([...tensors.get('i')!.data]).toEqual([-(2 ** 31), 2 ** 31 - 1]);
  });

  it('refuses to encode data that does not fit its dtype or shape, and duplicate names', () => {
    expect(() => encodeTensors([{ name: 'a', dtype: 'F32', shape: [3], data: new Float32Array(2) }])).toThrow(RangeError);
    expect(() => encodeTensors([{ name: 'a', dtype: 'I32', shape: [2], data: new Float32Array(2) }])).toThrow(RangeError);
    const a: NamedTensor = { name: 'a', dtype: 'I8', shape: [1], data: new Int8Array(1) };
    expect(() => encodeTensors([a, a])).toThrow(/duplicate/);
    expect(() => encodeTensors([{ ...a, name: '__metadata__' }])).toThrow(RangeError);
  });

  it('keeps encodeSafetensors/decodeSafetensors as they were', () => {
    const layout = [
      { name: 'dense/kernel', shape: [2, 2] },
      { name: 'dense/bias', shape: [2] },
    ];
    const values = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const bytes = encodeSafetensors(layout, values, { step: '3' });
    // The layout's float32 model is an ordinary safetensors file of F32 tensors.
    const generic = decodeTensors(bytes, LIMITS);
    expect([...generic.tensors.get('dense/bias')!.data]).toEqual([5, 6]);
    const back = decodeSafetensors(bytes);
    expect(back.layout).toEqual(layout);
    expect([...back.values]).toEqual([...values]);
    expect(back.metadata).toEqual({ step: '3' });
    expect(() => decodeSafetensors(encodeTensors([{ name: 'q', dtype: 'I8', shape: [1], data: new Int8Array(1) }]))).toThrow(/only F32/);
  });
});

describe('decodeTensors on hostile input', () => {
  const f32 = (n: number) => new Uint8Array(n * 4);

  it('refuses files shorter than the length prefix, or larger than the limit', () => {
    expectRange(new Uint8Array(0), /shorter than the 8-byte/);
    expectRange(new Uint8Array(7), /shorter than the 8-byte/);
    expectRange(encodeTensors(sample()), /exceed the limit/, { maxBytes: 64, maxTensors: 100 });
  });

  it('refuses header lengths beyond the bytes, up to 2^64 - 1', () => {
    const header = { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } };
    expectRange(file(header, f32(1), 10_000n), /exceeds the .* bytes that follow/);
    expectRange(file(header, f32(1), 2n ** 53n + 1n), /exceeds/);
    expectRange(file(header, f32(1), 2n ** 64n - 1n), /exceeds/);
    const truncated = encodeTensors(sample()).subarray(0, 20);
    expectRange(truncated, /exceeds/);
  });

  it('refuses headers that are not UTF-8 JSON objects', () => {
    expectRange(file('{"a": '), /not JSON/);
    expectRange(file('not json at all'), /not JSON/);
    expectRange(file('[1,2,3]'), /not a JSON object/);
    expectRange(file('null'), /not a JSON object/);
    expectRange(file('{}', new Uint8Array(0), 1n), /cannot hold/);
    const bad = file('{"a":1}');
    bad[10] = 0xff;
    expectRange(bad, /UTF-8/);
  });

  it('refuses malformed entries', () => {
    const entry = (e: unknown, data = f32(1)) => file({ a: e }, data);
    expectRange(entry(5), /not an object/);
    expectRange(entry({ dtype: 'F32', shape: [1] }), /exactly dtype, shape and data_offsets/);
    expectRange(entry({ dtype: 'F32', shape: [1], data_offsets: [0, 4], extra: 1 }), /exactly/);
    expectRange(entry({ dtype: 'F64', shape: [1], data_offsets: [0, 4] }), /dtype "F64"/);
    expectRange(entry({ dtype: 'toString', shape: [1], data_offsets: [0, 4] }), /dtype/);
    expectRange(entry({ dtype: 'F32', shape: 'big', data_offsets: [0, 4] }), /shape must be an array/);
    expectRange(entry({ dtype: 'F32', shape: [-1], data_offsets: [0, 4] }), /dimension -1/);
    expectRange(entry({ dtype: 'F32', shape: [1.5], data_offsets: [0, 4] }), /dimension 1.5/);
    expectRange(entry({ dtype: 'F32', shape: ['1'], data_offsets: [0, 4] }), /dimension "1"/);
    expectRange(entry({ dtype: 'F32', shape: new Array(40).fill(1), data_offsets: [0, 4] }), /at most 32/);
    expectRange(entry({ dtype: 'F32', shape: [1], data_offsets: [0] }), /\[begin, end\]/);
    expectRange(entry({ dtype: 'F32', shape: [1], data_offsets: [4, 0] }), /begin <= end/);
    expectRange(entry({ dtype: 'F32', shape: [1], data_offsets: [-4, 0] }), /begin <= end/);
    expectRange(file({ __metadata__: { a: 1 } }), /__metadata__.a is not a string/);
    expectRange(file({ __metadata__: [] }), /__metadata__ is not an object/);
    expectRange(file({ '': { dtype: 'I8', shape: [0], data_offsets: [0, 0] } }), /empty name/);
  });

  it('refuses sizes of 2^53 and more, and products that overflow', () => {
    const big = (shape: unknown[], offsets: unknown[]) => file({ a: { dtype: 'F32', shape, data_offsets: offsets } }, f32(1));
    expectRange(big([2 ** 53], [0, 4]), /dimension/);
    expectRange(file(`{"a":{"dtype":"F32","shape":[9007199254740993],"data_offsets":[0,4]}}`, f32(1)), /dimension/);
    expectRange(big([2 ** 30, 2 ** 30, 2 ** 30], [0, 4]), /more elements than 2\^53/);
    expectRange(big([1], [0, 2 ** 53]), /safe integers/);
    expectRange(big([2 ** 40], [0, 2 ** 42]), /beyond the 4 bytes of data/);
    expectRange(big([1e300], [0, 4]), /dimension/);
  });

  it('refuses offsets out of range, overlapping, with holes or trailing data', () => {
    const t = (begin: number, end: number, shape = [1]) => ({ dtype: 'F32', shape, data_offsets: [begin, end] });
    expectRange(file({ a: t(0, 8, [2]) }, f32(1)), /beyond the 4 bytes/);
    expectRange(file({ a: t(0, 4), b: t(0, 4) }, f32(2)), /overlaps/);
    expectRange(file({ a: t(0, 8, [2]), b: t(4, 8) }, f32(2)), /overlaps/);
    expectRange(file({ a: t(4, 8) }, f32(2)), /hole of 4 bytes/);
    expectRange(file({ a: t(0, 4), b: t(8, 12) }, f32(3)), /hole/);
    expectRange(file({ a: t(0, 4) }, f32(2)), /4 bytes of data after the last tensor/);
    // A duplicate key silently replaces the first entry in JSON.parse; the bytes it covered become a hole.
    expectRange(file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', f32(2)), /hole/);
  });

  it('refuses a shape whose size times the dtype width differs from the byte span', () => {
    expectRange(file({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, f32(1)), /needs 8 bytes, data_offsets span 4/);
    expectRange(file({ a: { dtype: 'F16', shape: [1], data_offsets: [0, 4] } }, f32(1)), /needs 2 bytes/);
    expectRange(file({ a: { dtype: 'I8', shape: [3], data_offsets: [0, 4] } }, f32(1)), /needs 3 bytes/);
  });

  it('refuses more tensors than the limit before reading any', () => {
    const many = Array.from({ length: 20 }, (_, i) => ({ name: `t${i}`, dtype: 'I8' as const, shape: [1], data: new Int8Array(1) }));
    expectRange(encodeTensors(many), /more than 10 tensors/, { maxBytes: 1 << 20, maxTensors: 10 });
  });

  it('answers every random corruption of a valid file with a result or a RangeError, nothing else', () => {
    const seed = 20_240_601;
    const rng = Rng.from(seed, 'safetensors-fuzz');
    const valid = encodeTensors(sample(), { format: 'x' });
    let refused = 0;
    for (let i = 0; i < 3000; i++) {
      const bytes = valid.slice(0, rng.int(3) === 0 ? rng.int(valid.length + 1) : valid.length);
      for (let j = rng.int(4); j >= 0; j--) if (bytes.length > 0) bytes[rng.int(bytes.length)] = rng.int(256);
      try {
        const { tensors } = decodeTensors(bytes, LIMITS);
        for (const t of tensors.values()) expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1));
      } catch (err) {
        if (!(err instanceof RangeError)) throw new Error(`seed ${seed}, case ${i}: ${(err as Error).name}: ${(err as Error).message}`);
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(1000);
  });
});

describe('pieces and in-place reads (streamed writes and large models)', () => {
  it('gives the same bytes as pieces, the data pieces views of the arrays', () => {
    const tensors = sample();
    const parts = tensorsParts(tensors, { k: 'v' });
    expect(Buffer.concat(parts).equals(Buffer.from(encodeTensors(tensors, { k: 'v' })))).toBe(true);
    expect(parts[1]!.buffer).toBe(tensors[0]!.data.buffer);
    const layout = [
      { name: 'a', shape: [3, 2] },
      { name: 'b', shape: [5] },
    ];
    const values = Float32Array.from({ length: 11 }, (_, i) => i / 3);
    const model = safetensorsParts(layout, values, { job: 'j' });
    expect(Buffer.concat(model).equals(Buffer.from(encodeSafetensors(layout, values, { job: 'j' })))).toBe(true);
    expect(model[1]!.buffer).toBe(values.buffer);
    expect(concatBytes(model)).toEqual(encodeSafetensors(layout, values, { job: 'j' }));
  });

  it('decodes a model in place when aligned, and copies it when not', () => {
    const layout = [
      { name: 'a', shape: [3, 2] },
      { name: 'b', shape: [5] },
    ];
    const values = Float32Array.from({ length: 11 }, (_, i) => i / 3 - 1);
    const bytes = encodeSafetensors(layout, values);
    const inPlace = decodeSafetensors(bytes);
    expect(inPlace.values.buffer).toBe(bytes.buffer);
    expect([...inPlace.values]).toEqual([...values]);
    expect(inPlace.layout).toEqual(layout);
    const odd = new Uint8Array(bytes.length + 1).subarray(1);
    odd.set(bytes);
    const copied = decodeSafetensors(odd);
    expect(copied.values.buffer).not.toBe(odd.buffer);
    expect([...copied.values]).toEqual([...values]);
  });
});
