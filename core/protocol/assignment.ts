// Multi-cluster: the coordinating operator assigns a job to a site that runs in its own cluster
// (spec.sites[].remote), by request/reply on the site's assignment subject, which only that
// site's agent (`consort operator --mode site`) may read. The agent checks the job against its
// local policy and answers; a refusal's reason reaches the job's status.
import { z } from 'zod';
import { dnsLabel, FederatedJobSpec } from '../job/federated-job.ts';

/** Version-free, like hello: an agent of another protocol version is still told why it is refused. */
export const assignmentSubject = (site: string) => `consort.assign.${site}`;

export const Assignment = z
  .object({
    type: z.literal('assignment'),
    protocol: z.number().int().min(1).max(1000),
    site: dnsLabel,
    job: z.object({ namespace: dnsLabel, name: dnsLabel, uid: z.string().min(1).max(64) }).strict(),
    spec: FederatedJobSpec,
    /** The site's NATS credentials for this job (a .creds file): only the site's agent can read this subject. */
    creds: z.string().min(1).max(16_384),
    /** The NATS URL the site's worker connects to. */
    natsUrl: z.string().regex(/^(nats|tls|ws|wss):\/\//),
  })
  .strict();
export type Assignment = z.infer<typeof Assignment>;

export const AssignmentReply = z
  .object({
    type: z.literal('assignment-reply'),
    site: dnsLabel,
    uid: z.string().min(1).max(64),
    accepted: z.boolean(),
    /** Stable code of the refusal, e.g. CONSORT_P_MODEL. */
    code: z.string().max(64).optional(),
    reason: z.string().max(2048).optional(),
  })
  .strict();
export type AssignmentReply = z.infer<typeof AssignmentReply>;
