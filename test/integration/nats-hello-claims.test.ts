// What a site's hello claims that the coordinator can check against the job itself, checked
// before the site may become the reference the others are held to: over a real nats-server, a
// hello naming pre-trained weights in a job whose model is built from its spec (and so carries
// none) is refused, counted and logged once, and the honest sites that come after it are welcomed.
// (It used to be taken: joined first, it made round 1 start from its weights, and every honest
// site's hello was refused as "another model file", on which a site runner stops.)
import { describe, expect, it } from 'vitest';
import { HOSPITAL_FEATURES } from '../../worker/data/synthetic/hospital.ts';
import { twoSites } from '../helpers/jobs.ts';
import { coordinatorInBackground, coordinatorStatus, helloUntilAnswered, jobOnServer, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';

const cleanup = useCleanup();

describe('a hello that names pre-trained weights in a job whose model carries none', () => {
  it('is refused with CONSORT_R_WRONG_JOB, counted and logged once; the seeded sites after it are welcomed', async () => {
    const job = twoSites('hello-claims', ['north', 'south']);
    const on = await jobOnServer(job, cleanup);
    const { key, subj, auth, as } = on;
    const model = await siteModel(job, 0);
    const { logs } = await coordinatorInBackground(job, on, cleanup, { joinTimeoutMs: 60_000 });
    const hello = async (site: 'north' | 'south', initial?: { sha256: string; size: number }) => {
      const nc = await as(site, auth.sites[site]!.seed);
      const body = signedHello(key, site, auth.sites[site]!.seed, model, { features: HOSPITAL_FEATURES, ...(initial ? { initial } : {}) });
      return helloUntilAnswered(nc, subj.hello(site), body);
    };
    const weights = { sha256: 'ab'.repeat(32), size: 4096 };
    for (let i = 0; i < 3; i++) {
      const lie = await hello('north', weights);
      expect(lie).toMatchObject({ accepted: false, code: 'CONSORT_R_WRONG_JOB' });
      expect(lie.reason).toBe("the site's hello names pre-trained weights, but the job's model (mlp) is built from its spec and carries none");
    }
    expect(logs.filter((l) => l.includes('refused site "north"') && l.includes('[CONSORT_R_WRONG_JOB]'))).toHaveLength(1);
    expect(await hello('south')).toMatchObject({ accepted: true });
    expect(await hello('north')).toMatchObject({ accepted: true });

    expect((await coordinatorStatus(on)).rejections.CONSORT_R_WRONG_JOB).toBe(3);
  }, 60_000);
});
