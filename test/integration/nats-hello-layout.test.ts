// The first hello's model layout becomes the job's model: over a real nats-server, a site with
// valid credentials whose hello names a model the job's spec does not build (2^40 parameters, or
// other hidden layers) is refused WRONG_SHAPE before it can become that reference, counted and
// logged once, and the honest site after it is welcomed; in a job of a Layers file (whose size the
// coordinator cannot know), a layout this coordinator could not hold is refused OVERSIZED. (Taken,
// the 2^40 parameters left the update buckets uncapped and the coordinator died of a RangeError
// allocating the model, with no code.)
import { describe, expect, it } from 'vitest';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import { layoutSize, type ParameterLayout } from '../../core/model/layout.ts';
import { HOSPITAL_FEATURES } from '../../worker/data/synthetic/hospital.ts';
import { twoSites } from '../helpers/jobs.ts';
import { coordinatorInBackground, coordinatorStatus, helloUntilAnswered, jobOnServer, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';

const cleanup = useCleanup();
const GIANT: ParameterLayout = [{ name: 'w', shape: [2 ** 20, 2 ** 20] }];

/** A coordinator of `job` (sites north and south), and hellos of either by hand with a layout of choice. */
async function helloes(job: FederatedJob, model: { layout: ParameterLayout; sampleShape: number[] }) {
  const on = await jobOnServer(job, cleanup);
  const { key, subj, auth, as } = on;
  const { logs } = await coordinatorInBackground(job, on, cleanup, { joinTimeoutMs: 60_000 });
  const hello = async (site: 'north' | 'south', layout: ParameterLayout = model.layout) => {
    const nc = await as(site, auth.sites[site]!.seed);
    const body = signedHello(key, site, auth.sites[site]!.seed, { ...model, layout }, { features: HOSPITAL_FEATURES });
    return helloUntilAnswered(nc, subj.hello(site), body);
  };
  const status = () => coordinatorStatus(on);
  return { logs, hello, status };
}

describe("a hello whose model layout is not the job's", () => {
  it('is refused WRONG_SHAPE (2^40 parameters, other hidden layers), counted and logged once; the honest site is welcomed', async () => {
    const job = twoSites('hello-layout', ['north', 'south']);
    const model = await siteModel(job, 0);
    const { logs, hello, status } = await helloes(job, model);
    const giant = await hello('north', GIANT);
    expect(giant).toMatchObject({ accepted: false, code: 'CONSORT_R_WRONG_SHAPE' });
    expect(giant.reason).toBe(
      `the site's model has ${2 ** 40} parameters; the job's mlp model for ${model.sampleShape.join('x')} inputs and 2 classes has ${layoutSize(model.layout)}`,
    );
    // Another model of the same inputs: one hidden layer of 32 units, not 16.
    const wider = model.layout.map((t) => ({ ...t, shape: t.shape.map((d) => (d === 16 ? 32 : d)) }));
    expect(await hello('north', wider)).toMatchObject({ accepted: false, code: 'CONSORT_R_WRONG_SHAPE' });
    expect(logs.filter((l) => l.includes('refused site "north"'))).toHaveLength(1);
    expect(await hello('south')).toMatchObject({ accepted: true });
    expect(await hello('north')).toMatchObject({ accepted: true });
    expect((await status()).rejections.CONSORT_R_WRONG_SHAPE).toBe(2);
  }, 60_000);

  it('in a job of a Layers file, is refused OVERSIZED when this coordinator could not hold it', async () => {
    const seeded = twoSites('hello-layout-file', ['north', 'south']);
    // The coordinator never reads the file: its path is all the spec holds.
    const job = twoSites('hello-layout-file', ['north', 'south'], { model: { type: 'layers', path: 'model.json' }, classes: ['no', 'yes'] });
    const { logs, hello, status } = await helloes(job, await siteModel(seeded, 0));
    const giant = await hello('north', GIANT);
    expect(giant).toMatchObject({ accepted: false, code: 'CONSORT_R_OVERSIZED' });
    expect(giant.reason).toMatch(
      /^the site's model has 1099511627776 parameters \(4398\.0 GB of weights\), more than this coordinator's [0-9.]+ GB of memory$/,
    );
    expect(logs.filter((l) => l.includes('refused site "north"') && l.includes('[CONSORT_R_OVERSIZED]'))).toHaveLength(1);
    expect((await status()).rejections.CONSORT_R_OVERSIZED).toBe(1);
  }, 60_000);
});
