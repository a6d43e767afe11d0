// The safetensors format (8-byte little-endian header length, JSON header, raw little-endian
// data). Pure: bytes in, bytes out. `encodeSafetensors`/`decodeSafetensors` move one float32
// model over a ParameterLayout; `encodeTensors`/`decodeTensors` move any named tensors of the
// dtypes the protocol uses, and the decoder trusts nothing it reads: every length and offset is
// checked against the bytes actually present and the caller's limits before anything is
// allocated, so a hostile header costs at most its own size.
import { type ParameterLayout, layoutOffsets, layoutSize } from '../model/layout.ts';

export interface SafetensorsHeaderEntry {
  dtype: 'F32';
  shape: number[];
  data_offsets: [number, number];
}

export type TensorDtype = 'F32' | 'F16' | 'I8' | 'I32';
/** F16 travels as its raw IEEE half-precision bit patterns. */
export type TensorData = Float32Array | Uint16Array | Int8Array | Int32Array;

export interface NamedTensor {
  name: string;
  dtype: TensorDtype;
  shape: number[];
  data: TensorData;
}

export interface SafetensorsLimits {
  /** Largest accepted file, header included. */
  maxBytes: number;
  /** Most tensors accepted (the __metadata__ entry not counted). */
  maxTensors: number;
}

/** Bytes of one element of each dtype. */
export const DTYPE_BYTES: Record<TensorDtype, number> = { F32: 4, F16: 2, I8: 1, I32: 4 };
/** The reference implementation's own cap on the header. */
const MAX_HEADER_BYTES = 100_000_000;
const MAX_RANK = 32;
/** Whether this machine stores numbers little-endian, as safetensors does (views then need no swap). */
export const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function encodeSafetensors(layout: ParameterLayout, values: Float32Array, metadata: Record<string, string> = {}): Uint8Array {
  return concatBytes(safetensorsParts(layout, values, metadata));
}

/**
 * The bytes of encodeSafetensors(layout, values, metadata) as pieces, without copying the values
 * on a little-endian machine (the last piece is a view of them): what a streaming writer or a
 * hash needs, for models too large to copy.
 */
