// A job has one coordinator. A second one started on the same NATS server (by hand, while the
// first runs, or both at once) used to run too: it resumed from an older checkpoint and refused
// the sites' updates as from the future, or both trained the job and wrote its state bucket. Now
// of two that find each other on the job's status subject the later stops, with
// CONSORT_C_ANOTHER_COORDINATOR, and the first goes on.
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { CoordinatorStatus } from '../../core/protocol/messages.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { decodeJson } from '../../core/protocol/wire.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { OperatorError } from '../../operator/errors.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { jobOnServer, useCleanup } from '../helpers/nats-job.ts';

const cleanup = useCleanup();

describe('two coordinators of one job on one NATS server', () => {
  it('the later one stops with CONSORT_C_ANOTHER_COORDINATOR, naming the first; the first goes on', async () => {
    const job = FederatedJob.parse(jobManifest('one-coordinator', hospitalSpec(undefined, { rounds: 1 })));
    const { auth, subj, as } = await jobOnServer(job, cleanup);
    const run = async (signal: AbortSignal) =>
      runNatsCoordinator({
        job,
        nc: await as(COORDINATOR_USER, auth.coordinator.seed),
        siteKeys: auth.keys.sites,
        log: () => {},
        joinTimeoutMs: 60_000,
        signal,
      }).then(
        () => 'finished',
        (err: unknown) => err,
      );

    // One that runs (waiting for its sites), then a second.
    const stopFirst = new AbortController();
    const first = run(stopFirst.signal);
    const observer = await as(COORDINATOR_USER, auth.coordinator.seed);
    const answering = async () => {
      for (;;) {
        const reply = await observer.request(subj.status, new Uint8Array(0), { timeout: 1000 }).catch(() => undefined);
        const s = reply && CoordinatorStatus.safeParse(decodeJson(reply.data)).data;
        if (s?.coordinator) return s.coordinator;
      }
    };
    const firstOne = await answering();
    const second = await run(new AbortController().signal);
    expect(second).toBeInstanceOf(OperatorError);
    expect((second as OperatorError).code).toBe('CONSORT_C_ANOTHER_COORDINATOR');
    expect((second as OperatorError).message).toBe(
      `another coordinator of one-coordinator has been running on this NATS server since ${new Date(firstOne.since).toISOString()}: a job has one coordinator; stop that one first (its checkpoint is kept, and a coordinator started then resumes from it)`,
    );
    // The first still answers, as itself, and stops only when told.
    expect((await answering()).instance).toBe(firstOne.instance);
    stopFirst.abort();
    expect(((await first) as OperatorError).code).toBe('CONSORT_C_ABORTED');

    // Two started at once: exactly one stops for the other.
    const stops = [new AbortController(), new AbortController()];
    const both = stops.map((c) => run(c.signal));
    const settledOne = await Promise.race(both);
    expect((settledOne as OperatorError).code).toBe('CONSORT_C_ANOTHER_COORDINATOR');
    for (const c of stops) c.abort();
    const codes = (await Promise.all(both)).map((r) => (r as OperatorError).code).sort();
    expect(codes).toEqual(['CONSORT_C_ABORTED', 'CONSORT_C_ANOTHER_COORDINATOR']);
  }, 60_000);
});
