// The coordinator's path for models too large to hold their updates: each update checked as it
// streams in (UpdateScanner, same verdicts as decodeUpdate and the ingestor), read back a range at
// a time (StoredValueReader, the same float32 values), and aggregated range by range in place
// (aggregateStored): the model and the strategy's state end in the bits of the whole-model
// RoundAccumulator + aggregateFit, for every strategy and codec, whatever the range and chunk
// sizes; a stored update that can no longer be read is left out and the round aggregated again.
import { describe, expect, it } from 'vitest';
import { RoundAccumulator } from '../../core/aggregation/round-accumulator.ts';
import { aggregateStored, type StoredFitResult, StoredAggregationError, StoredRound, StoredUpdateError } from '../../core/aggregation/stored-round.ts';
import { FederatedJob, type StrategySpec } from '../../core/job/federated-job.ts';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { type Codec, decodeUpdate, encodeUpdate } from '../../core/protocol/codecs.ts';
import { sha256Hex } from '../../core/protocol/digest.ts';
import { UpdateIngestor } from '../../core/protocol/ingestion.ts';
import type { UpdateEnvelope } from '../../core/protocol/messages.ts';
import { signEnvelope, siteKeyPair } from '../../core/protocol/signing.ts';
import { buckets, objectNames, PROTOCOL_VERSION } from '../../core/protocol/subjects.ts';
import { type ByteCursor, type OpenCursor, StoredValueReader, storedResult, UpdateScanner } from '../../core/protocol/update-stream.ts';
import type { Outcome, SiteEvaluation, SiteTransport } from '../../core/protocol/transport.ts';
import { Rng } from '../../core/rng.ts';
import { createStrategy } from '../../core/strategies/index.ts';
import type { SiteFitResult } from '../../core/strategies/strategy.ts';
import { decodeTensors, encodeTensors, type NamedTensor } from '../../core/tensor/safetensors.ts';
import type { CheckpointStore } from '../../operator/coordinator/checkpoint.ts';
import { RoundCoordinator } from '../../operator/coordinator/round-coordinator.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';

const LAYOUT: ParameterLayout = [
  { name: 'conv/kernel', shape: [3, 3, 2, 4] },
  { name: 'conv/bias', shape: [4] },
  { name: 'empty', shape: [0, 3] },
  { name: 'dense/kernel', shape: [37, 5] },
  { name: 'dense/bias', shape: [5] },
];
const N = 72 + 4 + 0 + 185 + 5;
const CODECS: Codec[] = ['none', 'fp16', 'int8', 'topk'];
const FRACTION = 0.1;
const LIMITS = { maxBytes: 1 << 20, topkFraction: FRACTION };

/** A cursor over bytes in memory, handing out at most `chunk` bytes per await (as a store would). */
function memoryCursors(bytes: Uint8Array, opts: { chunk?: number; fail?: (position: number) => StoredUpdateError | undefined } = {}): OpenCursor {
  return (start: number): ByteCursor => {
    let at = start;
    let closed = false;
    const take = async (n: number, into?: Uint8Array) => {
      let done = 0;
      while (done < n) {
        if (closed) throw new Error('read after close');
        const failure = opts.fail?.(at);
        if (failure) throw failure;
        await Promise.resolve();
        const k = Math.min(n - done, opts.chunk ?? n, bytes.length - at);
        if (k <= 0) throw new StoredUpdateError('CONSORT_R_OBJECT_MISSING', `read past the end at ${at}`);
        into?.set(bytes.subarray(at, at + k), done);
        at += k;
        done += k;
      }
    };
    return {
      read: (into) => take(into.length, into),
      skip: (n) => take(n),
      close: () => {
        closed = true;
      },
    };
  };
}

function randomDelta(rng: Rng, scale = 0.1): Float32Array {
  return Float32Array.from({ length: N }, () => rng.normal(0, scale));
}

