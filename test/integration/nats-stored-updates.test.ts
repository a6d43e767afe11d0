// Stored updates over a real nats-server (the coordinator's path for large models, forced here
// on a small one): each update is checked as it streams in and read back from its bucket when the
// round closes. A site that purges its object's chunks once its update was accepted (a rollup on
// its chunk subject: the one way a site can take stored messages back) is left out of the round,
// counted as a rejection, and the round ends in the bits of a round it never answered; a site
// that overwrites its object under the same name changes nothing.
import { Objm } from '@nats-io/obj';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { layoutSize } from '../../core/model/layout.ts';
import { encodeUpdate } from '../../core/protocol/codecs.ts';
import { sha256Hex } from '../../core/protocol/digest.ts';
import { Ack, type FitTask, Task, updateEnvelope } from '../../core/protocol/messages.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { newNonce, signEnvelope } from '../../core/protocol/signing.ts';
import { buckets, objectNames } from '../../core/protocol/subjects.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { jobOnServer, signedEvaluation, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';

const decoder = new TextDecoder();
const encoder = new TextEncoder();

const cleanup = useCleanup();

type Mallory = 'purges' | 'overwrites' | 'silent';

/**
 * One round of a job whose three sites the test plays: "north" and "south" send fixed updates,
 * only once mallory is done with hers (so the round closes after whatever she did), and every
 * site answers the final evaluation. Updates stored unless `stored` is false.
 */
async function oneRound(mallory: Mallory, stored = true) {
  const job = FederatedJob.parse(
    jobManifest(
      `stored-${mallory}`,
      hospitalSpec(
        [
          { name: 'north', samples: 120 },
          { name: 'south', samples: 90 },
          { name: 'mallory', samples: 60 },
        ],
        { rounds: 1, aggregation: { roundDeadlineSeconds: 4 }, sampling: { minSites: 1 } },
      ),
    ),
  );
  const { key, subj, auth, as } = await jobOnServer(job, cleanup);
  const model = await siteModel(job, 2);
  const { layout } = model;
  const n = layoutSize(layout);

  let malloryDone!: () => void;
  const malloryIsDone = new Promise<void>((r) => {
    malloryDone = r;
  });
  if (mallory === 'silent') malloryDone();
  const acks: Ack[] = [];
  const fakeSite = async (site: string, onFit: (nc: NatsConnection, task: FitTask) => Promise<void>) => {
    const seed = auth.sites[site]!.seed;
    const nc = await as(site, seed);
    const _sign = <T extends object>(e: T) => encoder.encode(JSON.stringify(signEnvelope(e as never, seed)));
    const hello = () => signedHello(key, site, seed, model);
    const beat = setInterval(() => nc.request(subj.hello(site), hello(), { timeout: 1000 }).catch(() => {}), 300);
    cleanup.push(async () => clearInterval(beat));
    nc.subscribe(subj.task(site), {
      callback: (_e, m) => {
        m.respond(encoder.encode(JSON.stringify({ type: 'ack', accepted: true })));
        const task = Task.parse(JSON.parse(decoder.decode(m.data)));
        if (task.type === 'fit') {
          void onFit(nc, task);
          return;
        }
        void nc.request(subj.evaluation(site), signedEvaluation(key, site, seed, task), { timeout: 5000 }).catch(() => {});
      },
    });
  };
  /** Puts an update of these values into the site's bucket and sends its envelope; returns the ack and the object's nuid. */
  const sendUpdate = async (nc: NatsConnection, site: string, task: FitTask, values: number, samples: number) => {
    const store = await new Objm(nc).open(buckets(key).updates(site));
    const { bytes } = encodeUpdate(new Float32Array(n).fill(values), layout, job.spec.compression);
    const nonce = newNonce();
    const name = objectNames.update(task.round, nonce);
    const info = await store.putBlob({ name, options: { max_chunk_size: 512 } }, bytes);
    const env = updateEnvelope(key, site, task, nonce, {
      samples,
      trainLoss: 0.5,
      steps: 2,
      codec: 'none',
      object: { bucket: buckets(key).updates(site), name, sha256: sha256Hex(bytes), size: bytes.length },
    });
    const reply = await nc.request(subj.update(site), encoder.encode(JSON.stringify(signEnvelope(env, auth.sites[site]!.seed))), { timeout: 5000 });
    return { ack: Ack.parse(JSON.parse(decoder.decode(reply.data))), store, name, nuid: info.nuid };
  };

  for (const [site, value, samples] of [
    ['north', 0.125, 120],
    ['south', -0.5, 90],
  ] as const) {
    await fakeSite(site, async (nc, task) => {
      await malloryIsDone;
      await sendUpdate(nc, site, task, value, samples);
    });
  }
  await fakeSite('mallory', async (nc, task) => {
    if (mallory === 'silent') return;
    const sent = await sendUpdate(nc, 'mallory', task, 0.25, 60);
    acks.push(sent.ack);
    if (mallory === 'overwrites') {
      // Another object under the same name: new chunks, new sequences.
      const other = encodeUpdate(new Float32Array(n).fill(-3), layout, job.spec.compression).bytes;
      await sent.store.putBlob({ name: sent.name, options: { max_chunk_size: 512 } }, other);
    } else {
      // A rollup on the chunk subject purges every earlier chunk of the object.
      const h = headers();
      h.set('Nats-Rollup', 'sub');
      await nc.request(`$O.${buckets(key).updates('mallory')}.C.${sent.nuid}`, new Uint8Array(8), { headers: h, timeout: 5000 });
    }
    malloryDone();
  });

  const coordinator = await as(COORDINATOR_USER, auth.coordinator.seed);
  const logs: string[] = [];
  const result = await runNatsCoordinator({
    job,
    nc: coordinator,
    siteKeys: auth.keys.sites,
    log: (l) => logs.push(l),
    joinTimeoutMs: 20_000,
    aliveMs: 3000,
    storedUpdatesFrom: stored ? 0 : Number.MAX_SAFE_INTEGER,
    aggregationRange: 100,
  });
  return { result, acks, logs };
}

