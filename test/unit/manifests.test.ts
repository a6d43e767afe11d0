// The worker Pod a FederatedJob asks for: the scheduler it names, and none when it names none.
import { describe, expect, it } from 'vitest';
import { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { type JobObject, workerPod } from '../../operator/controller/manifests.ts';

const job = (worker: Record<string, unknown>): JobObject =>
  ({
    apiVersion: 'consort.dev/v1alpha1',
    kind: 'FederatedJob',
    metadata: { name: 'j', namespace: 'default', uid: 'u-1' },
    spec: FederatedJobSpec.parse({
      model: { type: 'logistic' },
      sites: [{ name: 'north', data: { type: 'synthetic', generator: 'hospital', samples: 10 } }],
      rounds: 1,
      worker,
    }),
  }) as JobObject;

const settings = { natsUrl: 'nats://nats:4222' };

describe('worker Pods', () => {
  it("take spec.worker.schedulerName (a gang or queueing scheduler's)", () => {
    const j = job({ schedulerName: 'volcano' });
    const pod = workerPod(j, j.spec.sites[0]!, settings) as unknown as { spec: { schedulerName?: string } };
    expect(pod.spec.schedulerName).toBe('volcano');
  });

  it("leave the cluster's default scheduler when the job names none", () => {
    const j = job({});
    const pod = workerPod(j, j.spec.sites[0]!, settings) as unknown as { spec: Record<string, unknown> };
    expect('schedulerName' in pod.spec).toBe(false);
  });

  it('refuse a scheduler name that is not a DNS subdomain, naming the field', () => {
    const r = FederatedJobSpec.safeParse({ ...job({}).spec, worker: { schedulerName: 'Not A Name' } });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.path).toEqual(['worker', 'schedulerName']);
  });
});
