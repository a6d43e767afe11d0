// The coordinator's checkpoint, written after every round: everything a restarted coordinator
// needs to carry on as if it had never stopped. Sampling draws from a stream keyed by
// (seed, round), so the round number is the whole RNG state. Float64 strategy buffers are kept
// bit-exact, so a resumed job ends in the same bytes as an uninterrupted one.
import type { ObjectStore } from '@nats-io/obj';
import { z } from 'zod';
import { describeIssues } from '../../core/job/issues.ts';
import { retrying } from '../../core/protocol/retry.ts';
import { objectNames } from '../../core/protocol/subjects.ts';
import type { SiteEvaluation, SiteFailure } from '../../core/protocol/transport.ts';
import { RoundRecord, SiteMetrics } from '../../core/report/run-report.ts';
import { OperatorError } from '../errors.ts';
import { concatBytes } from '../../core/tensor/safetensors.ts';
import type { StrategyState } from '../../core/strategies/strategy.ts';

export const CHECKPOINT_FORMAT = 'consort.dev/checkpoint/v1';

/**
 * Round records per archived segment. A checkpoint is written every round; with every record in
 * it, its header grew with rounds × sites (a 50-site job of 1,000 rounds rewrote megabytes of JSON
 * each round). A store that can keep records apart (CheckpointStore.saveRecords) takes each full
 * run of this many once, and the checkpoint keeps only the records after them.
 */
export const RECORDS_PER_SEGMENT = 64;

/** One archived segment: exactly RECORDS_PER_SEGMENT records, as JSON. */
const RecordSegment = z.array(RoundRecord).length(RECORDS_PER_SEGMENT);

export function encodeRecordSegment(records: readonly RoundRecord[]): Uint8Array {
  if (records.length !== RECORDS_PER_SEGMENT) throw new RangeError(`a record segment holds ${RECORDS_PER_SEGMENT} records, not ${records.length}`);
  return new TextEncoder().encode(JSON.stringify(records));
}

export function decodeRecordSegment(bytes: Uint8Array): RoundRecord[] {
  return RecordSegment.parse(JSON.parse(new TextDecoder().decode(bytes)));
}

export interface Checkpoint {
  job: string;
  /** Rounds completed. */
  round: number;
  global: Float32Array;
  strategy: StrategyState;
  /**
   * The round records. Encoded (checkpointParts), the first `archived` of them are left out, the
   * store keeping them apart; decoded (decodeCheckpoint), only those after them are here, and
   * loadCheckpoint puts the archived ones back in front.
   */
  records: RoundRecord[];
  /** How many leading records the store keeps apart, in segments of RECORDS_PER_SEGMENT. */
  archived?: number;
  /** Early-stopping bookkeeping. */
  best: number;
  sinceBest: number;
  stoppedBy?: 'rounds' | 'target' | 'patience';
  /** The transport's own state (e.g. replay protection), opaque here. */
  transport?: unknown;
  /**
   * The job is over: every site's score of the final model (and who did not score it). Saved
   * before the sites are told the job is done, so that a coordinator killed after that, its sites
   * gone, finishes from here instead of waiting for them.
   */
  final?: FinalScores;
}

export interface FinalScores {
  scores: SiteEvaluation[];
  missing: SiteFailure[];
}

const FinalScores = z.object({
  scores: z.array(SiteMetrics.extend({ trainLoss: z.number().optional(), trainSamples: z.number().int().min(0).optional() })),
  missing: z.array(z.object({ site: z.string(), code: z.string(), reason: z.string() })),
});

const Header = z.object({
  format: z.literal(CHECKPOINT_FORMAT),
  job: z.string(),
  round: z.number().int().min(0),
  strategy: z.object({ name: z.string(), step: z.number().int().min(0), buffers: z.array(z.object({ name: z.string(), length: z.number().int().min(0) })) }),
  globalLength: z.number().int().min(0),
  records: z.array(RoundRecord),
  archived: z
    .number()
    .int()
    .min(0)
    .refine((n) => n % RECORDS_PER_SEGMENT === 0, `a multiple of ${RECORDS_PER_SEGMENT}`)
    .optional(),
  best: z.number().nullable(),
  sinceBest: z.number().int().min(0),
  stoppedBy: z.enum(['rounds', 'target', 'patience']).optional(),
  transport: z.unknown().optional(),
  final: FinalScores.optional(),
});

