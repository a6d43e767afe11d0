// The operator against what a cluster does to it: two replicas, of which only the leader
// reconciles, and the standby takes over within the lease time when the leader is SIGKILLed;
// kube-apiserver SIGKILLed and restarted mid-job, after which the informers recover and the job
// completes; spec.suspend pausing after a round and resuming from the checkpoint.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { ConsortCluster } from '../helpers/consort-cluster.ts';
import { HOSPITALS } from '../helpers/federation.ts';

// Enough rounds that a job is still running when the test acts on it: a round of the hospital job
// takes about half a second, and a status shows a round's figures up to a second late.
const ROUNDS = 40;

function hospitals(name: string, extra: Record<string, unknown> = {}): string {
  const doc = parse(readFileSync(HOSPITALS, 'utf8')) as { metadata: { name: string }; spec: Record<string, unknown> };
  doc.metadata.name = name;
  Object.assign(doc.spec, { rounds: ROUNDS }, extra);
  return stringify(doc);
}

const holder = async (cluster: ConsortCluster) =>
  (await cluster.kubectl(['get', 'lease', '-n', 'consort-system', 'consort-operator', '-o', 'jsonpath={.spec.holderIdentity}'])).stdout;

describe('the operator when the control plane fails under it', () => {
  let cluster: ConsortCluster;

  beforeAll(async () => {
    cluster = await ConsortCluster.start();
  }, 180_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  it('two replicas: only the leader reconciles; SIGKILL it and the other takes over within the lease time; the job completes', async () => {
    const a = await cluster.startOperator({ identity: 'replica-a' });
    await expect.poll(() => holder(cluster), { timeout: 20_000 }).toBe('replica-a');
    const b = await cluster.startOperator({ identity: 'replica-b' });
    const applied = await cluster.kubectl(['apply', '-f', '-'], { input: hospitals('leader') });
    expect(applied.code, applied.stderr).toBe(0);
    await cluster.waitForJob('leader', (s) => (s.round as number) >= 2);
    // The standby has its caches but has done nothing: every Event is the leader's.
    expect(b.log(100_000)).not.toMatch(/is now the leader|round loop started/);
    const killedAt = Date.now();
    await a.stop('SIGKILL');
    cluster.operators.splice(cluster.operators.indexOf(a), 1);
    await expect.poll(() => holder(cluster), { timeout: 30_000, interval: 250 }).toBe('replica-b');
    const tookOverMs = Date.now() - killedAt;
    // Lease duration 15 s, retry period 2 s: the standby takes over after at most ~17 s.
    expect(tookOverMs).toBeLessThan(20_000);
    const status = await cluster.waitForJob('leader', (s) => s.phase === 'Succeeded' || s.phase === 'Failed', { timeoutMs: 240_000 });
    expect(status.phase, JSON.stringify(status)).toBe('Succeeded');
    expect(status.round).toBe(ROUNDS);
    expect((await cluster.kubectl(['describe', 'fj', 'leader'])).stdout).toMatch(/Resumed/);
  });

  /** The tests share a cluster; each runs with whatever operator is left, or starts one. */
  const anOperator = async () => {
    if (!cluster.operators.some((p) => !p.exited)) await cluster.startOperator({ identity: `replica-${cluster.operators.length + 1}` });
  };

  it('kube-apiserver SIGKILLed and restarted mid-job: the informers recover and the job completes', async () => {
    await anOperator();
    const applied = await cluster.kubectl(['apply', '-f', '-'], { input: hospitals('apiserver') });
    expect(applied.code, applied.stderr).toBe(0);
    await cluster.waitForJob('apiserver', (s) => (s.round as number) >= 2);
    await cluster.cp.restartApiServer({ signal: 'SIGKILL', downMs: 3000 });
    const status = await cluster.waitForJob('apiserver', (s) => s.phase === 'Succeeded' || s.phase === 'Failed', { timeoutMs: 240_000 });
    expect(status.phase, JSON.stringify(status)).toBe('Succeeded');
    expect(status.round).toBe(ROUNDS);
    // The operator kept running through the outage (no restart).
    expect(cluster.operators.every((p) => !p.exited)).toBe(true);
    // Objects made after the outage are seen: a new job runs too.
    const again = await cluster.kubectl(['apply', '-f', '-'], { input: hospitals('after-outage', { rounds: 2 }) });
    expect(again.code, again.stderr).toBe(0);
    const after = await cluster.waitForJob('after-outage', (s) => s.phase === 'Succeeded' || s.phase === 'Failed', { timeoutMs: 120_000 });
    expect(after.phase).toBe('Succeeded');
  });

  it('spec.suspend: true pauses after the current round and frees the workers; false resumes from the checkpoint', async () => {
    await anOperator();
    const applied = await cluster.kubectl(['apply', '-f', '-'], { input: hospitals('pausable') });
    expect(applied.code, applied.stderr).toBe(0);
    await cluster.waitForJob('pausable', (s) => (s.round as number) >= 2);
    const patch = await cluster.kubectl(['patch', 'fj', 'pausable', '--type=merge', '-p', '{"spec":{"suspend":true}}']);
    expect(patch.code, patch.stderr).toBe(0);
    const suspended = await cluster.waitForJob('pausable', (s) => s.phase === 'Suspended');
    const pausedAt = suspended.round as number;
    expect(pausedAt).toBeLessThan(ROUNDS);
    await expect
      .poll(async () => (await cluster.kubectl(['get', 'pods', '-l', 'consort.dev/job=pausable', '-o', 'name'])).stdout.trim(), { timeout: 30_000 })
      .toBe('');
    // Nothing moves while suspended.
    await new Promise((r) => setTimeout(r, 2000));
    expect((await cluster.job('pausable'))!.status!.round).toBe(pausedAt);
    const resume = await cluster.kubectl(['patch', 'fj', 'pausable', '--type=merge', '-p', '{"spec":{"suspend":false}}']);
    expect(resume.code, resume.stderr).toBe(0);
    const done = await cluster.waitForJob('pausable', (s) => s.phase === 'Succeeded' || s.phase === 'Failed', { timeoutMs: 240_000 });
    expect(done.phase, JSON.stringify(done)).toBe('Succeeded');
    expect(done.round).toBe(ROUNDS);
    const events = (await cluster.kubectl(['describe', 'fj', 'pausable'])).stdout;
    expect(events).toMatch(/Suspended\s.*suspended after round \d+/);
    expect(events).toMatch(/Resumed\s+.*checkpoint after round \d+/);

    // Suspending it now that it has ended changes nothing: it stays Succeeded, with its report.
    const late = await cluster.kubectl(['patch', 'fj', 'pausable', '--type=merge', '-p', '{"spec":{"suspend":true}}']);
    expect(late.code, late.stderr).toBe(0);
    await expect
      .poll(async () => (await cluster.kubectl(['describe', 'fj', 'pausable'])).stdout, { timeout: 30_000 })
      .toMatch(/SuspendIgnored\s+.*the job has ended \(Succeeded\): spec.suspend changes nothing/);
    const after = (await cluster.job('pausable'))!.status!;
    expect(after.phase).toBe('Succeeded');
    expect(after.round).toBe(ROUNDS);
    expect((after.conditions as Array<{ type: string; status: string }>).find((c) => c.type === 'Succeeded')?.status).toBe('True');

    // Nor does clearing it again: the job used to train a second time over its finished model.
    const unsuspend = await cluster.kubectl(['patch', 'fj', 'pausable', '--type=merge', '-p', '{"spec":{"suspend":false}}']);
    expect(unsuspend.code, unsuspend.stderr).toBe(0);
    const generation = (await cluster.job('pausable'))!.metadata.generation;
    // observedGeneration says the operator has acted on this generation.
    const seen = await cluster.waitForJob('pausable', (s) => s.observedGeneration === generation);
    expect(seen.phase).toBe('Succeeded');
    expect(seen.round).toBe(ROUNDS);
    expect((seen.conditions as Array<{ type: string; status: string }>).find((c) => c.type === 'Succeeded')?.status).toBe('True');
    expect((await cluster.kubectl(['get', 'pods', '-l', 'consort.dev/job=pausable', '-o', 'name'])).stdout.trim()).toBe('');
    const described = (await cluster.kubectl(['describe', 'fj', 'pausable'])).stdout;
    expect(described.match(/\bResumed\s/g) ?? []).toHaveLength(1);
  });
});
