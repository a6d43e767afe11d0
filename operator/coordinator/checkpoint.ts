// The coordinator's checkpoint, written after every round: everything a restarted coordinator
// needs to carry on as if it had never stopped. Sampling draws from a stream keyed by
// (seed, round), so the round number is the whole RNG state. Float64 strategy buffers are kept
// bit-exact, so a resumed job ends in the same bytes as an uninterrupted one.
import { z } from 'zod';
import { RoundRecord } from '../../core/report/run-report.ts';
import type { StrategyState } from '../../core/strategies/strategy.ts';

export const CHECKPOINT_FORMAT = 'consort.dev/checkpoint/v1';

export interface Checkpoint {
  job: string;
  /** Rounds completed. */
  round: number;
  global: Float32Array;
  strategy: StrategyState;
  records: RoundRecord[];
  /** Early-stopping bookkeeping. */
  best: number;
  sinceBest: number;
  stoppedBy?: 'rounds' | 'target' | 'patience';
  /** The transport's own state (e.g. replay protection), opaque here. */
  transport?: unknown;
}

const Header = z.object({
  format: z.literal(CHECKPOINT_FORMAT),
  job: z.string(),
  round: z.number().int().min(0),
  strategy: z.object({ name: z.string(), step: z.number().int().min(0), buffers: z.array(z.object({ name: z.string(), length: z.number().int().min(0) })) }),
  globalLength: z.number().int().min(0),
  records: z.array(RoundRecord),
  best: z.number().nullable(),
  sinceBest: z.number().int().min(0),
  stoppedBy: z.enum(['rounds', 'target', 'patience']).optional(),
  transport: z.unknown().optional(),
});

/** [u32 header length][header JSON][global float32][strategy buffers float64], little-endian. */
export function encodeCheckpoint(c: Checkpoint): Uint8Array {
  const buffers = Object.entries(c.strategy.buffers).sort(([a], [b]) => (a < b ? -1 : 1));
  const header = new TextEncoder().encode(
    JSON.stringify({
      format: CHECKPOINT_FORMAT,
      job: c.job,
      round: c.round,
      strategy: { name: c.strategy.name, step: c.strategy.step, buffers: buffers.map(([name, b]) => ({ name, length: b.length })) },
      globalLength: c.global.length,
      records: c.records,
      best: Number.isFinite(c.best) ? c.best : null,
      sinceBest: c.sinceBest,
      ...(c.stoppedBy ? { stoppedBy: c.stoppedBy } : {}),
      ...(c.transport !== undefined ? { transport: c.transport } : {}),
    }),
  );
  const pad = (8 - ((4 + header.length) % 8)) % 8;
  const start = 4 + header.length + pad;
  const size = start + c.global.length * 4 + buffers.reduce((n, [, b]) => n + b.length * 8, 0) + ((c.global.length * 4) % 8);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setUint32(0, header.length + pad, true);
  out.set(header, 4);
  out.fill(0x20, 4 + header.length, start);
  let at = start;
  for (const v of c.global) {
    view.setFloat32(at, v, true);
    at += 4;
  }
  at += (c.global.length * 4) % 8;
  for (const [, b] of buffers) {
    for (const v of b) {
      view.setFloat64(at, v, true);
      at += 8;
    }
  }
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
  const global = new Float32Array(h.globalLength);
  for (let i = 0; i < global.length; i++, at += 4) global[i] = view.getFloat32(at, true);
  at += (h.globalLength * 4) % 8;
  const buffers: Record<string, Float64Array> = {};
  for (const b of h.strategy.buffers) {
    const arr = new Float64Array(b.length);
    for (let i = 0; i < arr.length; i++, at += 8) arr[i] = view.getFloat64(at, true);
    buffers[b.name] = arr;
  }
  return {
    job: h.job,
    round: h.round,
    global,
    strategy: { name: h.strategy.name as StrategyState['name'], step: h.strategy.step, buffers },
    records: h.records,
    best: h.best ?? Number.NEGATIVE_INFINITY,
    sinceBest: h.sinceBest,
    ...(h.stoppedBy ? { stoppedBy: h.stoppedBy } : {}),
    ...(h.transport !== undefined ? { transport: h.transport } : {}),
  };
}

/** Where checkpoints live: a file beside the coordinator, or the job's state bucket in NATS. */
export interface CheckpointStore {
  load(): Promise<Uint8Array | undefined>;
  save(bytes: Uint8Array): Promise<void>;
}

/** Only the header of a checkpoint (round, records, stop reason): what a watcher of the job needs, without decoding the model. */
export function decodeCheckpointHeader(bytes: Uint8Array): Pick<Checkpoint, 'job' | 'round' | 'records' | 'stoppedBy'> {
  if (bytes.length < 4) throw new RangeError('checkpoint: truncated');
  const n = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
  if (4 + n > bytes.length) throw new RangeError('checkpoint: header exceeds the file');
  const h = Header.parse(JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + n))));
  return { job: h.job, round: h.round, records: h.records, ...(h.stoppedBy ? { stoppedBy: h.stoppedBy } : {}) };
}
