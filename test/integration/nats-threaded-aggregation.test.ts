// The coordinator folds a large model's updates with helper threads (the updates read into
// SharedArrayBuffers, each thread a run of blocks of the exact sums): over a real nats-server,
// in memory and stored (read back range by range), the round ends in the bits of one thread.
import { describe, expect, it } from 'vitest';
import { foldPool } from '../../core/aggregation/fold-pool.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { layoutSize } from '../../core/model/layout.ts';
import { Task } from '../../core/protocol/messages.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { jobOnServer, sendPlainUpdate, signedEvaluation, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const cleanup = useCleanup();

/** One round of a ~180K-parameter model whose two sites the test plays, each sending a fixed varied update; the coordinator's final model. */
async function oneRound(name: string, threads: number, stored: boolean): Promise<Float32Array> {
  const job = FederatedJob.parse(
    jobManifest(
      name,
      hospitalSpec(
        [
          { name: 'north', samples: 40 },
          { name: 'south', samples: 30 },
        ],
        { model: { type: 'mlp', hidden: [12_000] }, rounds: 1 },
      ),
    ),
  );
  const { key, subj, auth, as } = await jobOnServer(job, cleanup);
  const model = await siteModel(job, 0);
  const n = layoutSize(model.layout);
  for (const [s, site] of ['north', 'south'].entries()) {
    const seed = auth.sites[site]!.seed;
    const nc = await as(site, seed);
    const beat = setInterval(() => nc.request(subj.hello(site), signedHello(key, site, seed, model), { timeout: 1000 }).catch(() => {}), 300);
    cleanup.push(async () => clearInterval(beat));
    nc.subscribe(subj.task(site), {
      callback: (_e, m) => {
        m.respond(encoder.encode(JSON.stringify({ type: 'ack', accepted: true })));
        const task = Task.parse(JSON.parse(decoder.decode(m.data)));
        if (task.type === 'evaluate') {
          void nc.request(subj.evaluation(site), signedEvaluation(key, site, seed, task), { timeout: 5000 }).catch(() => {});
          return;
        }
        const delta = Float32Array.from({ length: n }, (_, i) => Math.sin(i * (s + 1) * 0.001) / (1 + (i % 97)));
        void sendPlainUpdate(nc, { key, site, seed, layout: model.layout }, task, delta, 40 - 10 * s);
      },
    });
  }
  const result = await runNatsCoordinator({
    job,
    nc: await as(COORDINATOR_USER, auth.coordinator.seed),
    siteKeys: auth.keys.sites,
    log: () => {},
    joinTimeoutMs: 20_000,
    storedUpdatesFrom: stored ? 0 : Number.MAX_SAFE_INTEGER,
    aggregationRange: 1 << 18,
    aggregationThreads: threads,
  });
  expect(result.roundsCompleted).toBe(1);
  return result.global;
}

describe('the coordinator with helper threads', () => {
  for (const stored of [false, true]) {
    it(`folds ${stored ? 'stored updates, range by range' : 'updates in memory'} with them, to the bits of one thread`, async () => {
      const one = await oneRound(`threads-one-${stored}`, 1, stored);
      const before = foldPool().helperBlocks;
      const two = await oneRound(`threads-two-${stored}`, 2, stored);
      expect(foldPool().helperBlocks).toBeGreaterThan(before);
      expect(Buffer.from(two.buffer, two.byteOffset, two.byteLength).equals(Buffer.from(one.buffer, one.byteOffset, one.byteLength))).toBe(true);
    });
  }
});
