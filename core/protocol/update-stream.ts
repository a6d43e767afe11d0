// An update object that is never held whole (the coordinator's path for large models, see
// operator/coordinator/stored-updates.ts). UpdateScanner checks it as its bytes stream in, in
// file order, with decodeUpdate's checks (codecs.ts), and keeps only what a later read needs:
// where each tensor's data lies, int8's scales, and max|x|. StoredValueReader then reads the
// values again in model order, a range at a time, from byte cursors over the stored object.
//
// Same verdicts as decodeUpdate: an object one refuses the other refuses, with the same code and
// reason when its tensors lie in the order encodeUpdate writes them (every site's). Reasons can
// differ for an object laid out in another order, where the first fault in file order need not
// be the first decodeUpdate meets. Memory: the header, int8's statistics (a few KiB per tensor),
// topk's indices (4k bytes: top-k is small), whatever the object's size.
import { maxAbs } from '../aggregation/exact-kernel.ts';
import type { StoredFitResult, UpdateValueReader } from '../aggregation/stored-round.ts';
import { type ParameterLayout, layoutOffsets, layoutSize } from '../model/layout.ts';
import { DTYPE_BYTES, LITTLE_ENDIAN, parseSafetensorsHeader, safetensorsHeaderBytes, type TensorEntry } from '../tensor/safetensors.ts';
import { type Codec, checkUpdateHeader, codecWidth, controlName, float16Table, type UpdateLimits, UpdateDecodeError, updateHeaderLimits } from './codecs.ts';

/** Where a checked update's values lie in its object, for StoredValueReader. */
export interface StoredUpdateShape {
  codec: Codec;
  layout: ParameterLayout;
  /** Byte offset of each layout tensor's data (none, fp16, int8). */
  delta: number[];
  /** int8: each layout tensor's scale. */
  scales?: Float32Array;
  /** topk: k, and the byte offsets of the indices and of the values. */
  topk?: { k: number; indices: number; values: number };
  /** The control delta: byte offset of each layout tensor's data. */
  control?: number[];
}

/** What a scan found: the values' place, and what the ingestor still judges (range, control). */
export interface ScannedUpdate {
  shape: StoredUpdateShape;
  maxAbs: number;
  /** Present iff the update carries a control delta. */
  controlMaxAbs?: number;
  /** The first value (in model order) whose magnitude exceeds the scan's maxAbsValue. */
  deltaOver?: { index: number; value: number };
  controlOver?: { index: number; value: number };
}

export interface ScanOptions {
  layout: ParameterLayout;
  codec: Codec;
  limits: UpdateLimits;
  /** The object's size (as checked against the envelope): exactly this many bytes will be pushed. */
  size: number;
  /** Values beyond this magnitude are located (deltaOver, controlOver). */
  maxAbsValue: number;
}

type Role = { kind: 'delta'; t: number } | { kind: 'scale'; t: number } | { kind: 'control'; t: number } | { kind: 'indices' } | { kind: 'values' };

interface Segment {
  entry: TensorEntry;
  role: Role;
  /** Element width in bytes. */
  width: number;
  /** Elements seen so far. */
  done: number;
  count: number;
}

/** Elements processed at a time (the size of the aligned scratch arrays). */
const SCRATCH_ELEMENTS = 16384;
/** A header beyond this is refused rather than buffered (an honest one is ~100 bytes a tensor). */
const HEADER_BASE_BYTES = 64 * 1024;
const HEADER_BYTES_PER_TENSOR = 1024;

interface Int8Stats {
  /** First index of each code q (at q + 128), -1 if absent. */
  first: Int32Array;
  maxQ: number;
  seenQ: boolean;
  seenScale: boolean;
}

