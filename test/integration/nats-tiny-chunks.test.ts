// A site chooses how its update object is cut into chunks, and each chunk costs the coordinator a
// message (and, past the count the metadata declares, a round trip) to read: a 64 MiB update in
// 16-byte chunks held its read, and the memory budget every site's update shares, for many
// minutes. Over a real nats-server, an update stored in more chunks than its size may take (16 KiB
// a chunk on average, as for stored updates), or in more than its metadata declares, is refused
// BAD_ENCODING before it is read, counted and logged once, and the site's update cut as the site
// runner cuts it is then taken.
import type { NatsConnection } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { layoutSize } from '../../core/model/layout.ts';
import { encodeUpdate } from '../../core/protocol/codecs.ts';
import { Ack, updateEnvelope } from '../../core/protocol/messages.ts';
import { objectMetaSubject, putObject } from '../../core/protocol/object-put.ts';
import { objectWire } from '../../core/protocol/object-wire.ts';
import { newNonce, signEnvelope } from '../../core/protocol/signing.ts';
import { buckets, OBJECT_PUT, objectNames } from '../../core/protocol/subjects.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { jobOnServer, keepSayingHello, playTasks, signedEvaluation, signedHello, siteModel, startCoordinator, useCleanup } from '../helpers/nats-job.ts';

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const cleanup = useCleanup();

describe('an update object cut into tiny chunks', () => {
  it('is refused BAD_ENCODING before it is read, as is one with more chunks than its metadata says; the site runner’s cut is taken', async () => {
    const job = FederatedJob.parse(jobManifest('tiny-chunks', hospitalSpec([{ name: 'north', samples: 40 }], { rounds: 1 })));
    const on = await jobOnServer(job, cleanup);
    const { key, subj, auth, as } = on;
    const model = await siteModel(job, 0);
    const seed = auth.sites.north!.seed;
    const bucket = buckets(key).updates('north');
    const nc: NatsConnection = await as('north', seed);
    const wire = objectWire(nc, bucket);
    keepSayingHello(nc, subj.hello('north'), () => signedHello(key, 'north', seed, model), cleanup);
    const acks: Ack[] = [];
    const send = async (task: { round: number; taskId: string }, cut: 'tiny' | 'miscounted' | 'runner') => {
      const { bytes } = encodeUpdate(new Float32Array(layoutSize(model.layout)).fill(0.01), model.layout, { codec: 'none', topkFraction: 0.01 });
      const nonce = newNonce();
      const name = objectNames.update(task.round, nonce);
      const put = await putObject(wire, bucket, name, [bytes], cut === 'runner' ? OBJECT_PUT : { chunkBytes: 16, windowBytes: 1 << 16 });
      // The same 16-byte chunks under metadata that declares one: each further chunk would be asked for alone.
      if (cut === 'miscounted')
        await wire.publishRollup(objectMetaSubject(bucket, name), encoder.encode(JSON.stringify({ ...put, sha256: undefined, chunks: 1 })));
      const env = updateEnvelope(key, 'north', task, nonce, {
        samples: 10,
        trainLoss: 0.5,
        steps: 1,
        codec: 'none',
        object: { bucket, name, sha256: put.sha256, size: bytes.length },
      });
      const reply = await nc.request(subj.update('north'), encoder.encode(JSON.stringify(signEnvelope(env, seed))), { timeout: 10_000 });
      acks.push(Ack.parse(JSON.parse(decoder.decode(reply.data))));
    };
    playTasks(nc, subj.task('north'), async (task) => {
      if (task.type === 'evaluate') {
        await nc.request(subj.evaluation('north'), signedEvaluation(key, 'north', seed, task), { timeout: 5000 });
        return;
      }
      await send(task, 'tiny');
      await send(task, 'miscounted');
      await send(task, 'runner');
    });
    const { logs, coordinator } = await startCoordinator(job, on, { joinTimeoutMs: 20_000 });
    const result = await coordinator;
    expect(acks.map((a) => a.code)).toEqual(['CONSORT_R_BAD_ENCODING', 'CONSORT_R_BAD_ENCODING', undefined]);
    expect(acks[0]!.reason).toMatch(/: stored in \d+ chunks, more than the 17 its \d+ bytes may take$/);
    expect(acks[1]!.reason).toMatch(/: its chunks are more than the 1 its metadata declares$/);
    expect(acks[2]).toEqual({ type: 'ack', accepted: true });
    expect(result.rejections.CONSORT_R_BAD_ENCODING).toBe(2);
    expect(logs.filter((l) => l.includes('site "north"') && l.includes('[CONSORT_R_BAD_ENCODING]'))).toHaveLength(1);
    expect(result.roundsCompleted).toBe(1);
  }, 60_000);
});
