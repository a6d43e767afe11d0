// The safetensors format (8-byte little-endian header length, JSON header, raw little-endian
// data), for float32 tensors over a ParameterLayout. Pure: bytes in, bytes out.
import { type ParameterLayout, layoutOffsets, layoutSize } from '../model/layout.ts';

export interface SafetensorsHeaderEntry {
  dtype: 'F32';
  shape: number[];
  data_offsets: [number, number];
}

export function encodeSafetensors(layout: ParameterLayout, values: Float32Array, metadata: Record<string, string> = {}): Uint8Array {
  if (values.length !== layoutSize(layout)) throw new RangeError(`safetensors: ${values.length} values for a layout of ${layoutSize(layout)}`);
  const header: Record<string, SafetensorsHeaderEntry | Record<string, string>> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const offsets = layoutOffsets(layout);
  layout.forEach((t, i) => {
    const { offset, size } = offsets[i]!;
    header[t.name] = { dtype: 'F32', shape: [...t.shape], data_offsets: [offset * 4, (offset + size) * 4] };
  });
  let json = JSON.stringify(header);
  // Pad with spaces so the data starts 8-byte aligned, as the reference implementation does.
  const pad = (8 - ((8 + Buffer.byteLength(json)) % 8)) % 8;
  json += ' '.repeat(pad);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + values.length * 4);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  const data = new DataView(out.buffer, 8 + headerBytes.length);
  for (let i = 0; i < values.length; i++) data.setFloat32(i * 4, values[i]!, true);
  return out;
}

export function decodeSafetensors(bytes: Uint8Array): { layout: ParameterLayout; values: Float32Array; metadata: Record<string, string> } {
  if (bytes.length < 8) throw new RangeError('safetensors: shorter than its 8-byte header length');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (n > bytes.length - 8) throw new RangeError(`safetensors: header of ${n} bytes exceeds the ${bytes.length - 8} available`);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, unknown>;
  const metadata = (header.__metadata__ ?? {}) as Record<string, string>;
  const entries = Object.entries(header)
    .filter(([k]) => k !== '__metadata__')
    .map(([name, e]) => ({ name, ...(e as SafetensorsHeaderEntry) }))
    .sort((a, b) => a.data_offsets[0] - b.data_offsets[0]);
  const dataStart = 8 + n;
  const total = entries.reduce((s, e) => s + (e.data_offsets[1] - e.data_offsets[0]) / 4, 0);
  const values = new Float32Array(total);
  const data = new DataView(bytes.buffer, bytes.byteOffset + dataStart, bytes.byteLength - dataStart);
  let at = 0;
  for (const e of entries) {
    if (e.dtype !== 'F32') throw new RangeError(`safetensors: tensor ${e.name} has dtype ${e.dtype}; only F32 is supported`);
    const count = e.shape.reduce((a, b) => a * b, 1);
    if (e.data_offsets[1] - e.data_offsets[0] !== count * 4 || e.data_offsets[1] > data.byteLength) {
      throw new RangeError(`safetensors: tensor ${e.name}: offsets do not match its shape or the data`);
    }
    for (let i = 0; i < count; i++) values[at + i] = data.getFloat32(e.data_offsets[0] + i * 4, true);
    at += count;
  }
  return { layout: entries.map((e) => ({ name: e.name, shape: e.shape })), values, metadata };
}
