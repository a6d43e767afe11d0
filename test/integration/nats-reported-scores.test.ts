// A site with valid credentials that reports a loss no model has (1e308): over a real nats-server,
// its update and its evaluation are refused MALFORMED, naming the field, counted and logged once;
// its honest ones after them are taken, the round's figures stay finite, and a coordinator started
// again on the job reads its checkpoint. (Taken, one such loss made the round's mean loss
// Infinity, which the checkpoint held as null: the job could not be resumed.)
import type { NatsConnection } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { layoutSize } from '../../core/model/layout.ts';
import { Ack } from '../../core/protocol/messages.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import {
  jobOnServer,
  keepSayingHello,
  playTasks,
  sendPlainUpdate,
  signedEvaluation,
  signedHello,
  siteModel,
  startCoordinator,
  useCleanup,
} from '../helpers/nats-job.ts';

const decoder = new TextDecoder();
const cleanup = useCleanup();

describe('a site that reports a loss of 1e308', () => {
  it('is refused MALFORMED naming the field; the rounds keep finite figures and the job resumes from its checkpoint', async () => {
    const job = FederatedJob.parse(
      jobManifest(
        'absurd-loss',
        hospitalSpec(
          [
            { name: 'north', samples: 40 },
            { name: 'south', samples: 30 },
          ],
          { rounds: 1, sampling: { minSites: 2 }, aggregation: { roundDeadlineSeconds: 20 } },
        ),
      ),
    );
    const on = await jobOnServer(job, cleanup);
    const { key, subj, auth, as } = on;
    const model = await siteModel(job, 0);
    const n = layoutSize(model.layout);
    /** North's answers that lied, and the coordinator's answer to each. */
    const lies: Ack[] = [];
    for (const site of ['north', 'south']) {
      const seed = auth.sites[site]!.seed;
      const nc: NatsConnection = await as(site, seed);
      keepSayingHello(nc, subj.hello(site), () => signedHello(key, site, seed, model), cleanup);
      playTasks(nc, subj.task(site), async (task) => {
        if (task.type === 'evaluate') {
          const evaluate = async (scores: { loss?: number; trainLoss?: number }) =>
            Ack.parse(
              JSON.parse(decoder.decode((await nc.request(subj.evaluation(site), signedEvaluation(key, site, seed, task, scores), { timeout: 5000 })).data)),
            );
          if (site === 'north') {
            lies.push(await evaluate({ loss: 1e308 }));
            lies.push(await evaluate({ trainLoss: 1e308 }));
          }
          await evaluate({});
          return;
        }
        const update = (trainLoss: number) =>
          sendPlainUpdate(nc, { key, site, seed, layout: model.layout }, task, new Float32Array(n).fill(0.01), 10, trainLoss);
        if (site === 'north') lies.push(await update(1e308));
        await update(0.5);
      });
    }
    const run = () => startCoordinator(job, on, { joinTimeoutMs: 20_000 });
    const { logs, coordinator } = await run();
    const result = await coordinator;
    expect(lies).toHaveLength(3);
    for (const ack of lies) expect(ack).toMatchObject({ accepted: false, code: 'CONSORT_R_MALFORMED' });
    expect(lies.map((a) => a.reason)).toEqual([expect.stringMatching(/^trainLoss: /), expect.stringMatching(/^loss: /), expect.stringMatching(/^trainLoss: /)]);
    expect(result.rejections.CONSORT_R_MALFORMED).toBe(3);
    expect(logs.filter((l) => l.includes('site "north"') && l.includes('[CONSORT_R_MALFORMED]'))).toHaveLength(1);
    expect(result.rounds).toHaveLength(1);
    expect(result.rounds[0]).toMatchObject({ participants: ['north', 'south'], fitLoss: 0.5, globalLoss: 0.5 });

    // The job again: its checkpoint reads, and the finished job only scores its final model again.
    const again = await (await run()).coordinator;
    expect(again.rounds).toEqual(result.rounds);
  }, 60_000);
});