/** Checks an update object pushed in file order; finish() gives what a later read needs, or throws UpdateDecodeError. */
export class UpdateScanner {
  private readonly o: ScanOptions;
  private readonly n: number;
  private readonly offsets: Array<{ offset: number; size: number }>;
  private head: Uint8Array = new Uint8Array(0);
  private headNeeded = 8;
  private dataStart = -1;
  private position = 0;
  private segments: Segment[] = [];
  private seg = 0;
  /** An element cut by a chunk boundary. */
  private readonly carry = new Uint8Array(8);
  private carried = 0;
  private readonly scratch = new ArrayBuffer(SCRATCH_ELEMENTS * 4);
  private failure: UpdateDecodeError | undefined;
  private shape: StoredUpdateShape | undefined;
  private deltaMax = 0;
  private controlMax = 0;
  private deltaOver: { index: number; value: number } | undefined;
  private controlOver: { index: number; value: number } | undefined;
  /** A fault in the control delta found before the delta was all read (decodeUpdate reports the delta's first). */
  private controlFault: UpdateDecodeError | undefined;
  // int8: per tensor, its codes' statistics, the first -128 (refused once its scale is judged),
  // and the first value that overflows float32 (refused once the whole delta is read, as decodeUpdate does).
  private int8: Int8Stats[] = [];
  private minus128: Int32Array = new Int32Array(0);
  private overflow: { index: number; value: number } | undefined;
  private deltaSegments = 0;
  private deltaSegmentsDone = 0;
  // topk: the indices kept (k of them), the first fault of each kind by coordinate j.
  private kept: Int32Array = new Int32Array(0);
  private previousIndex = -1;
  private indexFault: { j: number; error: UpdateDecodeError } | undefined;
  private valueFault: { j: number; error: UpdateDecodeError } | undefined;
  private valueOverJ = -1;
  private valueOver = 0;
  /** What the header may be, for this layout and codec. */
  private readonly headerLimits: { maxBytes: number; maxTensors: number };

  constructor(o: ScanOptions) {
    this.o = o;
    this.n = layoutSize(o.layout);
    this.offsets = layoutOffsets(o.layout);
    this.headerLimits = updateHeaderLimits(o.layout, o.codec, o.limits);
  }