describe('stored updates over NATS', () => {
  it('leave out a site that purged its accepted update before the round closed: counted, and the bits of a round without it', async () => {
    const purged = await oneRound('purges');
    expect(purged.acks).toEqual([{ type: 'ack', accepted: true }]);
    expect(purged.logs.some((l) => l.includes('updates stay in their buckets'))).toBe(true);
    expect(purged.result.rejections.CONSORT_R_HASH_MISMATCH, purged.logs.join('\n')).toBe(1);
    expect(purged.logs.some((l) => l.includes('left out the update of site "mallory"') && l.includes('CONSORT_R_HASH_MISMATCH'))).toBe(true);
    expect(purged.result.rounds[0]!.participants).toEqual(['north', 'south']);
    // The same round, mallory silent: the round closes at its deadline with the same two updates.
    const silent = await oneRound('silent');
    expect(silent.result.rounds[0]!.participants).toEqual(['north', 'south']);
    expect(Buffer.from(purged.result.global.buffer).equals(Buffer.from(silent.result.global.buffer))).toBe(true);
  }, 120_000);

  it('read back the bytes they checked, even when the site overwrites its object under the same name', async () => {
    const { result, acks } = await oneRound('overwrites');
    expect(acks).toEqual([{ type: 'ack', accepted: true }]);
    expect(Object.values(result.rejections).reduce((a, b) => a + b, 0)).toBe(0);
    expect(result.rounds[0]!.participants).toEqual(['mallory', 'north', 'south']);
    // Updates read whole on arrival (the small-model path) fold what was sent then: the same bits.
    const inMemory = await oneRound('overwrites', false);
    expect(Buffer.from(result.global.buffer).equals(Buffer.from(inMemory.result.global.buffer))).toBe(true);
  }, 120_000);
});
