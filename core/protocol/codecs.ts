// Update codecs, negotiated in the job spec (spec.compression): how a site's delta travels as a
// safetensors object, and how the coordinator reads it back without trusting it.
//
//   none  <name> F32[shape] per layout tensor
//   fp16  <name> F16[shape] per layout tensor (round to nearest even; saturates at ±65504)
//   int8  <name> I8[shape] and <name>:scale F32[1] per layout tensor; x ≈ q·scale, scale = max|x|/127
//   topk  indices I32[k] (strictly ascending) and values F32[k] over the flat vector, k = max(1, ceil(fraction·n))
//
// Every codec may carry SCAFFOLD's control delta beside it, uncompressed: control:<name> F32[shape].
// Metadata: {format: "consort.update/v1", codec}. Lossy codecs use error feedback: the site passes
// its residual e, the codec compresses v = delta + e and hands back the new residual v − decoded(v),
// which never leaves the site. For top-k that is what makes sparsification converge.
import type { CompressionSpec } from '../job/federated-job.ts';
import { maxAbs } from '../aggregation/exact-kernel.ts';
import { type ParameterLayout, layoutOffsets, layoutSize } from '../model/layout.ts';
import {
  bytesOfTensors,
  concatBytes,
  LITTLE_ENDIAN,
  tensorsParts,
  type NamedTensor,
  readFloat32Into,
  readSafetensorsHeader,
  readTensorData,
  type TensorDtype,
  type TensorEntry,
} from '../tensor/safetensors.ts';

export type Codec = CompressionSpec['codec'];
export const UPDATE_FORMAT = 'consort.update/v1';
const FP16_MAX_BITS = 0x7bff; // 65504

export interface EncodeUpdateOptions {
  /** The site's error-feedback residual from its previous update (absent: zeros). */
  residual?: Float32Array;
  /** SCAFFOLD: c_i+ − c_i, sent uncompressed beside the delta. */
  control?: Float32Array;
}

export interface EncodedUpdate {
  /** The safetensors object. */
  bytes: Uint8Array;
  /** Lossy codecs: (delta + residual) − decoded, to keep on the site for the next update. */
  residual?: Float32Array;
}

/** An encoded update as pieces of the object (encodeUpdateParts), the uncompressed tensors as views of the inputs. */
export interface EncodedUpdateParts {
  parts: Uint8Array[];
  /** Bytes of the object: the pieces' lengths summed. */
  size: number;
  residual?: Float32Array;
}

export interface DecodedUpdate {
  delta: Float32Array;
  control?: Float32Array;
  /** max |delta[i]| and max |control[i]| (finite: anything else is refused). */
  maxAbs: number;
  controlMaxAbs?: number;
}

export interface UpdateLimits {
  /** Largest object accepted. */
  maxBytes: number;
  /** topk: when given, k must be exactly topkCount(n, topkFraction). */
  topkFraction?: number;
}

export type DecodeFailure = 'CONSORT_R_BAD_ENCODING' | 'CONSORT_R_WRONG_SHAPE' | 'CONSORT_R_NON_FINITE';

/** Why an update object was refused; `code` is the rejection catalogue's. */
export class UpdateDecodeError extends RangeError {
  readonly code: DecodeFailure;

  constructor(code: DecodeFailure, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UpdateDecodeError';
    this.code = code;
  }
}

/** Coordinates top-k sends out of n. */
export function topkCount(n: number, fraction: number): number {
  if (n === 0) return 0;
  return Math.min(n, Math.max(1, Math.ceil(fraction * n)));
}

/**
 * Encodes a site's delta with the job's codec. Throws RangeError when a length differs from the
 * layout or an input (delta, residual, control, or delta + residual) holds NaN or Infinity.
 */
export function encodeUpdate(delta: Float32Array, layout: ParameterLayout, spec: CompressionSpec, options: EncodeUpdateOptions = {}): EncodedUpdate {
  const { parts, residual } = encodeUpdateParts(delta, layout, spec, options);
  return { bytes: concatBytes(parts), ...(residual ? { residual } : {}) };
}

/**
 * encodeUpdate's object as pieces (for a streaming write): with codec none, and for the control
 * delta, the values are not copied (the pieces are views of `delta` and `control`, to be written
 * before they change).
 */