/** Pushes `bytes` into a scanner in random pieces. */
function scan(bytes: Uint8Array, codec: Codec, rng: Rng, maxAbsValue = 2 ** 20): UpdateScanner {
  const scanner = new UpdateScanner({ layout: LAYOUT, codec, limits: LIMITS, size: bytes.length, maxAbsValue });
  for (let at = 0; at < bytes.length; ) {
    const k = 1 + rng.int(rng.uniform() < 0.5 ? 7 : 300);
    scanner.push(bytes.subarray(at, at + k));
    at += k;
  }
  return scanner;
}

async function readAll(reader: StoredValueReader, rng: Rng, control: boolean): Promise<{ delta: Float32Array; control?: Float32Array }> {
  const delta = new Float32Array(N);
  const ctl = control ? new Float32Array(N) : undefined;
  for (let at = 0; at < N; ) {
    const k = Math.min(N - at, 1 + rng.int(60));
    await reader.read(delta.subarray(at, at + k), ctl?.subarray(at, at + k));
    at += k;
  }
  reader.close();
  return { delta, ...(ctl ? { control: ctl } : {}) };
}

const bits = (a: Float32Array | Float64Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('UpdateScanner and StoredValueReader', () => {
  it('find what decodeUpdate finds, and read back its very values, for every codec, with and without a control delta', async () => {
    const rng = Rng.from(7, 'scan');
    for (const codec of CODECS) {
      for (const withControl of [false, true]) {
        for (let trial = 0; trial < 5; trial++) {
          const delta = randomDelta(rng, trial === 0 ? 3 : 0.1);
          const control = withControl ? randomDelta(rng) : undefined;
          const { bytes } = encodeUpdate(delta, LAYOUT, { codec, topkFraction: FRACTION }, control ? { control } : {});
          const decoded = decodeUpdate(bytes, LAYOUT, codec, LIMITS);
          const scanned = scan(bytes, codec, rng).finish();
          expect(scanned.maxAbs).toBe(decoded.maxAbs);
          expect(scanned.controlMaxAbs).toBe(decoded.controlMaxAbs);
          const reader = new StoredValueReader(scanned.shape, memoryCursors(bytes, { chunk: 1 + rng.int(50) }));
          const back = await readAll(reader, rng, withControl);
          expect(bits(back.delta).equals(bits(decoded.delta)), codec).toBe(true);
          if (withControl) expect(bits(back.control!).equals(bits(decoded.control!))).toBe(true);
        }
      }
    }
  });

  it('give every hostile object the ingestor verdict of decodeUpdate (code and reason)', () => {
    const rng = Rng.from(11, 'scan-fuzz');
    const keys = siteKeyPair();
    let refused = 0;
    for (const codec of CODECS) {
      for (let trial = 0; trial < 400; trial++) {
        const delta = randomDelta(rng);
        const control = rng.uniform() < 0.3 ? randomDelta(rng) : undefined;
        const honest = encodeUpdate(delta, LAYOUT, { codec, topkFraction: FRACTION }, control ? { control } : {}).bytes;
        const bytes = mutate(honest, codec, rng);
        const verdicts = [false, true].map((streamed) => {
          const ingestor = new UpdateIngestor({
            job: 'default_j',
            protocol: PROTOCOL_VERSION,
            siteKeys: new Map([['a', keys.publicKey]]),
            layout: LAYOUT,
            codec,
            topkFraction: FRACTION,
            maxUpdateBytes: LIMITS.maxBytes,
            mode: 'sync',
            maxStaleness: 0,
            maxAbsValue: 4,
          });
          ingestor.beginRound(1, ['a']);
          const env = envelope(bytes, codec, keys.seed);
          const admitted = ingestor.checkEnvelope('a', new TextEncoder().encode(JSON.stringify(env)));
          expect(admitted.ok).toBe(true);
          if (!streamed) {
            const c = ingestor.checkObject(env, bytes);
            return c.ok ? { ok: true, maxAbs: c.result.delta.length } : { ok: false, ...c.rejection };
          }
          const c = ingestor.checkScanned(env, scan(bytes, codec, rng, 4));
          return c.ok ? { ok: true, maxAbs: N } : { ok: false, ...c.rejection };
        });
        expect(verdicts[1], `${codec} #${trial}`).toEqual(verdicts[0]);
        if (!verdicts[0]!.ok) refused++;
      }
    }
    // Most mutations are refused; the test is of the verdicts, so a few harmless ones pass.
    expect(refused).toBeGreaterThan(1000);
  });
});

function envelope(bytes: Uint8Array, codec: Codec, seed: string): UpdateEnvelope {
  const nonce = 'n'.repeat(22);
  return signEnvelope(
    {
      type: 'update',
      protocol: PROTOCOL_VERSION,
      job: 'default_j',
      site: 'a',
      round: 1,
      taskId: 't'.repeat(22),
      nonce,
      samples: 10,
      trainLoss: 0.5,
      steps: 3,
      codec,
      object: { bucket: buckets('default_j').updates('a'), name: objectNames.update(1, nonce), sha256: sha256Hex(bytes), size: bytes.length },
    },
    seed,
  ) as UpdateEnvelope;
}

/** One hostile change that keeps the tensors in encodeUpdate's order (where reasons must agree too). */
function mutate(honest: Uint8Array, codec: Codec, rng: Rng): Uint8Array {
  const { tensors: map, metadata } = decodeTensors(honest, { maxBytes: 1 << 20, maxTensors: 100 });
  const tensors: NamedTensor[] = [...map.values()];
  const pick = <T>(xs: readonly T[]): T => xs[rng.int(xs.length)]!;
  const roll = rng.int(12);
  if (roll === 0) return honest.slice(0, rng.int(honest.length));
  if (roll === 1) {
    const b = honest.slice();
    b[rng.int(Math.min(b.length, 200))]! ^= 1 + rng.int(255);
    return b;
  }
  if (roll === 2) return honest;
  const floats = tensors.filter((t) => t.dtype === 'F32' || t.dtype === 'F16');
  const nonEmpty = floats.filter((t) => t.data.length > 0);
  const f = pick(nonEmpty);
  // Several faults at once, in several tensors: which one is reported first is what is compared.
  for (let times = 1 + rng.int(3); times > 0; times--) {
    switch (rng.int(6)) {
      case 0: {
        const g = pick(nonEmpty);
        const j = rng.int(g.data.length);
        if (g.dtype === 'F16') (g.data as Uint16Array)[j] = pick([0x7c00, 0xfc00, 0x7e00]);
        else (g.data as Float32Array)[j] = pick([Number.NaN, Number.POSITIVE_INFINITY, -1e30, 5, -4.5, 1e38]);
        break;
      }
      case 1:
        if (codec === 'int8') {
          const q = pick(tensors.filter((t) => t.dtype === 'I8' && t.data.length > 0));
          (q.data as Int8Array)[rng.int(q.data.length)] = pick([-128, 127, -127]);
        }
        break;
      case 2:
        if (codec === 'int8') {
          const s = pick(tensors.filter((t) => t.name.endsWith(':scale')));
          (s.data as Float32Array)[0] = pick([-0.5, Number.NaN, 1e37, 0.1, 0, 3e38]);
        }
        break;
      case 3:
        if (codec === 'topk') {
          const ix = map.get('indices')!.data as Int32Array;
          ix[rng.int(ix.length)] = pick([N, -1, 0, ix[0]!, 2 ** 31 - 1]);
        }
        break;
      default:
        if (f.dtype === 'F32') (f.data as Float32Array)[rng.int(f.data.length)] = pick([7, -100, 2 ** 21]);
    }
  }
  return encodeTensors(tensors, metadata);
}

// ---- aggregation --------------------------------------------------------------------------

const STRATEGIES: StrategySpec[] = [
  { name: 'fedavg', serverLearningRate: 0.7 },
  { name: 'fedprox', mu: 0.01, serverLearningRate: 1 },
  { name: 'fedavgm', momentum: 0.9, serverLearningRate: 1 },
  { name: 'fedadam', beta1: 0.9, beta2: 0.99, tau: 1e-3, serverLearningRate: 0.01 },
  { name: 'fedyogi', beta1: 0.9, beta2: 0.99, tau: 1e-3, serverLearningRate: 0.01 },
  { name: 'fedadagrad', beta1: 0.9, tau: 1e-3, serverLearningRate: 0.01 },
  { name: 'scaffold', serverLearningRate: 1 },
] as StrategySpec[];

interface SiteUpdate {
  site: string;
  samples: number;
  staleness: number;
  bytes: Uint8Array;
}

function siteUpdates(rng: Rng, codec: Codec, control: boolean, count: number): SiteUpdate[] {
  return Array.from({ length: count }, (_, i) => {
    const delta = randomDelta(rng, 0.05 * (1 + i));
    const bytes = encodeUpdate(delta, LAYOUT, { codec, topkFraction: FRACTION }, control ? { control: randomDelta(rng) } : {}).bytes;
    return { site: `s${i}`, samples: 1 + rng.int(500), staleness: i === 2 ? 1 : 0, bytes };
  });
}

/** Chunk ends of an object cut in pieces of `chunk` bytes. */
function chunkEnds(size: number, chunk: number): number[] {
  const ends: number[] = [];
  for (let at = chunk; at < size; at += chunk) ends.push(at);
  ends.push(size);
  return ends;
}

function asStored(u: SiteUpdate, codec: Codec, rng: Rng, cursor?: (bytes: Uint8Array) => OpenCursor) {
  const scanned = scan(u.bytes, codec, rng).finish();
  const chunk = 1 + rng.int(40);
  // Ranges end on chunk ends where they can (the first update's): any split gives the same bits.
  return storedResult(
    { site: u.site, samples: u.samples, trainLoss: 0.25, staleness: u.staleness },
    scanned,
    (cursor ?? ((b) => memoryCursors(b, { chunk })))(u.bytes),
    chunkEnds(u.bytes.length, chunk),
  );
}

function inMemory(u: SiteUpdate, codec: Codec): SiteFitResult {
  const d = decodeUpdate(u.bytes, LAYOUT, codec, LIMITS);
  return { site: u.site, samples: u.samples, trainLoss: 0.25, staleness: u.staleness, delta: d.delta, ...(d.control ? { controlDelta: d.control } : {}) };
}

/** Three rounds of the whole-model path: the reference. */
function reference(spec: StrategySpec, rounds: SiteUpdate[][], codec: Codec, initial: Float32Array) {
  const control = spec.name === 'scaffold';
  const strategy = createStrategy(spec, N, 6);
  let global: Float32Array = initial.slice();
  for (const [r, updates] of rounds.entries()) {
    const acc = new RoundAccumulator(N, { control });
    for (const u of updates) acc.add(inMemory(u, codec));
    global = strategy.aggregateFit(global, acc.take(r + 1));
  }
  return { global, state: strategy.state() };
}

describe('aggregateFitRange', () => {
  it('steps every strategy range by range, in any order, to the bits of aggregateFit', () => {
    const rng = Rng.from(21, 'ranges');
    for (const spec of STRATEGIES) {
      const control = spec.name === 'scaffold';
      const whole = createStrategy(spec, N, 5);
      const ranged = createStrategy(spec, N, 5);
      let global: Float32Array = randomDelta(rng, 1);
      const inPlace = global.slice();
      for (let round = 1; round <= 3; round++) {
        const meanDelta = Float64Array.from(randomDelta(rng, 0.1));
        const meanControlDelta = control ? Float64Array.from(randomDelta(rng, 0.1)) : undefined;
        const summary = { round, sites: 3, totalSamples: 30 };
        global = whole.aggregateFit(global, { ...summary, meanDelta, ...(meanControlDelta ? { meanControlDelta } : {}) });
        const cuts = [0, ...Array.from({ length: 5 }, () => rng.int(N)), N].sort((a, b) => a - b);
        const ranges = cuts.slice(1).map((end, i) => [cuts[i]!, end] as const);
        for (const [start, end] of rng.shuffle([...ranges]) as Array<readonly [number, number]>) {
          ranged.aggregateFitRange(inPlace, {
            ...summary,
            start,
            meanDelta: meanDelta.subarray(start, end),
            ...(meanControlDelta ? { meanControlDelta: meanControlDelta.subarray(start, end) } : {}),
          });
        }
        ranged.endRangeFit();
      }
      expect(bits(inPlace).equals(bits(global)), spec.name).toBe(true);
      const [a, b] = [whole.state(), ranged.state()];
      expect(b.step).toBe(a.step);
      for (const [k, v] of Object.entries(a.buffers)) expect(bits(b.buffers[k]!).equals(bits(v)), `${spec.name} ${k}`).toBe(true);
    }
  });
});

describe('aggregateStored', () => {
  it('ends every strategy, with every codec, in the bits of RoundAccumulator + aggregateFit, whatever the range', async () => {
    const rng = Rng.from(3, 'stored');
    for (const spec of STRATEGIES) {
      const control = spec.name === 'scaffold';
      for (const codec of CODECS) {
        const rounds = [0, 1, 2].map(() => siteUpdates(rng, codec, control, 4));
        const initial = randomDelta(rng, 1);
        const want = reference(spec, rounds, codec, initial);
        for (const range of [1, 7, 64, N - 1, N, 10 * N]) {
          const strategy = createStrategy(spec, N, 6);
          const global = initial.slice();
          for (const [r, updates] of rounds.entries()) {
            const round = new StoredRound(N, { control });
            // Arrival order is not part of the result.
            for (const u of rng.shuffle([...updates]) as SiteUpdate[]) expect(round.add(asStored(u, codec, rng))).toBe(true);
            await aggregateStored({ global, strategy, round: r + 1, updates: round.entries(), control, range, lookahead: 1 + rng.int(6) });
          }
          const what = `${spec.name} ${codec} range ${range}`;
          expect(bits(global).equals(bits(want.global)), what).toBe(true);
          const state = strategy.state();
          expect(state.step, what).toBe(want.state.step);
          for (const [k, v] of Object.entries(want.state.buffers)) expect(bits(state.buffers[k]!).equals(bits(v)), `${what} ${k}`).toBe(true);
        }
      }
    }
  });

  it('lets ranges end where the stored chunks end, on an element of the delta', () => {
    const rng = Rng.from(17, 'boundary');
    for (const codec of ['none', 'fp16', 'int8'] as const) {
      const { bytes } = encodeUpdate(randomDelta(rng), LAYOUT, { codec, topkFraction: FRACTION });
      const scanned = scan(bytes, codec, rng).finish();
      const width = codec === 'none' ? 4 : codec === 'fp16' ? 2 : 1;
      const reader = new StoredValueReader(scanned.shape, memoryCursors(bytes), chunkEnds(bytes.length, 64));
      let aligned = 0;
      for (let start = 0; start < N; start += 1 + rng.int(9)) {
        const end = Math.min(N, start + 1 + rng.int(80));
        const b = reader.boundary(start, end);
        expect(b).toBeGreaterThan(start);
        expect(b).toBeLessThanOrEqual(end);
        if (b === end) continue;
        // The element b starts where a chunk starts: its tensor's data at a multiple of 64.
        const t = [72, 76, 76, 261, 266].findIndex((e) => b <= e);
        const offset = [0, 72, 76, 76, 261][t]!;
        expect((scanned.shape.delta[t]! + width * (b - offset)) % 64).toBe(0);
        aligned++;
      }
      expect(aligned).toBeGreaterThan(0);
    }
  });

  it('sums squares in model order, as the whole-model path does for its update norms', async () => {
    const rng = Rng.from(5, 'norms');
    const updates = siteUpdates(rng, 'none', false, 3);
    const round = new StoredRound(N);
    for (const u of updates) round.add(asStored(u, 'none', rng));
    const { sumSquares } = await aggregateStored({
      global: new Float32Array(N),
      strategy: createStrategy({ name: 'fedavg', serverLearningRate: 1 }, N, 3),
      round: 1,
      updates: round.entries(),
      control: false,
      range: 13,
      sumSquares: true,
    });
    round.entries().forEach((e, k) => {
      let sq = 0;
      for (const v of inMemory(updates.find((u) => u.site === e.result.site)!, 'none').delta) sq += v * v;
      expect(sumSquares![k]).toBe(sq);
    });
  });

  it('refuses what RoundAccumulator.add refuses, with its messages', () => {
    const stored = (o: Partial<StoredFitResult>): StoredFitResult => ({
      site: 'x',
      samples: 10,
      trainLoss: 0,
      maxAbs: 1,
      open: () => ({ read: async () => {}, close: () => {} }),
      ...o,
    });
    const acc = new RoundAccumulator(4);
    const round = new StoredRound(4);
    const same = (s: Partial<StoredFitResult>, delta: number[]) => {
      const a = (() => {
        try {
          return acc.add({
            site: s.site ?? 'x',
            samples: s.samples ?? 10,
            trainLoss: 0,
            delta: Float32Array.from(delta),
            ...(s.staleness ? { staleness: s.staleness } : {}),
          });
        } catch (err) {
          return (err as Error).message;
        }
      })();
      const b = (() => {
        try {
          return round.add(stored({ ...s, maxAbs: Math.max(...delta.map(Math.abs)) }));
        } catch (err) {
          return (err as Error).message;
        }
      })();
      expect(b).toEqual(a);
    };
    same({ site: 'a', samples: 0 }, [1, 2, 3, 4]);
    same({ site: 'a', samples: 2 ** 30 }, [2 ** 14, 0, 0, 0]);
    same({ site: 'a', samples: 2 ** 20 }, [0, 0, 0, 0]);
    same({ site: 'a', samples: 3 }, [0.5, 0, 0, 0]);
    same({ site: 'a', samples: 3 }, [0.5, 0, 0, 0]);
    same({ site: 'a', samples: 3, staleness: 2 }, [0.5, 0, 0, 0]);
    for (let i = 0; i < 40; i++) same({ site: `b${i}`, samples: 2 ** 30 }, [2 ** 12, 0, 0, 0]);
  });

  it('reports the update whose read failed and how far the model was stepped', async () => {
    const rng = Rng.from(9, 'fail');
    const updates = siteUpdates(rng, 'none', false, 3);
    const round = new StoredRound(N);
    updates.forEach((u, i) =>
      round.add(
        asStored(u, 'none', rng, (b) =>
          memoryCursors(b, {
            chunk: 16,
            fail: (at) => (i === 1 && at > b.length / 2 ? new StoredUpdateError('CONSORT_R_HASH_MISMATCH', 'chunk 3 changed') : undefined),
          }),
        ),
      ),
    );
    const global = new Float32Array(N);
    const err = await aggregateStored({
      global,
      strategy: createStrategy({ name: 'fedavg', serverLearningRate: 1 }, N, 3),
      round: 1,
      updates: round.entries(),
      control: false,
      range: 20,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoredAggregationError);
    const e = err as StoredAggregationError;
    expect(e.index).toBe(1);
    expect(e.code).toBe('CONSORT_R_HASH_MISMATCH');
    expect(e.committed).toBeGreaterThan(0);
    expect(e.committed).toBeLessThan(N);
    // Stepped exactly over [0, committed): the rest is untouched.
    expect(global.subarray(e.committed).every((v) => v === 0)).toBe(true);
  });
});

// ---- the round loop -------------------------------------------------------------------------

/**
 * A transport whose sites answer with precomputed updates, in memory or stored; `broken` names a
 * (round, site) whose stored object turns out changed when it is read back, part-way through.
 */
class FakeTransport implements SiteTransport {
  readonly sent = new Map<number, Float32Array>();
  /** Values put back by restoreGlobal. */
  restored = 0;
  private readonly o: {
    updates: SiteUpdate[][];
    codec: Codec;
    mode: 'memory' | 'stored';
    rng: Rng;
    broken?: { round: number; site: string };
    omit?: { round: number; site: string };
  };

  constructor(o: FakeTransport['o']) {
    this.o = o;
  }

  async *fit(round: number, _sites: readonly string[], global: Float32Array): AsyncIterable<Outcome<SiteFitResult | StoredFitResult>> {
    const { omit, broken, codec, rng } = this.o;
    this.sent.set(round, global.slice());
    for (const u of this.o.updates[round - 1]!) {
      if (omit && omit.round === round && omit.site === u.site) continue;
      const breaks = broken && broken.round === round && broken.site === u.site;
      const value =
        this.o.mode === 'memory'
          ? inMemory(u, codec)
          : asStored(u, codec, rng, (b) =>
              memoryCursors(b, {
                chunk: 32,
                fail: (at) => (breaks && at > b.length - 40 ? new StoredUpdateError('CONSORT_R_HASH_MISMATCH', 'chunk 9 changed') : undefined),
              }),
            );
      yield { ok: true, value };
    }
  }

  async *evaluate(_round: number, sites: readonly string[]): AsyncIterable<Outcome<SiteEvaluation>> {
    for (const site of sites) yield { ok: true, value: { site, samples: 10, loss: 0.5, accuracy: 0.5 } };
  }

  async restoreGlobal(round: number, into: Float32Array, end: number): Promise<void> {
    into.set(this.sent.get(round)!.subarray(0, end));
    this.restored += end;
  }
}

class MemoryCheckpoints implements CheckpointStore {
  bytes: Uint8Array | undefined;
  async load() {
    return this.bytes;
  }
  async save(parts: Uint8Array[]) {
    this.bytes = Buffer.concat(parts);
  }
}

describe('RoundCoordinator with stored updates', () => {
  const sites = ['s0', 's1', 's2', 's3'];
  const spec = (strategy: StrategySpec) =>
    FederatedJob.parse(
      jobManifest('stored', {
        ...hospitalSpec(sites.map((name) => ({ name, samples: 40 }))),
        rounds: 3,
        strategy,
        sampling: { minSites: 2 },
      }),
    ).spec;

  it('leaves out an update that changed in the store, undoes the partial step and aggregates again: the bits of a round without it', async () => {
    for (const strategy of [STRATEGIES[0]!, STRATEGIES[2]!, STRATEGIES[3]!, STRATEGIES[6]!]) {
      const rng = Rng.from(13, strategy.name);
      const control = strategy.name === 'scaffold';
      const rounds = [0, 1, 2].map(() => siteUpdates(rng, 'int8', control, 4));
      const initial = randomDelta(rng, 1);
      const broken = { round: 2, site: 's1' };
      const run = async (transport: FakeTransport) => {
        const failed: string[] = [];
        const c = new RoundCoordinator({
          spec: spec(strategy),
          initial: initial.slice(),
          transport,
          checkpoints: { store: new MemoryCheckpoints(), job: 'default_stored' },
          aggregationRange: 50,
          events: { siteFailed: (round, f) => failed.push(`${round} ${f.site} ${f.code}`) },
        });
        return { result: await c.run(), failed };
      };
      const transport = new FakeTransport({ updates: rounds, codec: 'int8', mode: 'stored', rng, broken });
      const stored = await run(transport);
      // The failure came part-way: a partial step was undone.
      expect(transport.restored).toBeGreaterThan(0);
      const reference = await run(new FakeTransport({ updates: rounds, codec: 'int8', mode: 'memory', rng, omit: broken }));
      expect(stored.failed).toEqual(['2 s1 CONSORT_R_HASH_MISMATCH']);
      expect(bits(stored.result.global).equals(bits(reference.result.global)), strategy.name).toBe(true);
      expect(stored.result.rounds.map((r) => r.participants)).toEqual(reference.result.rounds.map((r) => r.participants));
      expect(stored.result.rounds[1]!.participants).not.toContain('s1');
      expect(stored.result.rounds.map((r) => r.fitLoss)).toEqual(reference.result.rounds.map((r) => r.fitLoss));
    }
  });
});
