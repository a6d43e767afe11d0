// A hospital's local policy (`consort operator --mode site --policy`): which
// jobs and models it accepts and how much of its cluster a job may take. Checked on every
// assignment before anything runs; a refusal has a stable code and a reason the job's owner sees.
import { z } from 'zod';
import type { FederatedJobSpec } from './federated-job.ts';

const pattern = z
  .string()
  .min(1)
  .max(253)
  .regex(/^[a-z0-9*]([-a-z0-9*]*[a-z0-9*])?\/[a-z0-9*]([-a-z0-9*]*[a-z0-9*])?$/, 'must be NAMESPACE/NAME, either part may use *')
  .describe('A job as namespace/name of the coordinating cluster; * matches any run of characters.');

export const SitePolicy = z
  .object({
    allowedJobs: z.array(pattern).max(1000).default(['*/*']).describe('Jobs this site takes part in.'),
    allowedModels: z
      .array(z.enum(['logistic', 'mlp', 'cnn', 'layers']))
      .max(4)
      .default(['logistic', 'mlp', 'cnn'])
      .describe('Model types this site trains (layers, a model file, is refused unless listed).'),
    maxRounds: z.number().int().min(1).max(100_000).default(1000),
    maxGpus: z.number().int().min(0).max(16).default(1).describe('GPUs one job may use here.'),
    maxEpochs: z.number().int().min(1).max(10_000).default(100).describe('Local epochs per round one job may ask for.'),
    // What the worker Pod is made of comes from the consortium's job: without these, any image
    // ran in the hospital's cluster, with any host folder mounted read-write.
    allowedImages: z
      .array(z.string().min(1).max(512))
      .max(100)
      .default(['ghcr.io/consort-dev/consort:'])
      .describe("Worker images this site runs, as prefixes (Consort's own image by default); any other is refused."),
    allowedHostPaths: z
      .array(z.string().startsWith('/', 'must be an absolute path').max(4096))
      .max(100)
      .default([])
      .describe('Host folders a job may mount as its data volume (read-only), as path prefixes; none by default.'),
    allowedServiceAccounts: z
      .array(z.string().min(1).max(253))
      .max(100)
      .default([])
      .describe("ServiceAccounts a job's worker may run as here (besides the namespace's default); none by default."),
  })
  .strict();
export type SitePolicy = z.infer<typeof SitePolicy>;

export const PolicyCodes = {
  CONSORT_P_JOB: 'the job is not among the allowed jobs',
  CONSORT_P_MODEL: 'the model type is not allowed here',
  CONSORT_P_ROUNDS: 'the job runs more rounds than allowed',
  CONSORT_P_GPUS: 'the job asks for more GPUs than allowed',
  CONSORT_P_EPOCHS: 'the job asks for more local epochs than allowed',
  CONSORT_P_NOT_A_SITE: 'this site is not a site of the job',
  CONSORT_P_IMAGE: 'the worker image is not allowed here',
  CONSORT_P_VOLUME: 'the data volume is not allowed here',
  CONSORT_P_SERVICE_ACCOUNT: 'the worker ServiceAccount is not allowed here',
  CONSORT_P_MALFORMED: 'the assignment could not be read (not an assignment of this protocol version)',
  CONSORT_P_REFUSED: 'the site refused the job without saying which rule (a site agent that gave no code)',
} as const;
export type PolicyCode = keyof typeof PolicyCodes;

const glob = (p: string) =>
  new RegExp(
    `^${p
      .split('*')
      .map((s) => s.replace(/[.+?^${}()|[\]\\-]/g, '\\$&'))
      .join('.*')}$`,
  );

export type PolicyDecision = { accepted: true } | { accepted: false; code: PolicyCode; reason: string };

/** Whether `site` may run `job` (namespace/name) with `spec` under `policy`. */
export function checkPolicy(policy: SitePolicy, site: string, job: { namespace: string; name: string }, spec: FederatedJobSpec): PolicyDecision {
  const id = `${job.namespace}/${job.name}`;
  const refuse = (code: PolicyCode, reason: string): PolicyDecision => ({ accepted: false, code, reason });
  const entry = spec.sites.find((s) => s.name === site);
  if (!entry) return refuse('CONSORT_P_NOT_A_SITE', `${id} has no site "${site}"`);
  if (!policy.allowedJobs.some((p) => glob(p).test(id)))
    return refuse('CONSORT_P_JOB', `job ${id} is not allowed (allowedJobs: ${policy.allowedJobs.join(', ')})`);
  if (!policy.allowedModels.includes(spec.model.type)) {
    return refuse('CONSORT_P_MODEL', `model type "${spec.model.type}" is not allowed (allowedModels: ${policy.allowedModels.join(', ')})`);
  }
  if (spec.rounds > policy.maxRounds) return refuse('CONSORT_P_ROUNDS', `${spec.rounds} rounds exceed maxRounds ${policy.maxRounds}`);
  const gpus = (entry.resources ?? spec.worker.resources).gpus;
  if (gpus > policy.maxGpus) return refuse('CONSORT_P_GPUS', `${gpus} GPUs exceed maxGpus ${policy.maxGpus}`);
  if (spec.training.epochs > policy.maxEpochs) return refuse('CONSORT_P_EPOCHS', `${spec.training.epochs} local epochs exceed maxEpochs ${policy.maxEpochs}`);
  const image = spec.worker.image;
  if (!policy.allowedImages.some((prefix) => image.startsWith(prefix)))
    return refuse('CONSORT_P_IMAGE', `worker image "${image}" is not allowed (allowedImages: ${policy.allowedImages.join(', ') || 'none'})`);
  const volume = entry.volume;
  if (volume?.hostPath !== undefined) {
    const path = volume.hostPath.replace(/\/+$/, '') || '/';
    const under = (prefix: string) => {
      const p = prefix.replace(/\/+$/, '');
      return path === p || path.startsWith(`${p}/`) || p === '';
    };
    if (!volume.readOnly) return refuse('CONSORT_P_VOLUME', `host folder ${volume.hostPath} would be mounted read-write; a site's data is mounted read-only`);
    if (path.split('/').includes('..') || !policy.allowedHostPaths.some(under))
      return refuse('CONSORT_P_VOLUME', `host folder ${volume.hostPath} is not allowed (allowedHostPaths: ${policy.allowedHostPaths.join(', ') || 'none'})`);
  }
  const account = spec.worker.serviceAccountName;
  if (account !== undefined && account !== 'default' && !policy.allowedServiceAccounts.includes(account))
    return refuse(
      'CONSORT_P_SERVICE_ACCOUNT',
      `ServiceAccount "${account}" is not allowed (allowedServiceAccounts: ${policy.allowedServiceAccounts.join(', ') || 'none'})`,
    );
  return { accepted: true };
}
