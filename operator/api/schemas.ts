// The API's request and response shapes: zod, from which fastify validates requests and the
// OpenAPI document at /openapi.json is generated. The job's spec, status and per-round history
// are the schemas the CRD and report.json are made from, not copies of them.
import { z } from 'zod';
import { FederatedJobSpec, ObjectMeta } from '../../core/job/federated-job.ts';
import { FederatedJobStatus } from '../../core/job/federated-job-status.ts';
import { RoundRecord } from '../../core/report/run-report.ts';
import { API_ERROR_STATUS, type ApiErrorCode } from '../errors.ts';

export const JobParams = z
  .object({
    namespace: ObjectMeta.shape.name.describe("The FederatedJob's namespace (a DNS-1123 label)."),
    name: ObjectMeta.shape.name.describe("The FederatedJob's name (a DNS-1123 label)."),
  })
  .strict();
export type JobParams = z.infer<typeof JobParams>;

export const ApiErrorBody = z
  .object({
    code: z.enum(Object.keys(API_ERROR_STATUS) as [ApiErrorCode, ...ApiErrorCode[]]).describe('A stable code from the catalogue (operator/errors.ts).'),
    message: z.string().describe('What went wrong, for a person.'),
    field: z.string().optional().describe('400 only: the request parameter at fault, e.g. `namespace`.'),
  })
  .strict()
  // An id makes it one component of the OpenAPI document, referenced by every error answer.
  .meta({ id: 'ApiError', description: 'Every error answer of the API.' });
export type ApiErrorBody = z.infer<typeof ApiErrorBody>;

export const JobMetadata = z
  .object({
    name: z.string(),
    namespace: z.string(),
    uid: z.string().optional(),
    resourceVersion: z.string().optional(),
    generation: z.number().int().optional(),
    creationTimestamp: z.string().optional(),
    deletionTimestamp: z.string().optional(),
    labels: z.record(z.string(), z.string()).optional(),
    annotations: z.record(z.string(), z.string()).optional(),
  })
  .strict();

export const JobView = z
  .object({
    metadata: JobMetadata,
    spec: FederatedJobSpec,
    status: FederatedJobStatus.describe('As the API server has it (the operator writes it).'),
    history: z
      .array(RoundRecord)
      .describe(
        "Every evaluated round so far, oldest first: global and per-site metrics. From the running round loop, or the job's checkpoint once it is done.",
      ),
  })
  .strict()
  .meta({ id: 'FederatedJobView', description: 'A FederatedJob as the API shows it.' });
export type JobView = z.infer<typeof JobView>;

/** What a body that is not JSON is documented as. */
export const BinaryBody = z.string().describe('Raw bytes.');
export const TextBody = z.string();

export const Health = z.literal('ok');