  /** Whether the object is refused already: the rest need not be read. */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  /** The next bytes of the object. Returns false once it is refused (more bytes are ignored). */
  push(chunk: Uint8Array): boolean {
    if (this.failure) return false;
    try {
      if (this.position + chunk.length > this.o.size) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `more than the ${this.o.size} bytes announced`);
      let at = 0;
      if (this.dataStart < 0) at = this.takeHeader(chunk);
      if (this.dataStart >= 0 && at < chunk.length) this.takeData(chunk.subarray(at));
      this.position += chunk.length;
    } catch (err) {
      this.failure = err instanceof UpdateDecodeError ? err : new UpdateDecodeError('CONSORT_R_BAD_ENCODING', (err as Error).message, { cause: err });
    }
    return this.failure === undefined;
  }

  /** The verdict once every byte was pushed: what a later read needs, or UpdateDecodeError. */
  finish(): ScannedUpdate {
    if (this.failure) throw this.failure;
    if (this.dataStart < 0) {
      // Too short for its header: refused as readSafetensorsHeader refuses it.
      try {
        safetensorsHeaderBytes(this.head, this.o.size, this.headerLimits);
      } catch (err) {
        throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', (err as Error).message, { cause: err });
      }
    }
    if (this.position !== this.o.size || this.dataStart < 0 || this.seg < this.segments.length) {
      throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `${this.position} of the object's ${this.o.size} bytes were scanned`);
    }
    this.deltaComplete();
    if (this.controlFault) throw this.controlFault;
    const out: ScannedUpdate = { shape: this.shape!, maxAbs: this.deltaMax };
    if (this.deltaOver) out.deltaOver = this.deltaOver;
    if (this.shape!.control !== undefined) {
      out.controlMaxAbs = this.controlMax;
      if (this.controlOver) out.controlOver = this.controlOver;
    }
    return out;
  }

  // ---- header -------------------------------------------------------------------------------

  /** Buffers the header; once complete, checks it and plans the data. Returns the chunk's bytes used. */
  private takeHeader(chunk: Uint8Array): number {
    const { layout, codec, limits, size } = this.o;
    const headerLimits = this.headerLimits;
    let used = 0;
    while (this.dataStart < 0 && used < chunk.length) {
      const take = Math.min(this.headNeeded - this.head.length, chunk.length - used);
      const grown = new Uint8Array(this.head.length + take);
      grown.set(this.head);
      grown.set(chunk.subarray(used, used + take), this.head.length);
      this.head = grown;
      used += take;
      if (this.head.length < this.headNeeded) break;
      if (this.headNeeded === 8) {
        this.headNeeded = safetensorsHeaderBytes(this.head, size, headerLimits);
        const cap = HEADER_BASE_BYTES + HEADER_BYTES_PER_TENSOR * headerLimits.maxTensors;
        if (this.headNeeded - 8 > cap) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `header of ${this.headNeeded - 8} bytes exceeds ${cap}`);
        continue;
      }
      let header: ReturnType<typeof parseSafetensorsHeader>;
      try {
        header = parseSafetensorsHeader(this.head, size, headerLimits);
      } catch (err) {
        throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', (err as Error).message, { cause: err });
      }
      const { entries, controls } = checkUpdateHeader(header, layout, codec, limits);
      this.plan(entries, controls);
      this.dataStart = this.headNeeded;
      this.head = new Uint8Array(0);
      // An object with no data at all (an empty model) has nothing more to check.
      this.skipEmptySegments();
    }
    return used;
  }

  private plan(entries: Map<string, TensorEntry>, controls: boolean): void {
    const { layout, codec } = this.o;
    // checkUpdateHeader made sure the entries are exactly these names.
    const roles = new Map<string, Role>([
      ['indices', { kind: 'indices' }],
      ['values', { kind: 'values' }],
    ]);
    layout.forEach((t, i) => {
      roles.set(controlName(t.name), { kind: 'control', t: i });
      if (codec === 'int8') roles.set(`${t.name}:scale`, { kind: 'scale', t: i });
      if (codec !== 'topk') roles.set(t.name, { kind: 'delta', t: i });
    });
    const delta: number[] = new Array<number>(layout.length).fill(0);
    const control: number[] = new Array<number>(layout.length).fill(0);
    const shape: StoredUpdateShape = { codec, layout, delta };
    const topk = { k: 0, indices: 0, values: 0 };
    for (const entry of entries.values()) {
      const role = roles.get(entry.name)!;
      const width = DTYPE_BYTES[entry.dtype];
      this.segments.push({ entry, role, width, done: 0, count: (entry.end - entry.begin) / width });
      if (role.kind === 'delta') delta[role.t] = entry.begin;
      else if (role.kind === 'control') control[role.t] = entry.begin;
      else if (role.kind === 'indices') {
        topk.indices = entry.begin;
        topk.k = entry.shape[0]!;
      } else if (role.kind === 'values') topk.values = entry.begin;
      if (role.kind !== 'control') this.deltaSegments++;
    }
    if (codec === 'topk') shape.topk = topk;
    if (codec === 'int8') {
      shape.scales = new Float32Array(layout.length);
      this.int8 = layout.map(() => ({ first: new Int32Array(256).fill(-1), maxQ: 0, seenQ: false, seenScale: false }));
      this.minus128 = new Int32Array(layout.length).fill(-1);
    }
    if (codec === 'topk') this.kept = new Int32Array(topk.k);
    if (controls) shape.control = control;
    this.shape = shape;
  }

  // ---- data ---------------------------------------------------------------------------------

  private skipEmptySegments(): void {
    while (this.seg < this.segments.length && this.segments[this.seg]!.done === this.segments[this.seg]!.count) {
      this.segmentDone(this.segments[this.seg]!);
      this.seg++;
    }
  }

  private takeData(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.length) {
      if (this.failure) return;
      const seg = this.segments[this.seg];
      if (!seg) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', 'data after the last tensor');
      const w = seg.width;
      // An element cut by the previous chunk.
      if (this.carried > 0) {
        const take = Math.min(w - this.carried, bytes.length - at);
        this.carry.set(bytes.subarray(at, at + take), this.carried);
        this.carried += take;
        at += take;
        if (this.carried < w) return;
        this.carried = 0;
        this.elements(seg, this.carry.subarray(0, w), 1);
      } else {
        const whole = Math.min(seg.count - seg.done, Math.floor((bytes.length - at) / w), SCRATCH_ELEMENTS);
        if (whole === 0) {
          this.carry.set(bytes.subarray(at), 0);
          this.carried = bytes.length - at;
          return;
        }
        this.elements(seg, bytes.subarray(at, at + whole * w), whole);
        at += whole * w;
      }
      if (seg.done === seg.count) {
        this.seg++;
        this.segmentDone(seg);
        this.skipEmptySegments();
      }
    }
  }

  /** `count` elements of `seg` (little-endian bytes), copied into aligned scratch and judged. */
  private elements(seg: Segment, bytes: Uint8Array, count: number): void {
    const j0 = seg.done;
    seg.done += count;
    new Uint8Array(this.scratch, 0, bytes.length).set(bytes);
    if (!LITTLE_ENDIAN) swapInPlace(new Uint8Array(this.scratch, 0, bytes.length), seg.width);
    const role = seg.role;
    if (role.kind === 'delta' && this.o.codec === 'fp16') this.fp16(role.t, j0, new Uint16Array(this.scratch, 0, count));
    else if (role.kind === 'delta' && this.o.codec === 'int8') this.int8Codes(role.t, j0, new Int8Array(this.scratch, 0, count));
    else if (role.kind === 'delta' || role.kind === 'control') this.float32(role.kind, role.t, j0, new Float32Array(this.scratch, 0, count));
    else if (role.kind === 'scale') this.shape!.scales![role.t] = new Float32Array(this.scratch, 0, 1)[0]!;
    else if (role.kind === 'indices') this.indices(j0, new Int32Array(this.scratch, 0, count));
    else this.values(j0, new Float32Array(this.scratch, 0, count));
  }

  /** F32 values of tensor t (codec none's delta, or the control delta): finite, max|x|, the first beyond the limit. */
  private float32(what: 'delta' | 'control', t: number, j0: number, values: Float32Array): void {
    const limit = this.o.maxAbsValue;
    const m = maxAbs(values);
    const over = what === 'delta' ? this.deltaOver : this.controlOver;
    if (Number.isFinite(m) && (m <= limit || over)) {
      if (what === 'delta') this.deltaMax = Math.max(this.deltaMax, m);
      else this.controlMax = Math.max(this.controlMax, m);
      return;
    }
    const at = this.offsets[t]!.offset + j0;
    for (let i = 0; i < values.length; i++) {
      const x = values[i]!;
      if (!Number.isFinite(x)) {
        const error = new UpdateDecodeError('CONSORT_R_NON_FINITE', `${what} tensor ${this.o.layout[t]!.name}[${j0 + i}] is ${x}`);
        // The delta is judged before the control delta (decodeUpdate's order).
        if (what === 'control' && this.deltaSegmentsDone < this.deltaSegments) {
          this.controlFault ??= error;
          return;
        }
        throw error;
      }
      const ax = Math.abs(x);
      if (ax > limit) {
        if (what === 'delta') this.deltaOver ??= { index: at + i, value: x };
        else this.controlOver ??= { index: at + i, value: x };
      }
      if (what === 'delta') this.deltaMax = Math.max(this.deltaMax, ax);
      else this.controlMax = Math.max(this.controlMax, ax);
    }
  }

  private fp16(t: number, j0: number, half: Uint16Array): void {
    const table = float16Table();
    const limit = this.o.maxAbsValue;
    const at = this.offsets[t]!.offset + j0;
    let m = this.deltaMax;
    for (let i = 0; i < half.length; i++) {
      const h = half[i]!;
      if ((h & 0x7c00) === 0x7c00)
        throw new UpdateDecodeError('CONSORT_R_NON_FINITE', `tensor ${this.o.layout[t]!.name}[${j0 + i}] is an fp16 NaN or Infinity`);
      const x = table[h]!;
      const ax = Math.abs(x);
      if (ax > m) m = ax;
      if (ax > limit) this.deltaOver ??= { index: at + i, value: x };
    }
    this.deltaMax = m;
  }

  private int8Codes(t: number, j0: number, q: Int8Array): void {
    const s = this.int8[t]!;
    const first = s.first;
    let maxQ = s.maxQ;
    for (let i = 0; i < q.length; i++) {
      const c = q[i]!;
      if (first[c + 128]! < 0) {
        first[c + 128] = j0 + i;
        if (c === -128 && this.minus128[t]! < 0) this.minus128[t] = j0 + i;
        const a = c < 0 ? -c : c;
        if (a > maxQ && c !== -128) maxQ = a;
      }
    }
    s.maxQ = maxQ;
  }

  private indices(j0: number, idx: Int32Array): void {
    this.kept.set(idx, j0);
    if (this.indexFault) return;
    const n = this.n;
    let previous = this.previousIndex;
    for (let i = 0; i < idx.length; i++) {
      const at = idx[i]!;
      const j = j0 + i;
      let message: string | undefined;
      if (at <= previous) message = `indices[${j}] = ${at} is not above indices[${j - 1}] = ${previous}`;
      else if (at >= n) message = `indices[${j}] = ${at} is outside the model's ${n} coordinates`;
      if (message) {
        this.indexFault = { j, error: new UpdateDecodeError('CONSORT_R_BAD_ENCODING', message) };
        return;
      }
      previous = at;
    }
    this.previousIndex = previous;
  }

  private values(j0: number, values: Float32Array): void {
    const limit = this.o.maxAbsValue;
    let m = this.deltaMax;
    for (let i = 0; i < values.length; i++) {
      const x = values[i]!;
      const j = j0 + i;
      if (!Number.isFinite(x)) {
        this.valueFault ??= { j, error: new UpdateDecodeError('CONSORT_R_NON_FINITE', `values[${j}] is ${x}`) };
        return;
      }
      const ax = Math.abs(x);
      if (ax > m) m = ax;
      if (ax > limit && this.valueOverJ < 0) {
        this.valueOverJ = j;
        this.valueOver = x;
      }
    }
    this.deltaMax = m;
  }

  /** A segment is complete: int8 judges a tensor once its codes and its scale are in; the last delta segment closes the delta. */
  private segmentDone(seg: Segment): void {
    const role = seg.role;
    if (this.o.codec === 'int8' && (role.kind === 'delta' || role.kind === 'scale')) {
      const s = this.int8[role.t]!;
      if (role.kind === 'delta') s.seenQ = true;
      else s.seenScale = true;
      if (s.seenQ && s.seenScale) this.judgeInt8(role.t);
    }
    if (role.kind !== 'control') {
      this.deltaSegmentsDone++;
      if (this.deltaSegmentsDone === this.deltaSegments) this.deltaComplete();
    }
  }

  /** decodeUpdate's checks of an int8 tensor, in its order (scale, then codes); its values' max|x|, overflow and first beyond the limit. */
  private judgeInt8(t: number): void {
    const name = this.o.layout[t]!.name;
    const scale = this.shape!.scales![t]!;
    if (!Number.isFinite(scale)) throw new UpdateDecodeError('CONSORT_R_NON_FINITE', `tensor ${name}: scale is ${scale}`);
    if (scale < 0) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `tensor ${name}: negative scale ${scale}`);
    const j128 = this.minus128[t]!;
    if (j128 >= 0) throw new UpdateDecodeError('CONSORT_R_BAD_ENCODING', `tensor ${name}[${j128}] is -128, outside the symmetric range ±127`);
    // The values are fround(q * scale), monotonic in |q|: max|x| is that of the largest code.
    const s = this.int8[t]!;
    const at = this.offsets[t]!.offset;
    this.deltaMax = Math.max(this.deltaMax, Math.abs(Math.fround(s.maxQ * scale)));
    const limit = this.o.maxAbsValue;
    // The first index (and its value) of a code whose value overflows, and of one beyond the limit.
    let infinite: { j: number; value: number } | undefined;
    let over: { j: number; value: number } | undefined;
    for (let c = -127; c <= 127; c++) {
      const j = s.first[c + 128]!;
      if (j < 0) continue;
      const x = Math.fround(c * scale);
      if (!Number.isFinite(x) && (!infinite || j < infinite.j)) infinite = { j, value: x };
      if (Math.abs(x) > limit && (!over || j < over.j)) over = { j, value: x };
    }
    if (infinite && !this.overflow) this.overflow = { index: at + infinite.j, value: infinite.value };
    if (over && !this.deltaOver) this.deltaOver = { index: at + over.j, value: over.value };
  }

  /** The delta is read: faults decodeUpdate reports after it (int8's overflow, topk's by coordinate). */
  private deltaComplete(): void {
    if (this.overflow) {
      const i = this.overflow.index;
      const t = this.offsets.findIndex((o) => i < o.offset + o.size);
      throw new UpdateDecodeError(
        'CONSORT_R_NON_FINITE',
        `delta tensor ${this.o.layout[t]?.name}[${i - (this.offsets[t]?.offset ?? 0)}] is ${this.overflow.value}`,
      );
    }
    if (this.o.codec === 'topk') {
      const a = this.indexFault;
      const b = this.valueFault;
      // decodeUpdate meets coordinate j's index before its value.
      if (a && (!b || a.j <= b.j)) throw a.error;
      if (b) throw b.error;
      if (this.valueOverJ >= 0 && !this.deltaOver) this.deltaOver = { index: this.kept[this.valueOverJ]!, value: this.valueOver };
    }
  }
}

