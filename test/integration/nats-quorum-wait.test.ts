// A round does not start without the sites its quorum needs: over a real nats-server, a site that
// goes quiet between rounds (a crash and a restart, played here by its hellos stopping) is waited
// for, up to the round deadline, rather than a round being started that cannot close.
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { layoutSize } from '../../core/model/layout.ts';
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

const cleanup = useCleanup();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('a round whose quorum needs a site that has gone quiet', () => {
  it('waits for it to come back, then runs with it', async () => {
    const job = FederatedJob.parse(
      jobManifest(
        'quorum-wait',
        hospitalSpec(
          [
            { name: 'north', samples: 40 },
            { name: 'south', samples: 30 },
          ],
          { rounds: 2, sampling: { minSites: 2 }, aggregation: { roundDeadlineSeconds: 60 } },
        ),
      ),
    );
    const on = await jobOnServer(job, cleanup);
    const { key, subj, auth, as } = on;
    const model = await siteModel(job, 0);
    const n = layoutSize(model.layout);
    /** south's hellos stop from its round-1 task until 2 s after it has answered round 1's evaluation. */
    let southQuiet = false;
    for (const site of ['north', 'south']) {
      const seed = auth.sites[site]!.seed;
      const nc = await as(site, seed);
      keepSayingHello(
        nc,
        subj.hello(site),
        () => signedHello(key, site, seed, model),
        cleanup,
        () => site === 'south' && southQuiet,
      );
      playTasks(nc, subj.task(site), async (task) => {
        if (task.type === 'evaluate') {
          if (site === 'south' && task.round === 1) await sleep(1000);
          await nc.request(subj.evaluation(site), signedEvaluation(key, site, seed, task), { timeout: 5000 }).catch(() => {});
          if (site === 'south' && task.round === 1) setTimeout(() => (southQuiet = false), 2000);
          return;
        }
        if (site === 'south' && task.round === 1) southQuiet = true;
        await sendPlainUpdate(nc, { key, site, seed, layout: model.layout }, task, new Float32Array(n).fill(0.01), 10);
      });
    }
    const { logs, coordinator } = await startCoordinator(job, on, { joinTimeoutMs: 20_000, aliveMs: 500 });
    const result = await coordinator;
    expect(result.roundsCompleted).toBe(2);
    expect(result.rounds.map((r) => r.participants)).toEqual([
      ['north', 'south'],
      ['north', 'south'],
    ]);
    expect(logs).toContain('waiting for sites before the next round: 1 alive, sampling.minSites is 2 (missing south)');
  });
});
