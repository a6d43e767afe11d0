// The FederatedJob's status subresource, written by the operator only (and only when it changes).
// The CRD's status schema is generated from it, so `kubectl explain federatedjob.status` is this.
import { z } from 'zod';

export const JobPhase = z
  .enum(['Pending', 'Running', 'Suspended', 'Succeeded', 'Failed'])
  .describe('Pending: Pods and credentials are being made; Running: rounds are under way; Suspended: paused after a round; Succeeded/Failed: done.');
export type JobPhase = z.infer<typeof JobPhase>;

export const Condition = z
  .object({
    type: z.string().min(1).max(316).describe('Ready, Progressing, Suspended, Succeeded, Failed, SitesAccepted.'),
    status: z.enum(['True', 'False', 'Unknown']),
    reason: z
      .string()
      .regex(/^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/)
      .max(1024)
      .describe('CamelCase reason, stable for tools.'),
    message: z.string().max(32_768).describe('Human-readable detail.'),
    lastTransitionTime: z.string().describe('RFC 3339 time the status last changed.'),
    observedGeneration: z.number().int().min(0).optional(),
  })
  .strict();
export type Condition = z.infer<typeof Condition>;

/** Stopped: the job ended (failed, by another site or the coordinator) while this site was fine. */
export const SiteState = z.enum(['Pending', 'Running', 'Refused', 'Failed', 'Stopped', 'Succeeded']);
export type SiteState = z.infer<typeof SiteState>;

export const SiteStatus = z
  .object({
    name: z.string(),
    state: SiteState,
    pod: z.string().optional().describe('The worker Pod (absent for a remote site).'),
    restarts: z.number().int().min(0).default(0).describe('Worker Pods recreated for this site.'),
    lastRound: z.number().int().min(0).optional().describe('Last round this site contributed an update to.'),
    message: z.string().max(4096).optional(),
  })
  .strict();
export type SiteStatus = z.infer<typeof SiteStatus>;

export const ModelReference = z
  .object({
    bucket: z.string().describe('JetStream Object Store bucket of the job.'),
    object: z.string().describe('Object name of the final model (safetensors).'),
    sha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/)
      .describe('SHA-256 of the object (the safetensors file, its metadata included).'),
    weightsSha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/)
      .optional()
      .describe('SHA-256 of the weights alone (little-endian float32 in layout order): the "model sha256" consort run prints.'),
    bytes: z.number().int().min(0),
  })
  .strict();
export type ModelReference = z.infer<typeof ModelReference>;

export const FederatedJobStatus = z
  .object({
    phase: JobPhase.default('Pending'),
    observedGeneration: z.number().int().min(0).optional(),
    round: z.number().int().min(0).default(0).describe('Rounds completed.'),
    rounds: z.number().int().min(0).optional().describe('Rounds the job runs (spec.rounds).'),
    accuracy: z.number().optional().describe('Global accuracy after the latest evaluated round.'),
    loss: z.number().optional().describe('Global loss after the latest evaluated round.'),
    auc: z.number().optional(),
    sitesReady: z.string().optional().describe('Sites whose worker runs, of all sites, e.g. "5/5".'),
    sites: z.array(SiteStatus).optional(),
    model: ModelReference.optional().describe('Where the final model is.'),
    startTime: z.string().optional().describe('When the rounds began; absent for a job that failed before its first round.'),
    completionTime: z.string().optional().describe('When the job succeeded or failed.'),
    conditions: z.array(Condition).optional(),
  })
  .strict();
export type FederatedJobStatus = z.infer<typeof FederatedJobStatus>;