function swapInPlace(bytes: Uint8Array, width: number): void {
  if (width === 1) return;
  for (let i = 0; i + width <= bytes.length; i += width) bytes.subarray(i, i + width).reverse();
}

// ---- reading the values back ----------------------------------------------------------------

/** A sequential read of a stored object from some byte on. */
export interface ByteCursor {
  /** Fills `into` with the next into.length bytes. */
  read(into: Uint8Array): Promise<void>;
  /** Passes over the next `bytes` bytes. */
  skip(bytes: number): Promise<void>;
  close(): void;
}

/** Opens a cursor at a byte of the object. */
export type OpenCursor = (position: number) => ByteCursor;

/** A jump forward shorter than this is read through rather than a cursor opened anew. */
const SKIP_BY_READING = 256 * 1024;

/** A cursor that follows the positions asked of it: reads on, skips a little, or opens another. */
class Follower {
  private readonly open: OpenCursor;
  private cursor: ByteCursor | undefined;
  private at = -1;

  constructor(open: OpenCursor) {
    this.open = open;
  }

  async read(position: number, into: Uint8Array): Promise<void> {
    if (!this.cursor || position < this.at || position - this.at > SKIP_BY_READING) {
      this.cursor?.close();
      this.cursor = this.open(position);
      this.at = position;
    } else if (position > this.at) {
      await this.cursor.skip(position - this.at);
      this.at = position;
    }
    await this.cursor.read(into);
    this.at += into.length;
  }

