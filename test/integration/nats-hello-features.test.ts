// Sites must feed the model the same columns in the same order, and only names can tell: over a
// real nats-server, a site whose hello lists the features of the site already joined in another
// order (or other ones) is refused with a reason that says how they differ, and counted; one that
// lists the same is welcomed.
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { Welcome } from '../../core/protocol/messages.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { HOSPITAL_FEATURES } from '../../worker/data/synthetic/hospital.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { jobOnServer, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';

const decoder = new TextDecoder();
const cleanup = useCleanup();

describe('a hello whose feature columns differ from the joined sites', () => {
  it('is refused with CONSORT_R_WRONG_SHAPE, naming the difference, and counted; the same columns are welcomed', async () => {
    const job = FederatedJob.parse(
      jobManifest(
        'hello-features',
        hospitalSpec(
          [
            { name: 'real', samples: 80 },
            { name: 'by-hand', samples: 80 },
          ],
          { rounds: 1, sampling: { minSites: 1 } },
        ),
      ),
    );
    const { key, subj, auth, as } = await jobOnServer(job, cleanup);
    const model = await siteModel(job, 1);
    const coordinatorLogs: string[] = [];
    let joined!: () => void;
    const realJoined = new Promise<void>((resolve) => {
      joined = resolve;
    });
    const coordinator = runNatsCoordinator({
      job,
      nc: await as(COORDINATOR_USER, auth.coordinator.seed),
      siteKeys: auth.keys.sites,
      log: (l) => {
        coordinatorLogs.push(l);
        if (l.includes('site "real" joined')) joined();
      },
      joinTimeoutMs: 60_000,
    });
    const site = runSite({
      job,
      site: 'real',
      nc: await as('real', auth.sites.real!.seed),
      seed: auth.sites.real!.seed,
      baseDir: '.',
      backend: 'cpu',
      log: () => {},
    });
    await realJoined;

    const byHand = await as('by-hand', auth.sites['by-hand']!.seed);
    const hello = async (features: readonly string[]) =>
      Welcome.parse(
        JSON.parse(
          decoder.decode(
            (await byHand.request(subj.hello('by-hand'), signedHello(key, 'by-hand', auth.sites['by-hand']!.seed, model, features), { timeout: 5000 })).data,
          ),
        ),
      );
    const reversed = await hello([...HOSPITAL_FEATURES].reverse());
    expect(reversed).toMatchObject({ accepted: false, code: 'CONSORT_R_WRONG_SHAPE' });
    expect(reversed.reason).toContain(
      `the site's feature columns are not those of site "real": the same columns in another order: column 1 is "${HOSPITAL_FEATURES[0]}"`,
    );
    const renamed = await hello([...HOSPITAL_FEATURES.slice(1), 'weight']);
    expect(renamed).toMatchObject({ accepted: false, code: 'CONSORT_R_WRONG_SHAPE' });
    expect(renamed.reason).toContain(`only the first has "${HOSPITAL_FEATURES[0]}"; only the second has "weight"`);
    expect(coordinatorLogs.filter((l) => l.includes('refused site "by-hand"') && l.includes('CONSORT_R_WRONG_SHAPE'))).toHaveLength(1);
    expect(await hello(HOSPITAL_FEATURES)).toMatchObject({ accepted: true });

    // by-hand never answers its tasks: the job goes on with the real site (minSites 1).
    const result = await coordinator;
    await site;
    expect(result.rejections.CONSORT_R_WRONG_SHAPE).toBe(2);
    expect(result.roundsCompleted).toBe(1);
  }, 90_000);
});