export function safetensorsParts(layout: ParameterLayout, values: Float32Array, metadata: Record<string, string> = {}): Uint8Array[] {
  if (values.length !== layoutSize(layout)) throw new RangeError(`safetensors: ${values.length} values for a layout of ${layoutSize(layout)}`);
  const header: Record<string, SafetensorsHeaderEntry | Record<string, string>> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const offsets = layoutOffsets(layout);
  layout.forEach((t, i) => {
    const { offset, size } = offsets[i]!;
    header[t.name] = { dtype: 'F32', shape: [...t.shape], data_offsets: [offset * 4, (offset + size) * 4] };
  });
  const headerBytes = paddedHeader(header);
  const head = new Uint8Array(8 + headerBytes.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  head.set(headerBytes, 8);
  if (LITTLE_ENDIAN) return [head, new Uint8Array(values.buffer, values.byteOffset, values.byteLength)];
  const data = new Uint8Array(values.byteLength);
  writeData(data, 0, values);
  return [head, data];
}

/** The pieces, one after the other, in one array. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * One float32 model: its tensors in file order as a layout, their values concatenated. Throws
 * RangeError on anything malformed or not F32. The values are a view of `bytes` when they can be
 * (little-endian machine, data 4-byte aligned): no copy of a large model is made.
 */
export function decodeSafetensors(bytes: Uint8Array): { layout: ParameterLayout; values: Float32Array; metadata: Record<string, string> } {
  const { entries, metadata } = readSafetensorsHeader(bytes, { maxBytes: bytes.length, maxTensors: Number.MAX_SAFE_INTEGER });
  let total = 0;
  for (const t of entries.values()) {
    if (t.dtype !== 'F32') throw new RangeError(`safetensors: tensor ${t.name} has dtype ${t.dtype}; only F32 is supported`);
    total += (t.end - t.begin) / 4;
  }
  const layout: ParameterLayout = [...entries.values()].map((t) => ({ name: t.name, shape: t.shape }));
  // Entries tile the data in file order, so the values are the data section itself.
  const start = bytes.length - 4 * total;
  if (LITTLE_ENDIAN && (bytes.byteOffset + start) % 4 === 0)
    return { layout, values: new Float32Array(bytes.buffer, bytes.byteOffset + start, total), metadata };
  const values = new Float32Array(total);
  let at = 0;
  for (const t of entries.values()) {
    readFloat32Into(bytes, t, values, at);
    at += (t.end - t.begin) / 4;
  }
  return { layout, values, metadata };
}

/** Exact encoded size of these tensors with this metadata, without encoding them. */
export function bytesOfTensors(entries: readonly Pick<NamedTensor, 'name' | 'dtype' | 'shape'>[], metadata: Record<string, string> = {}): number {
  const { header, dataBytes } = planHeader(entries, metadata);
  return 8 + paddedHeader(header).length + dataBytes;
}

/** Named tensors (in this order in the data) and string metadata, as safetensors bytes. */
export function encodeTensors(entries: readonly NamedTensor[], metadata: Record<string, string> = {}): Uint8Array {
  return concatBytes(tensorsParts(entries, metadata));
}

/** encodeTensors' bytes as pieces: the header, then each tensor's data, a view of its array on a little-endian machine (no copy). */
export function tensorsParts(entries: readonly NamedTensor[], metadata: Record<string, string> = {}): Uint8Array[] {
  for (const e of entries) {
    if (!(e.data instanceof ARRAY_OF[e.dtype])) throw new RangeError(`safetensors: tensor ${e.name}: ${e.dtype} data must be a ${ARRAY_OF[e.dtype].name}`);
    const count = elementCount(e.name, e.shape);
    if (e.data.length !== count) throw new RangeError(`safetensors: tensor ${e.name} has ${e.data.length} values for shape [${e.shape.join(', ')}]`);
  }
  const { header } = planHeader(entries, metadata);
  const headerBytes = paddedHeader(header);
  const head = new Uint8Array(8 + headerBytes.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  head.set(headerBytes, 8);
  return [
    head,
    ...entries.map((e) => {
      if (LITTLE_ENDIAN) return new Uint8Array(e.data.buffer, e.data.byteOffset, e.data.byteLength);
      const out = new Uint8Array(e.data.byteLength);
      writeData(out, 0, e.data);
      return out;
    }),
  ];
}

/** A validated header entry: where a tensor's data lies in the file (absolute byte offsets). */
export interface TensorEntry {
  name: string;
  dtype: TensorDtype;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * Parses safetensors bytes from an untrusted source. Every problem is a RangeError that says
 * what is wrong: too large for `limits`, a header length beyond the bytes, a header that is not
 * UTF-8 JSON of the expected shape, an unknown dtype, a shape whose size × dtype width differs
 * from its byte span, offsets outside the data, overlapping or leaving holes. Tensors come back
 * in data order, each with its own freshly allocated (aligned) array.
 */
export function decodeTensors(bytes: Uint8Array, limits: SafetensorsLimits): { tensors: Map<string, NamedTensor>; metadata: Record<string, string> } {
  const { entries, metadata } = readSafetensorsHeader(bytes, limits);
  const tensors = new Map<string, NamedTensor>();
  for (const e of entries.values()) tensors.set(e.name, { name: e.name, dtype: e.dtype, shape: e.shape, data: readTensorData(bytes, e) });
  return { tensors, metadata };
}

/** The checks of decodeTensors without reading any data: entries in data order, validated against the bytes. */
export function readSafetensorsHeader(bytes: Uint8Array, limits: SafetensorsLimits): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  return parseSafetensorsHeader(bytes, bytes.length, limits);
}

/**
 * readSafetensorsHeader for a file read as a stream: `prefix` is its beginning, `totalBytes` its
 * size. The prefix must hold the 8-byte length and the header it declares (safetensorsHeaderBytes
 * says how much that is); the checks against the data are made with the size alone.
 */
export function parseSafetensorsHeader(
  prefix: Uint8Array,
  totalBytes: number,
  limits: SafetensorsLimits,
): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  const n = safetensorsHeaderBytes(prefix, totalBytes, limits) - 8;
  if (prefix.length < 8 + n) throw new RangeError(`safetensors: ${prefix.length} bytes of the file given, its header ends at ${8 + n}`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(prefix.subarray(8, 8 + n));
  } catch {
    throw new RangeError('safetensors: header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    throw new RangeError(`safetensors: header is not JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new RangeError('safetensors: header is not a JSON object');

  const dataStart = 8 + n;
  const dataLength = totalBytes - dataStart;
  const metadata: Record<string, string> = {};
  const plans: TensorEntry[] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new RangeError('safetensors: __metadata__ is not an object');
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') throw new RangeError(`safetensors: __metadata__.${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    if (plans.length >= limits.maxTensors) throw new RangeError(`safetensors: more than ${limits.maxTensors} tensors`);
    if (name.length === 0) throw new RangeError('safetensors: a tensor has an empty name');
    plans.push(planEntry(name, raw, dataLength));
  }
  // Sorted by span, the tensors must tile [0, dataLength) exactly: no overlap, no hole, nothing after.
  plans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const p of plans) {
    if (p.begin < cursor) throw new RangeError(`safetensors: tensor ${p.name} overlaps the previous tensor (starts at ${p.begin}, previous ends at ${cursor})`);
    if (p.begin > cursor) throw new RangeError(`safetensors: a hole of ${p.begin - cursor} bytes before tensor ${p.name}`);
    cursor = p.end;
  }
  if (cursor !== dataLength) throw new RangeError(`safetensors: ${dataLength - cursor} bytes of data after the last tensor`);
  const entries = new Map<string, TensorEntry>();
  for (const p of plans) entries.set(p.name, { ...p, begin: dataStart + p.begin, end: dataStart + p.end });
  return { entries, metadata };
}

/**
 * Where the data of a file of `totalBytes` starts (8 + its declared header length), from at least
 * its first 8 bytes; RangeError as readSafetensorsHeader when the file is too large or too short,
 * or the length cannot be a header's.
 */
export function safetensorsHeaderBytes(prefix: Uint8Array, totalBytes: number, limits: SafetensorsLimits): number {
  if (totalBytes > limits.maxBytes) throw new RangeError(`safetensors: ${totalBytes} bytes exceed the limit of ${limits.maxBytes}`);
  if (totalBytes < 8) throw new RangeError(`safetensors: ${totalBytes} bytes, shorter than the 8-byte header length`);
  if (prefix.length < 8) throw new RangeError(`safetensors: ${prefix.length} bytes of the file given, fewer than the 8-byte header length`);
  const declared = new DataView(prefix.buffer, prefix.byteOffset, prefix.byteLength).getBigUint64(0, true);
  if (declared > BigInt(totalBytes - 8)) throw new RangeError(`safetensors: header length ${declared} exceeds the ${totalBytes - 8} bytes that follow`);
  const n = Number(declared);
  if (n > MAX_HEADER_BYTES) throw new RangeError(`safetensors: header of ${n} bytes exceeds ${MAX_HEADER_BYTES}`);
  if (n < 2) throw new RangeError(`safetensors: header of ${n} bytes cannot hold a JSON object`);
  return 8 + n;
}

/** A copy of one tensor's data (a fresh, aligned array of its dtype). */
export function readTensorData(bytes: Uint8Array, entry: TensorEntry): TensorData {
  return readData(bytes, entry.begin, entry.end - entry.begin, entry.dtype);
}

/** Copies an F32 tensor's values into `out` from index `at`, with no intermediate array. */
export function readFloat32Into(bytes: Uint8Array, entry: TensorEntry, out: Float32Array, at: number): void {
  if (entry.dtype !== 'F32') throw new RangeError(`safetensors: tensor ${entry.name} is ${entry.dtype}, not F32`);
  const count = (entry.end - entry.begin) / 4;
  if (at < 0 || at + count > out.length) throw new RangeError(`safetensors: tensor ${entry.name} does not fit at ${at} of ${out.length}`);
  if (LITTLE_ENDIAN) {
    new Uint8Array(out.buffer, out.byteOffset + at * 4, count * 4).set(bytes.subarray(entry.begin, entry.end));
    return;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + entry.begin, count * 4);
  for (let i = 0; i < count; i++) out[at + i] = view.getFloat32(i * 4, true);
}

const ARRAY_OF = { F32: Float32Array, F16: Uint16Array, I8: Int8Array, I32: Int32Array } as const;

function planEntry(name: string, raw: unknown, dataLength: number): TensorEntry {
  const bad = (why: string) => new RangeError(`safetensors: tensor ${JSON.stringify(name.slice(0, 200))}: ${why}`);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('entry is not an object');
  const keys = Object.keys(raw);
  const e = raw as Record<string, unknown>;
  if (keys.length !== 3 || !('dtype' in e) || !('shape' in e) || !('data_offsets' in e)) {
    throw bad(`entry must have exactly dtype, shape and data_offsets (has ${keys.slice(0, 8).join(', ')})`);
  }
  const dtype = e.dtype;
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, dtype)) throw bad(`dtype ${JSON.stringify(dtype)} is not one of F32, F16, I8, I32`);
  const shape = e.shape;
  if (!Array.isArray(shape) || shape.length > MAX_RANK) throw bad(`shape must be an array of at most ${MAX_RANK} dimensions`);
  for (const d of shape)
    if (!Number.isSafeInteger(d) || (d as number) < 0) throw bad(`shape dimension ${JSON.stringify(d)} is not a non-negative safe integer`);
  const offsets = e.data_offsets;
  if (!Array.isArray(offsets) || offsets.length !== 2) throw bad('data_offsets must be [begin, end]');
  const [begin, end] = offsets as unknown[];
  if (!Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || (begin as number) < 0 || (end as number) < (begin as number)) {
    throw bad(`data_offsets ${JSON.stringify(offsets)} are not 0 <= begin <= end safe integers`);
  }
  if ((end as number) > dataLength) throw bad(`data_offsets end ${end} is beyond the ${dataLength} bytes of data`);
  const count = elementCount(name, shape as number[]);
  const span = (end as number) - (begin as number);
  if (count * DTYPE_BYTES[dtype as TensorDtype] !== span)
    throw bad(`shape [${shape.join(', ')}] of ${dtype} needs ${count * DTYPE_BYTES[dtype as TensorDtype]} bytes, data_offsets span ${span}`);
  return { name, dtype: dtype as TensorDtype, shape: [...(shape as number[])], begin: begin as number, end: end as number };
}