  close(): void {
    this.cursor?.close();
    this.cursor = undefined;
  }
}

/**
 * Reads a scanned update's values in model order, from cursors over its object: the delta
 * decoded as decodeUpdate decodes it (the same float32 values), the control delta beside it.
 */
export class StoredValueReader implements UpdateValueReader {
  private readonly shape: StoredUpdateShape;
  private readonly offsets: Array<{ offset: number; size: number }>;
  private readonly n: number;
  private readonly delta: Follower;
  private readonly values: Follower | undefined;
  private readonly control: Follower | undefined;
  private next = 0;
  private readonly scratch = new ArrayBuffer(SCRATCH_ELEMENTS * 4);
  // topk: pairs read ahead.
  private pairIndex = new Int32Array(0);
  private pairValue = new Float32Array(0);
  private pairAt = 0;
  private pairs = 0;
  private pairsRead = 0;

  /** Where the stored object's chunks end (byte offsets), when the store says. */
  private readonly chunkEnds: ArrayLike<number> | undefined;

  constructor(shape: StoredUpdateShape, open: OpenCursor, chunkEnds?: ArrayLike<number>) {
    this.shape = shape;
    this.chunkEnds = chunkEnds;
    this.offsets = layoutOffsets(shape.layout);
    this.n = layoutSize(shape.layout);
    this.delta = new Follower(open);
    this.values = shape.topk ? new Follower(open) : undefined;
    this.control = shape.control ? new Follower(open) : undefined;
    if (shape.topk) {
      this.pairIndex = new Int32Array(SCRATCH_ELEMENTS);
      this.pairValue = new Float32Array(SCRATCH_ELEMENTS);
    }
  }