export function encodeUpdateParts(delta: Float32Array, layout: ParameterLayout, spec: CompressionSpec, options: EncodeUpdateOptions = {}): EncodedUpdateParts {
  const n = layoutSize(layout);
  const { residual, control } = options;
  requireFinite('delta', delta, n);
  if (residual) requireFinite('residual', residual, n);
  if (control) requireFinite('control', control, n);
  let v = delta;
  if (residual) {
    v = new Float32Array(n);
    for (let i = 0; i < n; i++) v[i] = delta[i]! + residual[i]!;
    requireFinite('delta + residual', v, n);
  }
  const k = topkCount(n, spec.topkFraction);
  const plan = planUpdate(layout, spec.codec, k, control !== undefined);
  const data: NamedTensor['data'][] = [];
  let decoded: Float32Array | undefined; // lossy codecs: what the coordinator will read
  const offsets = layoutOffsets(layout);
  switch (spec.codec) {
    case 'none':
      offsets.forEach(({ offset, size }) => data.push(v.subarray(offset, offset + size)));
      break;
    case 'fp16': {
      const out = (decoded = new Float32Array(n));
      const bits = new Uint32Array(v.buffer, v.byteOffset, n);
      offsets.forEach(({ offset, size }) => {
        const half = new Uint16Array(size);
        for (let i = 0; i < size; i++) {
          let h = halfFromFloatBits(bits[offset + i]!);
          if ((h & 0x7fff) === 0x7c00) h = (h & 0x8000) | FP16_MAX_BITS; // finite in, finite out
          half[i] = h;
          out[offset + i] = float16BitsToFloat32(h);
        }
        data.push(half);
      });
      break;
    }
    case 'int8': {
      const out = (decoded = new Float32Array(n));
      offsets.forEach(({ offset, size }) => {
        let maxAbs = 0;
        for (let i = 0; i < size; i++) maxAbs = Math.max(maxAbs, Math.abs(v[offset + i]!));
        let scale = Math.fround(maxAbs / 127);
        while (!Number.isFinite(Math.fround(127 * scale))) scale = previousFloat32(scale);
        const q = new Int8Array(size);
        if (scale > 0) {
          for (let i = 0; i < size; i++) {
            const x = v[offset + i]! / scale;
            const r = Math.min(127, Math.round(Math.abs(x))); // half away from zero: symmetric
            q[i] = x < 0 ? -r : r;
            out[offset + i] = q[i]! * scale;
          }
        }
        data.push(q, new Float32Array([scale]));
      });
      break;
    }
    case 'topk': {
      const indices = topkIndices(v, k);
      const values = new Float32Array(k);
      decoded = new Float32Array(n);
      for (let j = 0; j < k; j++) decoded[indices[j]!] = values[j] = v[indices[j]!]!;
      data.push(indices, values);
      break;
    }
  }
  if (control) offsets.forEach(({ offset, size }) => data.push(control.subarray(offset, offset + size)));
  const parts = tensorsParts(
    plan.map((p, i) => ({ ...p, data: data[i]! })),
    { format: UPDATE_FORMAT, codec: spec.codec },
  );
  const size = parts.reduce((total, p) => total + p.length, 0);
  if (!decoded) return { parts, size };
  const next = new Float32Array(n);
  for (let i = 0; i < n; i++) next[i] = v[i]! - decoded[i]!;
  return { parts, size, residual: next };
}

/**
 * Reads an update object from an untrusted site. Throws UpdateDecodeError (a RangeError) whose
 * code says why: BAD_ENCODING (not safetensors, wrong format or codec, bad dtype, index out of
 * range or not strictly ascending, quantised value out of range), WRONG_SHAPE (tensor names or
 * shapes differ from the layout, control tensors only in part), NON_FINITE (NaN or Infinity in
 * what would be returned). With codec none, delta and control are views of `bytes` when the
 * tensors lie in layout order (as encodeUpdate writes them), so no copy of a large update is made:
 * leave `bytes` unchanged while they are in use.
 */