/** Product of the dimensions; RangeError when it is not a safe integer. */
function elementCount(name: string, shape: readonly number[]): number {
  let count = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new RangeError(`safetensors: tensor ${name}: bad dimension ${d}`);
    count *= d;
  }
  if (!Number.isSafeInteger(count)) throw new RangeError(`safetensors: tensor ${name}: shape [${shape.join(', ')}] has more elements than 2^53`);
  return count;
}

function planHeader(
  entries: readonly Pick<NamedTensor, 'name' | 'dtype' | 'shape'>[],
  metadata: Record<string, string>,
): { header: Record<string, unknown>; dataBytes: number } {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let at = 0;
  for (const e of entries) {
    if (e.name.length === 0 || e.name === '__metadata__') throw new RangeError(`safetensors: invalid tensor name ${JSON.stringify(e.name)}`);
    if (Object.hasOwn(header, e.name)) throw new RangeError(`safetensors: duplicate tensor name ${e.name}`);
    if (!Object.hasOwn(DTYPE_BYTES, e.dtype)) throw new RangeError(`safetensors: tensor ${e.name}: unknown dtype ${e.dtype}`);
    const bytes = elementCount(e.name, e.shape) * DTYPE_BYTES[e.dtype];
    header[e.name] = { dtype: e.dtype, shape: [...e.shape], data_offsets: [at, at + bytes] };
    at += bytes;
  }
  return { header, dataBytes: at };
}

