// A long job's checkpoint: the round records go apart in segments of RECORDS_PER_SEGMENT once
// full, so the checkpoint written every round holds fewer than that many however long the job;
// a coordinator resumed from it has every record back, and ends as an uninterrupted run does.
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import type { RoundRecord } from '../../core/report/run-report.ts';
import { Rng } from '../../core/rng.ts';
import type { SiteFitResult } from '../../core/strategies/strategy.ts';
import type { Outcome, SiteEvaluation, SiteTransport } from '../../core/protocol/transport.ts';
import {
  type CheckpointStore,
  decodeCheckpoint,
  decodeRecordSegment,
  encodeRecordSegment,
  loadCheckpoint,
  RECORDS_PER_SEGMENT,
} from '../../operator/coordinator/checkpoint.ts';
import { RoundCoordinator } from '../../operator/coordinator/round-coordinator.ts';
import { OperatorError } from '../../operator/errors.ts';
import { Objm, StorageType } from '@nats-io/obj';
import { connect } from '@nats-io/transport-node';
import { objectWire } from '../../core/protocol/object-wire.ts';
import { objectNames } from '../../core/protocol/subjects.ts';
import { BucketCheckpointStore } from '../../operator/coordinator/nats-coordinator.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { useNatsServer } from '../helpers/nats-server.ts';

const N = 50;
const ROUNDS = 2 * RECORDS_PER_SEGMENT + 7;
const SITES = ['s0', 's1', 's2'];

/** Sites whose updates and scores depend only on (round, site): any two runs see the same answers. */
class DeterministicSites implements SiteTransport {
  async *fit(round: number, sites: readonly string[]): AsyncIterable<Outcome<SiteFitResult>> {
    for (const site of sites) {
      const rng = Rng.from(5, 'fit', round, site);
      const delta = Float32Array.from({ length: N }, () => 0.01 * rng.normal());
      yield { ok: true, value: { site, samples: 10 + SITES.indexOf(site), delta, trainLoss: 1 / round } };
    }
  }
  async *evaluate(round: number, sites: readonly string[]): AsyncIterable<Outcome<SiteEvaluation>> {
    for (const site of sites) yield { ok: true, value: { site, samples: 10, loss: 1 / (round + 1), accuracy: 1 - 1 / (round + 1) } };
  }
}

/** A store that keeps segments apart, and counts what it was given. */
class MemoryStore implements CheckpointStore {
  bytes: Uint8Array | undefined;
  readonly segments = new Map<number, Uint8Array>();
  segmentWrites = 0;
  async load() {
    return this.bytes;
  }
  async save(parts: Uint8Array[]) {
    this.bytes = Buffer.concat(parts);
  }
  async saveRecords(index: number, records: readonly RoundRecord[]) {
    this.segmentWrites++;
    this.segments.set(index, encodeRecordSegment(records));
  }
  async loadRecords(index: number) {
    const bytes = this.segments.get(index);
    if (!bytes) throw new Error(`no segment ${index}`);
    return decodeRecordSegment(bytes);
  }
}

const spec = FederatedJob.parse(
  jobManifest(
    'long',
    hospitalSpec(
      SITES.map((name) => ({ name, samples: 40 })),
      { rounds: ROUNDS, sampling: { sitesPerRound: 2 } },
    ),
  ),
).spec;
const initial = new Float32Array(N).fill(0.5);
/** A record without its wall-clock duration: what two runs must agree on. */
const content = (r: RoundRecord) => ({ ...r, durationMs: 0 });