/** [u32 header length][header JSON][global float32][strategy buffers float64], little-endian. */
export function encodeCheckpoint(c: Checkpoint): Uint8Array {
  return concatBytes(checkpointParts(c));
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The bytes of a typed array as stored (little-endian): a view on a little-endian machine, else a copy. */
function littleEndianBytes(a: Float32Array | Float64Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = new Uint8Array(a.byteLength);
  const view = new DataView(out.buffer);
  for (let i = 0; i < a.length; i++) {
    if (a instanceof Float32Array) view.setFloat32(4 * i, a[i]!, true);
    else view.setFloat64(8 * i, a[i]!, true);
  }
  return out;
}

/**
 * encodeCheckpoint's bytes as pieces, the model and the strategy's buffers as views of their
 * arrays (no copy of a large model): for a streaming write.
 */
export function checkpointParts(c: Checkpoint): Uint8Array[] {
  const buffers = Object.entries(c.strategy.buffers).sort(([a], [b]) => (a < b ? -1 : 1));
  const header = new TextEncoder().encode(
    JSON.stringify({
      format: CHECKPOINT_FORMAT,
      job: c.job,
      round: c.round,
      strategy: { name: c.strategy.name, step: c.strategy.step, buffers: buffers.map(([name, b]) => ({ name, length: b.length })) },
      globalLength: c.global.length,
      records: c.archived ? c.records.slice(c.archived) : c.records,
      ...(c.archived ? { archived: c.archived } : {}),
      best: Number.isFinite(c.best) ? c.best : null,
      sinceBest: c.sinceBest,
      ...(c.stoppedBy ? { stoppedBy: c.stoppedBy } : {}),
      ...(c.transport !== undefined ? { transport: c.transport } : {}),
      ...(c.final ? { final: c.final } : {}),
    }),
  );
  const pad = (8 - ((4 + header.length) % 8)) % 8;
  const head = new Uint8Array(4 + header.length + pad);
  new DataView(head.buffer).setUint32(0, header.length + pad, true);
  head.set(header, 4);
  head.fill(0x20, 4 + header.length);
  return [head, littleEndianBytes(c.global), new Uint8Array((c.global.length * 4) % 8), ...buffers.map(([, b]) => littleEndianBytes(b))];
}

/** Little-endian bytes[at, at + 4 n) as float32, or [at, at + 8 n) as float64, in a fresh array. */
function readArray<T extends Float32Array | Float64Array>(bytes: Uint8Array, at: number, out: T): T {
  const width = out.BYTES_PER_ELEMENT;
  if (LITTLE_ENDIAN) {
    new Uint8Array(out.buffer).set(bytes.subarray(at, at + width * out.length));
    return out;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = width === 4 ? view.getFloat32(at + 4 * i, true) : view.getFloat64(at + 8 * i, true);
  return out;
}

export function decodeCheckpoint(bytes: Uint8Array): Checkpoint {
  if (bytes.length < 4) throw new RangeError('checkpoint: truncated');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = view.getUint32(0, true);
  if (4 + n > bytes.length) throw new RangeError('checkpoint: header exceeds the file');
  const h = Header.parse(JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + n))));
  const need = 4 + n + h.globalLength * 4 + ((h.globalLength * 4) % 8) + h.strategy.buffers.reduce((s, b) => s + b.length * 8, 0);
  if (need !== bytes.length) throw new RangeError(`checkpoint: ${bytes.length} bytes, the header describes ${need}`);
  let at = 4 + n;
  const global = readArray(bytes, at, new Float32Array(h.globalLength));
  at += h.globalLength * 4 + ((h.globalLength * 4) % 8);
  const buffers: Record<string, Float64Array> = {};
  for (const b of h.strategy.buffers) {
    buffers[b.name] = readArray(bytes, at, new Float64Array(b.length));
    at += b.length * 8;
  }
  return {
    job: h.job,
    round: h.round,
    global,
    strategy: { name: h.strategy.name as StrategyState['name'], step: h.strategy.step, buffers },
    records: h.records,
    ...(h.archived ? { archived: h.archived } : {}),
    best: h.best ?? Number.NEGATIVE_INFINITY,
    sinceBest: h.sinceBest,
    ...(h.stoppedBy ? { stoppedBy: h.stoppedBy } : {}),
    ...(h.transport !== undefined ? { transport: h.transport } : {}),
    ...(h.final ? { final: h.final } : {}),
  };
}

/** Where checkpoints live: a file beside the coordinator, or the job's state bucket in NATS. */
export interface CheckpointStore {
  load(): Promise<Uint8Array | undefined>;
  /** Stores the checkpoint whose bytes are these pieces, one after the other (checkpointParts). */
  save(parts: Uint8Array[]): Promise<void>;
  /**
   * Keeps segment `index` of the round records (RECORDS_PER_SEGMENT of them, which never change)
   * apart from the checkpoint; written before the checkpoint that counts it. Absent: every record
   * stays in the checkpoint.
   */
  saveRecords?(index: number, records: readonly RoundRecord[]): Promise<void>;
  /** Segment `index` of the round records, as saveRecords kept it. */
  loadRecords?(index: number): Promise<RoundRecord[]>;
}

