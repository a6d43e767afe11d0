// Where the API reads a job's figures, on a real nats-server: the history from the checkpoint in
// the job's state bucket once no loop runs (and the checkpoint's rounds before those of a loop
// that resumed from it), the final model streamed from the models bucket byte for byte, the
// report from the checkpoint and the model; nothing for a job whose buckets do not exist.
import { Objm } from '@nats-io/obj';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { buckets, jobKey, objectNames } from '../../core/protocol/subjects.ts';
import { weightsSha256 } from '../../core/report/assemble.ts';
import type { RoundRecord } from '../../core/report/run-report.ts';
import { encodeSafetensors } from '../../core/tensor/safetensors.ts';
import { ClusterJobSource } from '../../operator/api/job-source.ts';
import { emptyProgress, type JobRun } from '../../operator/controller/job-runs.ts';
import type { JobObject } from '../../operator/controller/manifests.ts';
import { encodeCheckpoint, encodeRecordSegment, RECORDS_PER_SEGMENT } from '../../operator/coordinator/checkpoint.ts';
import { FINAL_MODEL } from '../../operator/coordinator/nats-coordinator.ts';
import { useNatsServer } from '../helpers/nats-server.ts';

const record = (round: number): RoundRecord => ({
  round,
  globalLoss: 1 / round,
  globalAccuracy: 0.5 + round / 100,
  fitLoss: 0.5,
  participants: ['a', 'b'],
  sites: [
    { site: 'a', samples: 10, loss: 0.4, accuracy: 0.8 },
    { site: 'b', samples: 30, loss: 0.6, accuracy: 0.7 },
  ],
  accuracySpread: { min: 0.7, max: 0.8, std: 0.05 },
  durationMs: 10,
});

const spec = FederatedJobSpec.parse({
  model: { type: 'logistic' },
  sites: [
    { name: 'a', data: { type: 'synthetic', generator: 'hospital' } },
    { name: 'b', data: { type: 'synthetic', generator: 'hospital' } },
  ],
  rounds: 3,
});
const job = (name: string, status: Record<string, unknown> = {}): JobObject => ({
  apiVersion: 'consort.dev/v1alpha1',
  kind: 'FederatedJob',
  metadata: { name, namespace: 'default', uid: `uid-${name}`, creationTimestamp: '2025-01-01T00:00:00Z' },
  spec,
  status,
});

