// `kubectl apply -f manifests/examples/hospitals.yaml` on a real API server: the operator (running
// with the RBAC it ships, as its ServiceAccount) creates the credentials, the spec ConfigMap and a
// worker Pod per hospital (run by the pod runner as `consort site` processes), runs the rounds,
// and ends Succeeded with the model in the job's bucket: the same weights as `consort run`.
// Then, on a second job: a worker Pod deleted mid-job is recreated, the operator SIGKILLed
// mid-job resumes from the checkpoint, and the model is still the uninterrupted run's; deleting
// the job removes its Pods, Secrets and NATS buckets.
import { join } from 'node:path';
import { Objm } from '@nats-io/obj';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { readFileSync } from 'node:fs';
import { connectAs } from '../../cli/nats/connect.ts';
import { OPERATOR_USER } from '../../core/protocol/permissions.ts';
import { buckets, jobKey } from '../../core/protocol/subjects.ts';
import { decodeSafetensors } from '../../core/tensor/safetensors.ts';
import { ConsortCluster } from '../helpers/consort-cluster.ts';
import { HOSPITALS } from '../helpers/federation.ts';
import { runConsort } from '../helpers/consort-cli.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

/** The bytes of a typed array itself (decoded tensors may be views into a larger buffer). */
const bytesOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** The example's own. */
const ROUNDS = 20;

/** The example under another name (the name is not part of any seed). */
function hospitals(name: string, extra: Record<string, unknown> = {}): string {
  const doc = parse(readFileSync(HOSPITALS, 'utf8')) as { metadata: { name: string }; spec: Record<string, unknown> };
  doc.metadata.name = name;
  Object.assign(doc.spec, extra);
  return stringify(doc);
}