/**
 * Segment `index` of a job's round records from its state bucket (store: the bucket), tried again
 * for up to `patienceMs` while the server is unreachable; a missing or malformed one is an error.
 */
export async function readRecordSegment(store: Pick<ObjectStore, 'getBlob'>, index: number, patienceMs = 0): Promise<RoundRecord[]> {
  const bytes = await retrying(() => store.getBlob(objectNames.records(index)), { until: Date.now() + patienceMs });
  if (!bytes) throw new RangeError(`checkpoint: its record segment ${index} (${objectNames.records(index)}) is missing from the state bucket`);
  try {
    return decodeRecordSegment(bytes);
  } catch (err) {
    throw new RangeError(`checkpoint: its record segment ${index} is not ${RECORDS_PER_SEGMENT} round records: ${(err as Error).message.slice(0, 300)}`);
  }
}

/** The stored checkpoint with all its round records (the archived ones put back in front), or undefined if there is none. */
/**
 * The store's checkpoint, its records put back; undefined when there is none. One that cannot be
 * read (damaged, of another version, its segments gone) is refused CONSORT_C_CHECKPOINT, naming
 * what is wrong: a coordinator resuming from it used to die on a bare ZodError or SyntaxError.
 */
export async function loadCheckpoint(store: CheckpointStore): Promise<Checkpoint | undefined> {
  const bytes = await store.load();
  if (!bytes) return undefined;
  try {
    return await withArchivedRecords(decodeCheckpoint(bytes), (i) => loadSegment(store, i));
  } catch (err) {
    if (err instanceof OperatorError) throw err;
    const why = err instanceof z.ZodError ? describeIssues(err).slice(0, 5).join('; ') : (err as Error).message;
    throw new OperatorError(
      'CONSORT_C_CHECKPOINT',
      `the checkpoint cannot be read (${why}): start the job over under another name, or delete its state bucket`,
      {
        cause: err,
      },
    );
  }
}

function loadSegment(store: CheckpointStore, index: number): Promise<RoundRecord[]> {
  if (!store.loadRecords) throw new RangeError(`checkpoint: ${index + 1} or more record segments are kept apart, and this store cannot read them`);
  return store.loadRecords(index);
}

/**
 * A decoded checkpoint (or its header) with the records it keeps apart put back in front, read
 * segment by segment with `segment` (which may cache: segments never change); as it is when it
 * keeps none apart.
 */
export async function withArchivedRecords<T extends Pick<Checkpoint, 'records' | 'archived'>>(
  c: T,
  segment: (index: number) => Promise<RoundRecord[]>,
): Promise<T> {
  if (!c.archived) return c;
  const segments = await Promise.all(Array.from({ length: c.archived / RECORDS_PER_SEGMENT }, (_, i) => segment(i)));
  return { ...c, records: [...segments.flat(), ...c.records] };
}

/** Only the header of a checkpoint (round, records, stop reason): what a watcher of the job needs, without decoding the model. */
export function decodeCheckpointHeader(bytes: Uint8Array): Pick<Checkpoint, 'job' | 'round' | 'records' | 'archived' | 'stoppedBy'> {
  if (bytes.length < 4) throw new RangeError('checkpoint: truncated');
  const n = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
  if (4 + n > bytes.length) throw new RangeError('checkpoint: header exceeds the file');
  const h = Header.parse(JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + n))));
  return {
    job: h.job,
    round: h.round,
    records: h.records,
    ...(h.archived ? { archived: h.archived } : {}),
    ...(h.stoppedBy ? { stoppedBy: h.stoppedBy } : {}),
  };
}

/**
 * Reads only as much of a checkpoint stream as its header needs, then cancels the rest: a watcher
 * of the job (the operator's PodRun, the API's history) never pulls the model-sized body.
 */
export async function readCheckpointHeader(
  data: ReadableStream<Uint8Array>,
): Promise<Pick<Checkpoint, 'job' | 'round' | 'records' | 'archived' | 'stoppedBy'>> {
  const reader = data.getReader();
  const chunks: Uint8Array[] = [];
  let have = 0;
  let need = 4;
  try {
    while (have < need) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(value);
      have += value.length;
      if (need === 4 && have >= 4) {
        const first = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
        need = 4 + new DataView(first.buffer, first.byteOffset, first.byteLength).getUint32(0, true);
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  return decodeCheckpointHeader(Buffer.concat(chunks));
}