export function decodeUpdate(bytes: Uint8Array, layout: ParameterLayout, codec: Codec, limits: UpdateLimits): DecodedUpdate {
  const n = layoutSize(layout);
  let header: ReturnType<typeof readSafetensorsHeader>;
  try {
    header = readSafetensorsHeader(bytes, updateHeaderLimits(layout, codec, limits));
  } catch (err) {
    throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', (err as Error).message, { cause: err });
  }
  // Data is read only once everything is validated, F32 straight into the flat vectors (peak
  // memory: the object plus one model, whatever its size).
  const { entries: tensors, controls } = checkUpdateHeader(header, layout, codec, limits);
  const data = (name: string) => readTensorData(bytes, tensors.get(name)!);

  const offsets = layoutOffsets(layout);
  let delta: Float32Array;
  switch (codec) {
    case 'none':
      delta = float32Tensors(
        bytes,
        layout.map((t) => tensors.get(t.name)!),
        offsets,
        n,
      );
      break;
    case 'fp16': {
      delta = new Float32Array(n);
      const table = float16Table();
      layout.forEach((t, i) => {
        const half = data(t.name) as Uint16Array;
        const at = offsets[i]!.offset;
        for (let j = 0; j < half.length; j++) {
          if ((half[j]! & 0x7c00) === 0x7c00) throw new UpdateDecodeError('CONSORT_R_NON_FINITE', `tensor ${t.name}[${j}] is an fp16 NaN or Infinity`);
          delta[at + j] = table[half[j]!]!;
        }
      });
      break;
    }
    case 'int8':
      delta = new Float32Array(n);
      layout.forEach((t, i) => {
        const q = data(t.name) as Int8Array;
        const scale = (data(`${t.name}:scale`) as Float32Array)[0]!;
        if (!Number.isFinite(scale)) throw new UpdateDecodeError('CONSORT_R_NON_FINITE', `tensor ${t.name}: scale is ${scale}`);
        if (scale < 0) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `tensor ${t.name}: negative scale ${scale}`);
        const at = offsets[i]!.offset;
        for (let j = 0; j < q.length; j++) {
          if (q[j] === -128) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `tensor ${t.name}[${j}] is -128, outside the symmetric range ±127`);
          delta[at + j] = q[j]! * scale;
        }
      });
      break;
    case 'topk': {
      delta = new Float32Array(n);
      const indices = data('indices') as Int32Array;
      const values = data('values') as Float32Array;
      let previous = -1;
      for (let j = 0; j < indices.length; j++) {
        const at = indices[j]!;
        if (at <= previous) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `indices[${j}] = ${at} is not above indices[${j - 1}] = ${previous}`);
        if (at >= n) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `indices[${j}] = ${at} is outside the model's ${n} coordinates`);
        const x = values[j]!;
        if (!Number.isFinite(x)) throw new UpdateDecodeError('CONSORT_R_NON_FINITE', `values[${j}] is ${x}`);
        delta[at] = x;
        previous = at;
      }
      break;
    }
  }
  // int8 overflows float32 only where 127 * scale does; the other codecs checked above, or here.
  const deltaMax = requireDecodedFinite('delta', delta, layout);
  if (!controls) return { delta, maxAbs: deltaMax };
  const control = float32Tensors(
    bytes,
    layout.map((t) => tensors.get(controlName(t.name))!),
    offsets,
    n,
  );
  return { delta, control, maxAbs: deltaMax, controlMaxAbs: requireDecodedFinite('control', control, layout) };
}

/** The safetensors limits an update's header is read with: a few tensors too many is a shape problem (reported as such), many more a malformed object. */
export function updateHeaderLimits(layout: ParameterLayout, codec: Codec, limits: UpdateLimits): { maxBytes: number; maxTensors: number } {
  const k0 = limits.topkFraction !== undefined ? topkCount(layoutSize(layout), limits.topkFraction) : undefined;
  return { maxBytes: limits.maxBytes, maxTensors: planUpdate(layout, codec, k0 ?? 1, true).length + 16 };
}

/**
 * What decodeUpdate checks of an update before its data (UpdateDecodeError as it throws it):
 * format and codec metadata, control tensors all or none, tensor count, names, dtypes and shapes
 * of the layout (topk's k the sender's unless the limits pin it), and that a topk update has
 * coordinates. Returns the entries and whether the control delta is there.
 */