describe('the operator on a real API server', () => {
  const tmp = useTmpDirs();
  let cluster: ConsortCluster;
  let reference: Float32Array;
  /** The "model sha256" consort run printed (report.json's final.modelSha256). */
  let referenceSha: string;

  beforeAll(async () => {
    const dir = tmp('operator-reference');
    // The same job in one process, while the cluster starts.
    const [ref, c] = await Promise.all([runConsort(['run', HOSPITALS, '--out', join(dir, 'out'), '--quiet']), ConsortCluster.start()]);
    cluster = c;
    expect(ref.code, ref.stderr).toBe(0);
    reference = decodeSafetensors(readFileSync(join(dir, 'out', 'model.safetensors'))).values;
    referenceSha = JSON.parse(readFileSync(join(dir, 'out', 'report.json'), 'utf8')).final.modelSha256;
    await cluster.startOperator();
  }, 240_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  async function finalWeights(name: string): Promise<Float32Array> {
    const nc = await connectAs(cluster.nats.url, cluster.operatorCreds, OPERATOR_USER);
    try {
      const store = await new Objm(nc).open(buckets(jobKey({ name, namespace: 'default' })).models);
      const bytes = await store.getBlob('global/final');
      if (!bytes) throw new Error(`no final model for ${name}`);
      return decodeSafetensors(bytes).values;
    } finally {
      await nc.close();
    }
  }

  it('kubectl apply of the example runs to Succeeded; kubectl get fj shows its columns, describe its conditions and events', async () => {
    const applied = await cluster.kubectl(['apply', '-f', HOSPITALS]);
    expect(applied.code, applied.stderr).toBe(0);
    const status = await cluster.waitForJob('hospitals', (s) => s.phase === 'Succeeded' || s.phase === 'Failed', { timeoutMs: 240_000 });
    expect(status.phase, JSON.stringify(status)).toBe('Succeeded');
    expect(status.round).toBe(ROUNDS);
    expect(status.model).toMatchObject({ bucket: buckets(jobKey({ name: 'hospitals', namespace: 'default' })).models, object: 'global/final' });
    expect((status.model as { sha256: string }).sha256).toMatch(/^[0-9a-f]{64}$/);
    // The weights' hash is the one the one-process run printed.
    expect((status.model as { weightsSha256?: string }).weightsSha256).toBe(referenceSha);
    expect(status.accuracy as number).toBeGreaterThan(0.7);
    expect(status.observedGeneration).toBe(1);

    const get = await cluster.kubectl(['get', 'fj']);
    expect(get.code, get.stderr).toBe(0);
    const [header, row] = get.stdout.trim().split('\n');
    expect(header!.split(/\s+/)).toEqual(['NAME', 'PHASE', 'ROUND', 'ACCURACY', 'SITES', 'AGE']);
    expect(row!.split(/\s+/).slice(0, 3)).toEqual(['hospitals', 'Succeeded', String(ROUNDS)]);
    expect(row).toMatch(/0\.\d+\s+5\/5/);

    const describe = await cluster.kubectl(['describe', 'fj', 'hospitals']);
    expect(describe.stdout).toMatch(/Type:\s+Succeeded[\s\S]*?|Succeeded/);
    expect(describe.stdout).toMatch(/Reason:\s+RoundsCompleted/);
    expect(describe.stdout).toMatch(/Normal\s+Started\s/);
    expect(describe.stdout).toMatch(/Normal\s+Succeeded\s/);

    // The model in the job's bucket is the one-process run's, weight for weight.
    const weights = await finalWeights('hospitals');
    expect(bytesOf(weights).equals(bytesOf(reference))).toBe(true);

    // Worker Pods are cleaned up once the job is done.
    const pods = await cluster.kubectl(['get', 'pods', '-l', 'consort.dev/job=hospitals', '-o', 'name']);
    await expect
      .poll(async () => (await cluster.kubectl(['get', 'pods', '-l', 'consort.dev/job=hospitals', '-o', 'name'])).stdout.trim(), { timeout: 30_000 })
      .toBe('');
    expect(pods.code).toBe(0);
  });

  it('a SIGKILLed operator resumes from the checkpoint with the model unchanged; a deleted worker Pod is recreated; deletion cleans up', async () => {
    // Two jobs at once: "faults" must end in the reference weights; "podloss" loses a worker
    // mid-round (that round waits for the new Pod, which is sent the task again, or closes at its
    // deadline without it). Enough
    // rounds for podloss to be still running once the operator is back (half a second a round).
    for (const input of [hospitals('faults'), hospitals('podloss', { rounds: 40, aggregation: { roundDeadlineSeconds: 15 } })]) {
      const applied = await cluster.kubectl(['apply', '-f', '-'], { input });
      expect(applied.code, applied.stderr).toBe(0);
    }
    // Mid-job: SIGKILL the operator (its in-process coordinators with it) after round 2 of "faults".
    await cluster.waitForJob('faults', (s) => (s.round as number) >= 2);
    const [op] = cluster.operators.splice(0, 1);
    await op!.stop('SIGKILL');
    const roundAtKill = (await cluster.job('faults'))!.status!.round as number;
    expect(roundAtKill).toBeLessThan(ROUNDS);
    await cluster.startOperator({ identity: 'operator-2' });

    // Delete one of podloss's worker Pods while it runs: it comes back.
    await cluster.waitForJob('podloss', (s) => s.phase === 'Running' && s.sitesReady === '5/5');
    const uid = async () => (await cluster.kubectl(['get', 'pod', 'podloss-site-lakeside', '-o', 'jsonpath={.metadata.uid}'])).stdout;
    const before = await uid();
    expect(before).not.toBe('');
    const del = await cluster.kubectl(['delete', 'pod', 'podloss-site-lakeside', '--wait=true']);
    expect(del.code, del.stderr).toBe(0);
    await expect.poll(uid, { timeout: 30_000 }).toMatch(/^(?!$)/);
    expect(await uid()).not.toBe(before);

    for (const name of ['faults', 'podloss']) {
      const status = await cluster.waitForJob(name, (s) => s.phase === 'Succeeded' || s.phase === 'Failed', { timeoutMs: 300_000 });
      expect(status.phase, `${name}: ${JSON.stringify(status)}`).toBe('Succeeded');
    }
    const faults = await cluster.job('faults');
    expect(faults!.status!.round).toBe(ROUNDS);
    expect((await cluster.kubectl(['describe', 'fj', 'faults'])).stdout).toMatch(/Resumed\s+.*checkpoint after round \d+/);
    const weights = await finalWeights('faults');
    expect(bytesOf(weights).equals(bytesOf(reference))).toBe(true);
    const podloss = await cluster.job('podloss');
    const lakeside = (podloss!.status!.sites as { name: string; restarts: number }[]).find((s) => s.name === 'lakeside');
    expect(lakeside?.restarts).toBeGreaterThanOrEqual(1);

    // Delete the jobs: Pods, Secrets and ConfigMaps go (owner references), the NATS buckets too (finalizer).
    for (const name of ['faults', 'podloss']) {
      const gone = await cluster.kubectl(['delete', 'fj', name, '--wait=true', '--timeout=60s']);
      expect(gone.code, gone.stderr).toBe(0);
    }
    await expect
      .poll(async () => (await cluster.kubectl(['get', 'secrets,configmaps,pods', '-l', 'consort.dev/job in (faults,podloss)', '-o', 'name'])).stdout.trim(), {
        timeout: 60_000,
      })
      .toBe('');
    const nc = await connectAs(cluster.nats.url, cluster.operatorCreds, OPERATOR_USER);
    try {
      const names: string[] = [];
      for await (const s of new Objm(nc).list()) names.push(s.bucket);
      expect(names.filter((n) => n.includes('default_faults') || n.includes('default_podloss'))).toEqual([]);
      expect(names.some((n) => n.includes('default_hospitals'))).toBe(true);
    } finally {
      await nc.close();
    }
  });
});