  async read(delta: Float32Array, control?: Float32Array): Promise<void> {
    const a = this.next;
    const b = a + delta.length;
    if (b > this.n) throw new RangeError(`StoredValueReader: values [${a}, ${b}) of a model of ${this.n}`);
    if (control && (!this.control || control.length !== delta.length))
      throw new RangeError('StoredValueReader: the update has no control delta, or a range of another length');
    if (this.shape.codec === 'topk') await this.topk(delta, a, b);
    else await this.perTensor(this.delta, this.shape.delta, a, b, delta, this.shape.codec);
    if (control) await this.perTensor(this.control!, this.shape.control!, a, b, control, 'none');
    this.next = b;
  }

  close(): void {
    this.delta.close();
    this.values?.close();
    this.control?.close();
  }

  /** The largest end in (start, end] whose delta bytes end a chunk of the object (end if there is none, or for top-k). */
  boundary(start: number, end: number): number {
    const ends = this.chunkEnds;
    if (!ends || ends.length === 0 || this.shape.codec === 'topk' || end <= start) return end;
    const t = this.tensorAt(end - 1);
    const { offset } = this.offsets[t]!;
    const width = codecWidth(this.shape.codec);
    const begin = this.shape.delta[t]!;
    const low = begin + width * (Math.max(start, offset) - offset);
    const high = begin + width * (end - offset);
    // The last chunk end at or before `high`, then back while past `low`, for one on an element.
    let lo = 0;
    let hi = ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ends[mid]! <= high) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo - 1; i >= 0 && ends[i]! > low; i--) {
      if ((ends[i]! - begin) % width === 0) return offset + (ends[i]! - begin) / width;
    }
    return end;
  }

  /** Values [a, b) of tensors laid out one per layout tensor (F32, F16 or I8 with its scale) into out. */
  private async perTensor(follower: Follower, begins: number[], a: number, b: number, out: Float32Array, codec: Codec): Promise<void> {
    const width = codecWidth(codec);
    let t = this.tensorAt(a);
    for (let e = a; e < b; ) {
      while (e >= this.offsets[t]!.offset + this.offsets[t]!.size) t++;
      const { offset, size } = this.offsets[t]!;
      const end = Math.min(b, offset + size);
      const position = begins[t]! + width * (e - offset);
      if (codec === 'none' && LITTLE_ENDIAN) {
        // Straight into the output's own bytes.
        await follower.read(position, new Uint8Array(out.buffer, out.byteOffset + 4 * (e - a), 4 * (end - e)));
        e = end;
        continue;
      }
      const count = Math.min(end - e, SCRATCH_ELEMENTS);
      const bytes = new Uint8Array(this.scratch, 0, count * width);
      await follower.read(position, bytes);
      if (!LITTLE_ENDIAN) swapInPlace(bytes, width);
      if (codec === 'none') out.set(new Float32Array(this.scratch, 0, count), e - a);
      else if (codec === 'fp16') {
        const table = float16Table();
        const half = new Uint16Array(this.scratch, 0, count);
        for (let i = 0; i < count; i++) out[e - a + i] = table[half[i]!]!;
      } else {
        const q = new Int8Array(this.scratch, 0, count);
        const scale = this.shape.scales![t]!;
        for (let i = 0; i < count; i++) out[e - a + i] = q[i]! * scale;
      }
      e += count;
    }
  }

  /** Values [a, b) of a top-k update: zeros but at its indices. */
  private async topk(out: Float32Array, a: number, b: number): Promise<void> {
    out.fill(0);
    const { k, indices, values } = this.shape.topk!;
    for (;;) {
      if (this.pairAt === this.pairs) {
        if (this.pairsRead === k) return;
        const count = Math.min(SCRATCH_ELEMENTS, k - this.pairsRead);
        const idx = new Uint8Array(this.pairIndex.buffer, 0, 4 * count);
        const val = new Uint8Array(this.pairValue.buffer, 0, 4 * count);
        await this.delta.read(indices + 4 * this.pairsRead, idx);
        await this.values!.read(values + 4 * this.pairsRead, val);
        if (!LITTLE_ENDIAN) {
          swapInPlace(idx, 4);
          swapInPlace(val, 4);
        }
        this.pairsRead += count;
        this.pairs = count;
        this.pairAt = 0;
      }
      const at = this.pairIndex[this.pairAt]!;
      if (at >= b) return;
      out[at - a] = this.pairValue[this.pairAt]!;
      this.pairAt++;
    }
  }

  private tensorAt(e: number): number {
    let lo = 0;
    let hi = this.offsets.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (e < this.offsets[mid]!.offset + this.offsets[mid]!.size) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
}

/** A scanned update as a stored result: its values are read through `open` (chunkEnds: where the stored object's chunks end). */
export function storedResult(
  base: Omit<StoredFitResult, 'maxAbs' | 'controlMaxAbs' | 'open'>,
  scanned: ScannedUpdate,
  open: OpenCursor,
  chunkEnds?: ArrayLike<number>,
): StoredFitResult {
  return {
    ...base,
    maxAbs: scanned.maxAbs,
    ...(scanned.controlMaxAbs !== undefined ? { controlMaxAbs: scanned.controlMaxAbs } : {}),
    open: () => new StoredValueReader(scanned.shape, open, chunkEnds),
  };
}