export function checkUpdateHeader(
  header: { entries: Map<string, TensorEntry>; metadata: Record<string, string> },
  layout: ParameterLayout,
  codec: Codec,
  limits: UpdateLimits,
): { entries: Map<string, TensorEntry>; controls: boolean } {
  const n = layoutSize(layout);
  const k0 = limits.topkFraction !== undefined ? topkCount(n, limits.topkFraction) : undefined;
  const withControl = planUpdate(layout, codec, k0 ?? 1, true);
  const { entries: tensors, metadata } = header;
  if (metadata.format !== UPDATE_FORMAT) {
    throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `update format ${JSON.stringify(metadata.format)}, expected ${UPDATE_FORMAT}`);
  }
  if (metadata.codec !== codec)
    throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `update encoded with ${JSON.stringify(metadata.codec)}, the job uses ${codec}`);

  const controlNames = layout.map((t) => controlName(t.name));
  const controls = controlNames.filter((name) => tensors.has(name)).length;
  if (controls !== 0 && controls !== layout.length) {
    throw new UpdateDecodeError('CONSORT_R_WRONG_SHAPE', `control delta has ${controls} of the model's ${layout.length} tensors`);
  }
  const plan = controls > 0 ? withControl : withControl.slice(0, withControl.length - layout.length);
  if (tensors.size !== plan.length) throw new UpdateDecodeError('CONSORT_R_WRONG_SHAPE', `update has ${tensors.size} tensors, expected ${plan.length}`);
  // topk's k is the sender's (unless limits pin it): take it from the indices tensor.
  const kSent = codec === 'topk' ? (tensors.get('indices')?.shape[0] ?? -1) : 0;
  for (const p of plan) {
    const t = tensors.get(p.name);
    if (!t) throw new UpdateDecodeError('CONSORT_R_WRONG_SHAPE', `update has no tensor ${p.name}`);
    if (t.dtype !== p.dtype) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `tensor ${p.name} is ${t.dtype}, expected ${p.dtype}`);
    const shape = codec === 'topk' && (p.name === 'indices' || p.name === 'values') && k0 === undefined ? [kSent] : p.shape;
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new UpdateDecodeError('CONSORT_R_WRONG_SHAPE', `tensor ${p.name} has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
  }
  if (codec === 'topk' && n > 0 && kSent === 0) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', 'topk update with no coordinates');
  return { entries: tensors, controls: controls > 0 };
}

/**
 * F32 tensors, one per layout tensor, as one flat vector: a view of the bytes when they lie
 * contiguously in layout order at a 4-byte aligned address (what encodeUpdate writes), else a copy.
 */
function float32Tensors(bytes: Uint8Array, entries: readonly TensorEntry[], offsets: ReturnType<typeof layoutOffsets>, n: number): Float32Array {
  const start = entries[0]?.begin ?? 0;
  const inOrder = entries.every((e, i) => e.begin === start + 4 * offsets[i]!.offset);
  if (LITTLE_ENDIAN && inOrder && (bytes.byteOffset + start) % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset + start, n);
  const out = new Float32Array(n);
  entries.forEach((e, i) => readFloat32Into(bytes, e, out, offsets[i]!.offset));
  return out;
}

/** Encoded size in bytes of any update of this layout with this codec (deterministic: it depends on neither values nor residual). */
export function bytesOfUpdate(layout: ParameterLayout, spec: CompressionSpec, options: { control?: boolean } = {}): number {
  const k = topkCount(layoutSize(layout), spec.topkFraction);
  return bytesOfTensors(planUpdate(layout, spec.codec, k, options.control ?? false), { format: UPDATE_FORMAT, codec: spec.codec });
}

/** IEEE float32 → float16 bits, round to nearest even; overflow gives ±Infinity, NaN stays NaN. */
export function float32ToFloat16Bits(x: number): number {
  F32[0] = x;
  return halfFromFloatBits(U32[0]!);
}

/** float16 bits → its exact value. */
export function float16BitsToFloat32(h: number): number {
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m !== 0 ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1024 + m) * 2 ** (e - 25);
}

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** float32 bits (as uint32) → float16 bits. */
function halfFromFloatBits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // the half's biased exponent: exp − 127 + 15
  if (e >= 31) return sign | 0x7c00;
  if (e >= 1) {
    const h = (e << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    // A carry out of the mantissa bumps the exponent, up to Infinity: still the right rounding.
    return sign | (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1) ? h + 1 : h);
  }
  // Subnormal half: value / 2^-24 = (1.mant · 2^23) · 2^(exp − 126), i.e. shifted right by 14 − e.
  const shift = 14 - e;
  if (shift > 24) return sign; // below half the smallest subnormal
  const full = mant | 0x800000;
  const h = full >>> shift;
  const rest = full & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return sign | (rest > half || (rest === half && (h & 1) === 1) ? h + 1 : h);
}

let table: Float32Array | undefined;
/** Every float16 bit pattern's value, by bits. */
export function float16Table(): Float32Array {
  if (!table) {
    table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) table[h] = float16BitsToFloat32(h);
  }
  return table;
}

function previousFloat32(x: number): number {
  F32[0] = x;
  U32[0] = U32[0]! - 1; // x > 0 and finite here
  return F32[0]!;
}

/**
 * Indices of the k largest |v| in ascending order; ties go to the lower index. A radix select on
 * the magnitude's float bits (monotonic in |x| for finite x): O(n), no sort, no worst case.
 */
function topkIndices(v: Float32Array, k: number): Int32Array {
  const n = v.length;
  const bits = new Uint32Array(v.buffer, v.byteOffset, n);
  const hist = new Uint32Array(65536);
  for (let i = 0; i < n; i++) hist[(bits[i]! & 0x7fffffff) >>> 16]!++;
  let above = 0;
  let high = 65535;
  for (; high > 0 && above + hist[high]! < k; high--) above += hist[high]!;
  hist.fill(0);
  for (let i = 0; i < n; i++) {
    const key = bits[i]! & 0x7fffffff;
    if (key >>> 16 === high) hist[key & 0xffff]!++;
  }
  let low = 65535;
  for (; low > 0 && above + hist[low]! < k; low--) above += hist[low]!;
  const threshold = ((high << 16) | low) >>> 0;
  let ties = k - above; // how many elements equal to the threshold to take
  const out = new Int32Array(k);
  let j = 0;
  for (let i = 0; i < n && j < k; i++) {
    const key = bits[i]! & 0x7fffffff;
    if (key > threshold || (key === threshold && ties-- > 0)) out[j++] = i;
  }
  return out;
}

/** The name of a layout tensor's control delta in an update. */
/** Bytes of one transmitted value of a per-tensor codec (top-k's values are float32). */
export function codecWidth(codec: Codec): 1 | 2 | 4 {
  return codec === 'fp16' ? 2 : codec === 'int8' ? 1 : 4;
}

export function controlName(name: string): string {
  return `control:${name}`;
}

/** The tensors of an update, in file order. */
function planUpdate(layout: ParameterLayout, codec: Codec, k: number, control: boolean): Array<{ name: string; dtype: TensorDtype; shape: number[] }> {
  const plan: Array<{ name: string; dtype: TensorDtype; shape: number[] }> = [];
  if (codec === 'topk') {
    plan.push({ name: 'indices', dtype: 'I32', shape: [k] }, { name: 'values', dtype: 'F32', shape: [k] });
  } else {
    for (const t of layout) {
      if (codec === 'int8') plan.push({ name: t.name, dtype: 'I8', shape: [...t.shape] }, { name: `${t.name}:scale`, dtype: 'F32', shape: [1] });
      else plan.push({ name: t.name, dtype: codec === 'fp16' ? 'F16' : 'F32', shape: [...t.shape] });
    }
  }
  if (control) for (const t of layout) plan.push({ name: controlName(t.name), dtype: 'F32', shape: [...t.shape] });
  const names = new Set(plan.map((p) => p.name));
  if (names.size !== plan.length)
    throw new RangeError(`codec ${codec}: the layout's tensor names collide with the codec's own (":scale", "control:", "indices", "values")`);
  return plan;
}

function requireFinite(what: string, values: Float32Array, n: number): void {
  if (values.length !== n) throw new RangeError(`encodeUpdate: ${what} has ${values.length} values, the layout ${n}`);
  if (Number.isFinite(maxAbs(values))) return;
  for (let i = 0; i < n; i++) if (!Number.isFinite(values[i]!)) throw new RangeError(`encodeUpdate: ${what}[${i}] is ${values[i]}`);
}

/** max |values[i]|; UpdateDecodeError NON_FINITE, naming the first bad element, when one is NaN or infinite. */
function requireDecodedFinite(what: string, values: Float32Array, layout: ParameterLayout): number {
  const m = maxAbs(values);
  if (Number.isFinite(m)) return m;
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i]!)) {
      const offsets = layoutOffsets(layout);
      const t = offsets.findIndex((o) => i < o.offset + o.size);
      throw new UpdateDecodeError('CONSORT_R_NON_FINITE', `${what} tensor ${layout[t]?.name}[${i - (offsets[t]?.offset ?? 0)}] is ${values[i]}`);
    }
  }
  return m;
}
