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
  return { accepted: true };
}
