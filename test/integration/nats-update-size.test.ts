// The coordinator bounded a site's update only loosely: an envelope could declare 64 MiB plus 16
// bytes a parameter, whatever the model and codec, and each site's bucket was capped at
// (maxStaleness + 3) times that (hundreds of MiB of disk for a model of a few hundred
// parameters), and not at all until the first hello was taken. Over a real nats-server: before
// any hello a bucket of a model the spec builds has room for metadata only (a model file's has no
// cap until its hello names the weights' size); once the model is known its cap is the exact figure
// (update-size.ts), in place before any task goes out, and a declared size one byte over an
// update's exact largest is refused OVERSIZED, counted, and the site's honest update then taken;
// a model file's bucket keeps room for the copy of its weights put before the hello.
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { layoutSize } from '../../core/model/layout.ts';
import { encodeUpdate } from '../../core/protocol/codecs.ts';
import { Ack, Task, updateEnvelope } from '../../core/protocol/messages.ts';
import { putObject } from '../../core/protocol/object-put.ts';
import { objectWire } from '../../core/protocol/object-wire.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { newNonce, signEnvelope } from '../../core/protocol/signing.ts';
import { buckets, OBJECT_PUT, objectNames } from '../../core/protocol/subjects.ts';
import { maxUpdateBytes, PRE_LAYOUT_BYTES, preLayoutBucketCap, updateBucketCap } from '../../core/protocol/update-size.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { waitUntil } from '../helpers/managed-process.ts';
import { jobOnServer, realSite, signedEvaluation, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';
import { writePretrainedDense } from '../helpers/site-data.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const cleanup = useCleanup();

describe("a site's update size", () => {
  const tmp = useTmpDirs();

  it('is capped before any hello: a model the spec builds has room for metadata only', async () => {
    const job = FederatedJob.parse(jobManifest('early', hospitalSpec([{ name: 'north', samples: 40 }], { rounds: 1 })));
    const { key, auth, as } = await jobOnServer(job, cleanup);
    const bucket = buckets(key).updates('north');
    const nc = await as('north', auth.sites.north!.seed);
    const coordinatorNc = await as(COORDINATOR_USER, auth.coordinator.seed);
    const stop = new AbortController();
    const run = runNatsCoordinator({ job, nc: coordinatorNc, siteKeys: auth.keys.sites, log: () => {}, signal: stop.signal }).catch(() => {});
    try {
      const jsm = await jetstreamManager(coordinatorNc);
      const maxBytes = () =>
        jsm.streams.info(`OBJ_${bucket}`).then(
          (i) => i.config.max_bytes,
          () => undefined,
        );
      // No hello yet: nothing in the bucket may be written before a round's task.
      await waitUntil('the bucket capped before any hello', async () => (await maxBytes()) === PRE_LAYOUT_BYTES, { timeoutMs: 20_000 });
      const refused = await jetstream(nc)
        .publish(`$O.${bucket}.C.garbage`, new Uint8Array(PRE_LAYOUT_BYTES))
        .then(() => undefined)
        .catch((err: unknown) => (err as Error).message);
      expect(refused, 'a bucket-sized chunk was taken before any hello').toMatch(/maximum bytes/i);
    } finally {
      stop.abort();
      await run;
    }
  }, 60_000);

  it('is capped at the exact figure once the model is known; a declared size one byte over is refused OVERSIZED', async () => {
    const job = FederatedJob.parse(
      jobManifest(
        'sizes',
        hospitalSpec([{ name: 'north', samples: 40 }], {
          rounds: 1,
          compression: { codec: 'topk', topkFraction: 0.05 },
          aggregation: { roundDeadlineSeconds: 20 },
        }),
      ),
    );
    const { key, subj, auth, as } = await jobOnServer(job, cleanup);
    const model = await siteModel(job, 0);
    const seed = auth.sites.north!.seed;
    const bucket = buckets(key).updates('north');
    const stream = `OBJ_${bucket}`;
    const nc: NatsConnection = await as('north', seed);
    const wire = objectWire(nc, bucket);
    const logs: string[] = [];
    const coordinatorNc = await as(COORDINATOR_USER, auth.coordinator.seed);
    const run = runNatsCoordinator({ job, nc: coordinatorNc, siteKeys: auth.keys.sites, log: (l) => logs.push(l), joinTimeoutMs: 20_000 });
    run.catch(() => {});
    const jsm = await jetstreamManager(coordinatorNc);
    const maxBytes = () => jsm.streams.info(stream).then((i) => i.config.max_bytes);

    const max = maxUpdateBytes(model.layout, job.spec);
    const acks: Ack[] = [];
    const send = async (task: { round: number; taskId: string }, declared: 'over' | 'honest') => {
      const { bytes } = encodeUpdate(new Float32Array(layoutSize(model.layout)).fill(0.01), model.layout, job.spec.compression);
      const nonce = newNonce();
      const name = objectNames.update(task.round, nonce);
      const put = await putObject(wire, bucket, name, [bytes], OBJECT_PUT);
      const env = updateEnvelope(key, 'north', task, nonce, {
        samples: 10,
        trainLoss: 0.5,
        steps: 1,
        codec: 'topk',
        object: { bucket, name, sha256: put.sha256, size: declared === 'over' ? max + 1 : bytes.length },
      });
      const reply = await nc.request(subj.update('north'), encoder.encode(JSON.stringify(signEnvelope(env, seed))), { timeout: 10_000 });
      acks.push(Ack.parse(JSON.parse(decoder.decode(reply.data))));
    };
    nc.subscribe(subj.task('north'), {
      callback: (_e, m) => {
        m.respond(encoder.encode(JSON.stringify({ type: 'ack', accepted: true })));
        const task = Task.parse(JSON.parse(decoder.decode(m.data)));
        void (async () => {
          if (task.type === 'evaluate') {
            await nc.request(subj.evaluation('north'), signedEvaluation(key, 'north', seed, task), { timeout: 5000 });
            return;
          }
          // The cap for the model is in place before any task goes out.
          expect(await maxBytes()).toBe(updateBucketCap(model.layout, job.spec));
          await send(task, 'over');
          await send(task, 'honest');
        })().catch((err: unknown) => logs.push(`test site: ${(err as Error).message}`));
      },
    });
    const beat = setInterval(() => nc.request(subj.hello('north'), signedHello(key, 'north', seed, model), { timeout: 1000 }).catch(() => {}), 100);
    cleanup.push(async () => clearInterval(beat));

    const result = await run;
    expect(logs.filter((l) => l.startsWith('test site:'))).toEqual([]);
    expect(acks.map((a) => a.code)).toEqual(['CONSORT_R_OVERSIZED', undefined]);
    expect(acks[0]!.reason).toContain(`declares ${max + 1} bytes; an update of this model with codec topk has at most ${max}`);
    expect(result.rejections.CONSORT_R_OVERSIZED).toBe(1);
    expect(result.roundsCompleted).toBe(1);
    // A few KiB a round for a model of a few hundred parameters, not hundreds of MiB.
    expect(await maxBytes()).toBe(updateBucketCap(model.layout, job.spec));
    expect(updateBucketCap(model.layout, job.spec)).toBeLessThan(1024 * 1024);
  }, 90_000);

  it("of a model file leaves room beside its compressed updates for the pre-trained weights' copy, put before the hello", async () => {
    const dir = tmp('pretrained');
    // 100k parameters: the weights' copy (400 KB) is more than the bucket's top-k updates take.
    await writePretrainedDense(dir, (i) => ((i % 13) - 6) / 100, 8192);
    const spec = hospitalSpec([{ name: 'north', samples: 40 }], {
      model: { type: 'layers', path: join(dir, 'model.json') },
      classes: ['no', 'yes'],
      rounds: 1,
      training: { epochs: 1, batchSize: 20, optimizer: 'sgd', learningRate: 0.01 },
      compression: { codec: 'topk', topkFraction: 0.01 },
      aggregation: { roundDeadlineSeconds: 20 },
    });
    const job = FederatedJob.parse(jobManifest('pretrained-sizes', spec));
    const { key, auth, as } = await jobOnServer(job, cleanup);
    const coordinatorNc = await as(COORDINATOR_USER, auth.coordinator.seed);
    const jsm = await jetstreamManager(coordinatorNc);
    const maxBytes = () =>
      jsm.streams.info(`OBJ_${buckets(key).updates('north')}`).then(
        (i) => i.config.max_bytes,
        () => undefined,
      );
    const stop = new AbortController();
    const run = runNatsCoordinator({ job, nc: coordinatorNc, siteKeys: auth.keys.sites, log: () => {}, joinTimeoutMs: 20_000, signal: stop.signal });
    run.catch(() => {});
    // Before any hello the bucket has no cap (the weights' size is the file's; see preLayoutBucketCap).
    await waitUntil('the bucket made', async () => (await maxBytes()) !== undefined, { timeoutMs: 20_000 });
    expect(preLayoutBucketCap(job.spec)).toBeUndefined();
    expect(await maxBytes()).toBe(-1);
    const site = realSite(job, { auth, as }, 'north', () => {}, stop.signal).catch(() => {});
    try {
      const result = await run;
      expect(result.initialWeights).toBe('model file');
      expect(result.roundsCompleted).toBe(1);
      expect(await maxBytes()).toBe(updateBucketCap(result.layout, job.spec));
    } finally {
      stop.abort();
      await site;
    }
  }, 90_000);
});
