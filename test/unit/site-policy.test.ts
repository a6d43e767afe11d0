// A hospital's local policy, checked on every assignment before anything runs here: the job, its
// model and size, and what its worker Pod would be made of (the consortium's image, a host folder,
// a ServiceAccount), each refused with a stable code and a reason the job's owner sees.
import { describe, expect, it } from 'vitest';
import { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { checkPolicy, SitePolicy } from '../../core/job/site-policy.ts';

const job = { namespace: 'default', name: 'sepsis' };
const spec = (over: Record<string, unknown> = {}, site: Record<string, unknown> = {}) =>
  FederatedJobSpec.parse({
    model: { type: 'mlp' },
    sites: [
      { name: 'lakeside', remote: true, data: { type: 'csv', train: 'train.csv', labelColumn: 'y' }, ...site },
      { name: 'north', data: { type: 'synthetic', generator: 'hospital' } },
    ],
    classes: ['no', 'yes'],
    ...over,
  });
const decide = (policy: Record<string, unknown>, s = spec()) => checkPolicy(SitePolicy.parse(policy), 'lakeside', job, s);

describe('checkPolicy', () => {
  it("accepts a job within the policy, with Consort's own image and no host folder", () => {
    expect(decide({})).toEqual({ accepted: true });
    expect(decide({}, spec({}, { volume: { claimName: 'lakeside-data' } }))).toEqual({ accepted: true });
  });

  it('refuses the job, the model, the rounds, the GPUs and the epochs beyond the policy', () => {
    expect(decide({ allowedJobs: ['icu/*'] })).toMatchObject({ accepted: false, code: 'CONSORT_P_JOB' });
    expect(decide({ allowedModels: ['logistic'] })).toMatchObject({ accepted: false, code: 'CONSORT_P_MODEL' });
    expect(decide({ maxRounds: 5 })).toMatchObject({ accepted: false, code: 'CONSORT_P_ROUNDS' });
    expect(decide({ maxGpus: 0 }, spec({ worker: { resources: { gpus: 1 } } }))).toMatchObject({ accepted: false, code: 'CONSORT_P_GPUS' });
    expect(decide({ maxEpochs: 1 }, spec({ training: { epochs: 2 } }))).toMatchObject({ accepted: false, code: 'CONSORT_P_EPOCHS' });
    expect(checkPolicy(SitePolicy.parse({}), 'elsewhere', job, spec())).toMatchObject({ accepted: false, code: 'CONSORT_P_NOT_A_SITE' });
  });

  it('refuses what the worker Pod would be made of unless the hospital allows it: another image, a host folder, read-write, a ServiceAccount (any image ran, with / mounted read-write)', () => {
    const attacker = spec({ worker: { image: 'attacker.example/anything:latest' } });
    expect(decide({}, attacker)).toEqual({
      accepted: false,
      code: 'CONSORT_P_IMAGE',
      reason: 'worker image "attacker.example/anything:latest" is not allowed (allowedImages: ghcr.io/consort-dev/consort:)',
    });
    expect(decide({ allowedImages: ['registry.hospital.local/'] }, spec({ worker: { image: 'registry.hospital.local/consort:1' } }))).toEqual({
      accepted: true,
    });

    const root = spec({}, { volume: { hostPath: '/', readOnly: false } });
    expect(decide({ allowedHostPaths: ['/'] }, root)).toMatchObject({
      accepted: false,
      code: 'CONSORT_P_VOLUME',
      reason: expect.stringContaining('read-write'),
    });
    const data = (hostPath: string) => spec({}, { volume: { hostPath } });
    expect(decide({}, data('/srv/consort/lakeside'))).toMatchObject({
      accepted: false,
      code: 'CONSORT_P_VOLUME',
      reason: expect.stringContaining('allowedHostPaths: none'),
    });
    expect(decide({ allowedHostPaths: ['/srv/consort'] }, data('/srv/consort/lakeside'))).toEqual({ accepted: true });
    expect(decide({ allowedHostPaths: ['/srv/consort/'] }, data('/srv/consort'))).toEqual({ accepted: true });
    // A prefix is a folder, not a string: /srv/consort-other is not under /srv/consort, and .. never is.
    expect(decide({ allowedHostPaths: ['/srv/consort'] }, data('/srv/consort-other'))).toMatchObject({ accepted: false, code: 'CONSORT_P_VOLUME' });
    expect(decide({ allowedHostPaths: ['/srv/consort'] }, data('/srv/consort/../../etc'))).toMatchObject({ accepted: false, code: 'CONSORT_P_VOLUME' });

    expect(decide({}, spec({ worker: { serviceAccountName: 'cluster-admin-sa' } }))).toMatchObject({ accepted: false, code: 'CONSORT_P_SERVICE_ACCOUNT' });
    expect(decide({}, spec({ worker: { serviceAccountName: 'default' } }))).toEqual({ accepted: true });
    expect(decide({ allowedServiceAccounts: ['consort-worker'] }, spec({ worker: { serviceAccountName: 'consort-worker' } }))).toEqual({ accepted: true });
  });
});