describe('ClusterJobSource on a real nats-server', () => {
  const nats = useNatsServer();
  let nc: NatsConnection;
  const layout = [
    { name: 'dense/kernel', shape: [3, 2] },
    { name: 'dense/bias', shape: [2] },
  ];
  const weights = new Float32Array([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.01, 0.02]);
  const modelBytes = encodeSafetensors(layout, weights, { job: 'default_done' });
  const quality = { trainSamples: 30, testSamples: 10, rowsUsed: 40, rowsRejected: {}, missing: {}, labels: { no: 30, yes: 10 } };

  beforeAll(async () => {
    nc = await connect({ servers: nats.url });
    const objm = new Objm(nc);
    /** A finished job's state and models buckets: its checkpoint after `records`, the first `archived` of them kept apart. */
    const finished = async (name: string, records: RoundRecord[], archived = 0) => {
      const b = buckets(jobKey({ name, namespace: 'default' }));
      const state = await objm.create(b.state);
      for (let k = 0; k * RECORDS_PER_SEGMENT < archived; k++) {
        await state.putBlob({ name: objectNames.records(k) }, encodeRecordSegment(records.slice(k * RECORDS_PER_SEGMENT, (k + 1) * RECORDS_PER_SEGMENT)));
      }
      await state.putBlob(
        { name: objectNames.checkpoint },
        encodeCheckpoint({
          job: `default_${name}`,
          round: records.length,
          global: weights,
          strategy: { name: 'fedavg', step: records.length, buffers: {} },
          records,
          ...(archived ? { archived } : {}),
          best: 0.53,
          sinceBest: 0,
          stoppedBy: 'rounds',
          transport: {
            layout,
            ingestor: {},
            sites: {
              a: { labels: ['no', 'yes'], sampleShape: [3], quality, backend: { name: 'cpu', reason: 'test' } },
              b: { labels: ['no', 'yes'], sampleShape: [3], quality },
            },
          },
        }),
      );
      await (await objm.create(b.models)).putBlob({ name: FINAL_MODEL }, modelBytes);
    };
    await finished('done', [record(1), record(2), record(3)]);
    // A job long enough that its first RECORDS_PER_SEGMENT records went apart from the checkpoint.
    await finished(
      'long',
      Array.from({ length: RECORDS_PER_SEGMENT + 2 }, (_, i) => record(i + 1)),
      RECORDS_PER_SEGMENT,
    );
  });
  afterAll(async () => {
    await nc?.close();
  });

  const source = (runs: Map<string, JobRun> = new Map()) => new ClusterJobSource({ jobs: { get: () => undefined }, runs, nc });
  const succeeded = {
    phase: 'Succeeded',
    round: 3,
    startTime: '2025-01-01T00:00:00Z',
    completionTime: '2025-01-01T00:00:30Z',
    model: { bucket: 'ignored', object: FINAL_MODEL, sha256: 'a'.repeat(64), bytes: modelBytes.length },
  };

  it('reads the history from the checkpoint once no loop runs; nothing for a job without buckets', async () => {
    expect((await source().history(job('done'))).map((r) => r.round)).toEqual([1, 2, 3]);
    expect(await source().history(job('never-ran'))).toEqual([]);
  });

  it('puts back the records a long job keeps apart from its checkpoint, in the history and in the report', async () => {
    const rounds = Array.from({ length: RECORDS_PER_SEGMENT + 2 }, (_, i) => i + 1);
    expect((await source().history(job('long'))).map((r) => r.round)).toEqual(rounds);
    const report = (await source().report(job('long', { ...succeeded, round: rounds.length })))!;
    expect(report.rounds.map((r) => r.round)).toEqual(rounds);
  });

  it("takes a live loop's rounds, and the checkpoint's before those of a loop that resumed from it", async () => {
    const run = (records: RoundRecord[], round: number): JobRun => ({
      uid: 'uid-done',
      placement: 'operator',
      progress: { ...emptyProgress(), state: 'running', round, records },
      requestPause() {},
      stop: async () => {},
    });
    const fromStart = source(new Map([['default/done', run([record(1), record(2)], 2)]]));
    expect((await fromStart.history(job('done'))).map((r) => r.round)).toEqual([1, 2]);
    const resumed = source(new Map([['default/done', run([record(3), record(4)], 4)]]));
    expect((await resumed.history(job('done'))).map((r) => r.round)).toEqual([1, 2, 3, 4]);
  });

  it('streams the final model byte for byte, only once the status names one', async () => {
    expect(await source().model(job('done', { phase: 'Running' }))).toBeUndefined();
    const m = (await source().model(job('done', succeeded)))!;
    expect(m.size).toBe(modelBytes.length);
    const chunks: Uint8Array[] = [];
    for await (const c of m.data) chunks.push(c);
    expect(Buffer.compare(Buffer.concat(chunks), Buffer.from(modelBytes))).toBe(0);
    await m.done;
  });

  it("assembles the report of a succeeded job from its checkpoint and model, with the sites' own descriptions", async () => {
    expect(await source().report(job('done', { ...succeeded, phase: 'Running' }))).toBeUndefined();
    const r = (await source().report(job('done', succeeded)))!;
    expect(r.rounds.map((x) => x.round)).toEqual([1, 2, 3]);
    expect(r.final).toMatchObject({ rounds: 3, stoppedBy: 'rounds', modelSha256: weightsSha256(weights) });
    expect(r.model).toMatchObject({ parameters: 8, classes: ['no', 'yes'], inputShape: [3] });
    expect(r.backend).toBe('cpu');
    expect(r.durationMs).toBe(30_000);
    expect(r.sites.map((s) => s.site)).toEqual(['a', 'b']);
  });
});