/** The header JSON, padded with spaces so the data starts 8-byte aligned, as the reference implementation does. */
function paddedHeader(header: Record<string, unknown>): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - ((8 + json.length) % 8)) % 8;
  if (pad === 0) return json;
  const out = new Uint8Array(json.length + pad).fill(0x20);
  out.set(json);
  return out;
}

function writeData(out: Uint8Array, at: number, data: TensorData): void {
  if (LITTLE_ENDIAN) {
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at);
    return;
  }
  const view = new DataView(out.buffer, out.byteOffset + at, data.byteLength);
  for (let i = 0; i < data.length; i++) {
    if (data instanceof Float32Array) view.setFloat32(i * 4, data[i]!, true);
    else if (data instanceof Int32Array) view.setInt32(i * 4, data[i]!, true);
    else if (data instanceof Uint16Array) view.setUint16(i * 2, data[i]!, true);
    else view.setInt8(i, data[i]!);
  }
}

function readData(bytes: Uint8Array, at: number, length: number, dtype: TensorDtype): TensorData {
  // A fresh, aligned copy. Uint8Array's own slice: a node Buffer's slice is a view, not a copy.
  const copy = Uint8Array.prototype.slice.call(bytes, at, at + length);
  if (LITTLE_ENDIAN || dtype === 'I8') {
    const Ctor = ARRAY_OF[dtype];
    return new Ctor(copy.buffer, 0, length / DTYPE_BYTES[dtype]);
  }
  const view = new DataView(copy.buffer);
  const width = DTYPE_BYTES[dtype];
  const count = length / width;
  if (dtype === 'F32') return Float32Array.from({ length: count }, (_, i) => view.getFloat32(i * 4, true));
  if (dtype === 'I32') return Int32Array.from({ length: count }, (_, i) => view.getInt32(i * 4, true));
  return Uint16Array.from({ length: count }, (_, i) => view.getUint16(i * 2, true));
}