describe('round records kept apart from the checkpoint', () => {
  it('go in segments once full; the checkpoint keeps fewer than a segment; a resumed coordinator ends as an uninterrupted one', async () => {
    const whole = new MemoryStore();
    const uninterrupted = await new RoundCoordinator({
      spec,
      initial: initial.slice(),
      transport: new DeterministicSites(),
      checkpoints: { store: whole, job: 'default_long' },
    }).run();
    expect(uninterrupted.rounds).toHaveLength(ROUNDS);
    // Each segment written once, the checkpoint holding only what came after the last.
    expect(whole.segmentWrites).toBe(2);
    const last = decodeCheckpoint(whole.bytes!);
    expect(last.archived).toBe(2 * RECORDS_PER_SEGMENT);
    expect(last.records.map((r) => r.round)).toEqual(Array.from({ length: 7 }, (_, i) => 2 * RECORDS_PER_SEGMENT + i + 1));
    expect((await loadCheckpoint(whole))!.records).toEqual(uninterrupted.rounds);

    // Stopped after round 100 (two segments' worth of rounds less 28), then resumed from the store.
    const store = new MemoryStore();
    let checkpointed = 0;
    const first = new RoundCoordinator({
      spec,
      initial: initial.slice(),
      transport: new DeterministicSites(),
      checkpoints: { store, job: 'default_long' },
      pauseRequested: () => ++checkpointed >= 100,
    });
    await expect(first.run()).rejects.toMatchObject({ code: 'CONSORT_C_PAUSED' });
    const saved = decodeCheckpoint(store.bytes!);
    expect(saved.round).toBe(100);
    expect(saved.archived).toBe(RECORDS_PER_SEGMENT);
    expect(saved.records).toHaveLength(100 - RECORDS_PER_SEGMENT);
    const resume = (await loadCheckpoint(store))!;
    expect(resume.records.map((r) => r.round)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    const resumed = await new RoundCoordinator({
      spec,
      initial: initial.slice(),
      transport: new DeterministicSites(),
      checkpoints: { store, job: 'default_long' },
      resume,
    }).run();
    expect(Buffer.from(resumed.global.buffer).equals(Buffer.from(uninterrupted.global.buffer))).toBe(true);
    expect(resumed.rounds.map(content)).toEqual(uninterrupted.rounds.map(content));
    // The resumed coordinator wrote the second segment, not the first again.
    expect(store.segmentWrites).toBe(2);
    expect((await loadCheckpoint(store))!.records.map(content)).toEqual(uninterrupted.rounds.map(content));
  });

  it('a checkpoint whose segments this store cannot read, or a malformed segment, is refused with a reason', async () => {
    const store = new MemoryStore();
    await new RoundCoordinator({ spec, initial: initial.slice(), transport: new DeterministicSites(), checkpoints: { store, job: 'default_long' } }).run();
    const plain: CheckpointStore = { load: async () => store.bytes, save: async () => {} };
    await expect(loadCheckpoint(plain)).rejects.toThrow('checkpoint: 1 or more record segments are kept apart, and this store cannot read them');
    expect(() => decodeRecordSegment(new TextEncoder().encode('[]'))).toThrow();
    expect(() => encodeRecordSegment([])).toThrow(`a record segment holds ${RECORDS_PER_SEGMENT} records, not 0`);
  });

  it('a damaged checkpoint is refused CONSORT_C_CHECKPOINT, naming what is wrong, not with a bare parse error', async () => {
    const store = new MemoryStore();
    await new RoundCoordinator({ spec, initial: initial.slice(), transport: new DeterministicSites(), checkpoints: { store, job: 'default_long' } }).run();
    const good = store.bytes!;
    const n = new DataView(good.buffer, good.byteOffset).getUint32(0, true);
    const header = JSON.parse(new TextDecoder().decode(good.subarray(4, 4 + n)));
    const withHeader = (text: string) => {
      const h = new TextEncoder().encode(text);
      const out = new Uint8Array(4 + h.length + good.length - 4 - n);
      new DataView(out.buffer).setUint32(0, h.length, true);
      out.set(h, 4);
      out.set(good.subarray(4 + n), 4 + h.length);
      return out;
    };
    const refusal = async (bytes: Uint8Array) => {
      const err = await loadCheckpoint({ load: async () => bytes, save: async () => {} }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(OperatorError);
      expect((err as OperatorError).code).toBe('CONSORT_C_CHECKPOINT');
      return (err as Error).message;
    };
    expect(await refusal(withHeader(JSON.stringify({ ...header, round: 'seven' })))).toMatch(/cannot be read \(round: /);
    expect(await refusal(withHeader('{"job": '))).toContain('cannot be read (');
    expect(await refusal(good.subarray(0, good.length - 8))).toContain('the header describes');
  });

  describe("in a job's state bucket on a real nats-server", () => {
    const nats = useNatsServer();
    it('are objects of their own beside the checkpoint, and a coordinator loading it has every record', async () => {
      const nc = await connect({ servers: nats.url });
      try {
        const bucket = 'consort-default_long-state';
        const objects = await new Objm(nc).create(bucket, { storage: StorageType.File });
        const store = new BucketCheckpointStore(objects, objectWire(nc, bucket), bucket);
        const run = await new RoundCoordinator({
          spec,
          initial: initial.slice(),
          transport: new DeterministicSites(),
          checkpoints: { store, job: 'default_long' },
        }).run();
        const names = [];
        for (const info of await objects.list()) names.push(info.name);
        expect(names.sort()).toEqual([objectNames.checkpoint, objectNames.records(0), objectNames.records(1)]);
        const again = new BucketCheckpointStore(objects, objectWire(nc, bucket), bucket);
        expect((await loadCheckpoint(again))!.records).toEqual(run.rounds);
        // A segment gone from the bucket: the checkpoint is refused, naming it.
        await objects.delete(objectNames.records(1));
        await expect(loadCheckpoint(again)).rejects.toThrow(`its record segment 1 (${objectNames.records(1)}) is missing from the state bucket`);
      } finally {
        await nc.close();
      }
    });
  });
});
