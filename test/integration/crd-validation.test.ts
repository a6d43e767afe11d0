// The generated CRD on a real kube-apiserver: it is accepted (structural, CEL within the cost
// budget), refuses each invalid manifest of the fixtures naming the same field zod names, accepts
// the example and every union variant with the defaults zod gives, and makes `kubectl explain`,
// `kubectl get fj` and the printer columns work.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { ControlPlane, type KubectlResult } from '../helpers/control-plane.ts';
import { INVALID_JOBS } from '../fixtures/invalid-jobs.ts';
import { VALID_JOBS } from '../fixtures/valid-jobs.ts';

const EXAMPLE = resolve(import.meta.dirname, '../../manifests/examples/hospitals.yaml');

let cp: ControlPlane;
beforeAll(async () => {
  // No controllers: validation is the API server's alone.
  cp = await ControlPlane.start({ crds: true, controllers: false });
});
afterAll(async () => {
  await cp?.stop();
});

const show = (r: KubectlResult) => `exit ${r.code}\n${r.stderr}${r.stdout}`;
/** `field` named as a whole: `spec.sites[1]` is not `spec.sites[1].name`, nor `spec.rounds` `spec.roundsX`. */
const naming = (field: string) => new RegExp(`(^|[^\\w.\\]])${field.replace(/[.[\]*]/g, '\\$&')}($|[^\\w.[])`, 'm');

describe.concurrent('kubectl apply refuses each invalid FederatedJob, naming the field', () => {
  it.each(INVALID_JOBS.map((j) => [j.name, j] as const))('%s', async (_name, j) => {
    const r = await cp.kubectl(['apply', '--server-side=false', '-f', '-'], { input: JSON.stringify(j.job) });
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr, show(r)).toMatch(naming(j.field));
  });
});

describe('valid FederatedJobs', () => {
  it('the example is created, listed by its short name, and its status shows in the printer columns', async () => {
    await cp.kubectlOk(['apply', '--server-side=false', '-f', EXAMPLE]);
    const listed = await cp.kubectlOk(['get', 'fj']);
    expect(listed.split('\n')[0]!.split(/\s+/)).toEqual(['NAME', 'PHASE', 'ROUND', 'ACCURACY', 'SITES', 'AGE']);
    expect(listed).toMatch(/^hospitals\s/m);
    await cp.kubectlOk(['get', 'consort']); // the category

    const status = { phase: 'Running', round: 3, accuracy: 0.81, sitesReady: '5/5', sites: [{ name: 'st-mary', state: 'Running' }] };
    await cp.kubectlOk(['patch', 'fj', 'hospitals', '--subresource=status', '--type=merge', '-p', JSON.stringify({ status })]);
    expect(await cp.kubectlOk(['get', 'fj', 'hospitals', '--no-headers'])).toMatch(/^hospitals\s+Running\s+3\s+0\.81\s+5\/5\s+\S+$/m);
    const bad = await cp.kubectl(['patch', 'fj', 'hospitals', '--subresource=status', '--type=merge', '-p', '{"status":{"phase":"Done"}}']);
    expect(bad.code, show(bad)).not.toBe(0);
    expect(bad.stderr).toMatch(naming('status.phase'));

    // What the API server stored (its defaults applied) reads back as the same job in zod.
    const stored = JSON.parse(await cp.kubectlOk(['get', 'fj', 'hospitals', '-o', 'json']));
    expect(FederatedJob.parse(stored).spec).toEqual(FederatedJob.parse(parse(readFileSync(EXAMPLE, 'utf8'))).spec);
    expect(stored.spec.training).toEqual({ epochs: 3, batchSize: 32, optimizer: 'sgd', learningRate: 0.1, backend: 'auto' });
  });

  it('jobs that set every field of every union variant are accepted, with the defaults zod gives', async () => {
    const list = { apiVersion: 'v1', kind: 'List', items: VALID_JOBS };
    const r = await cp.kubectl(['apply', '--server-side=false', '--dry-run=server', '-o', 'json', '-f', '-'], { input: JSON.stringify(list) });
    expect(r.code, show(r)).toBe(0);
    const items = (JSON.parse(r.stdout) as { items: unknown[] }).items;
    expect(items).toHaveLength(VALID_JOBS.length);
    items.forEach((stored, i) => {
      expect(FederatedJob.parse(stored).spec, VALID_JOBS[i]!.metadata.name).toEqual(FederatedJob.parse(VALID_JOBS[i]).spec);
    });
  });
});

describe('a created job', () => {
  it('keeps its spec: an edit is refused naming the field, but suspend, metadata and the same spec again go through', async () => {
    const job = parse(readFileSync(EXAMPLE, 'utf8')) as { metadata: Record<string, unknown>; spec: Record<string, unknown> };
    job.metadata = { ...job.metadata, name: 'immutable' };
    await cp.kubectlOk(['apply', '--server-side=false', '-f', '-'], { input: JSON.stringify(job) });
    // The same manifest again changes nothing, and says so (a default the server put into each
    // site used to make kubectl send the whole list again: "configured", every time).
    expect(await cp.kubectlOk(['apply', '--server-side=false', '-f', '-'], { input: JSON.stringify(job) })).toMatch(
      /federatedjob.consort.dev\/immutable unchanged/,
    );
    const sites = job.spec.sites as Array<Record<string, unknown>>;
    const edits: Array<[field: string, spec: Record<string, unknown>]> = [
      ['spec.rounds', { ...job.spec, rounds: 99 }],
      ['spec.sites', { ...job.spec, sites: [...sites, { ...sites[0], name: 'added' }] }],
      ['spec.seed', { ...job.spec, seed: 7 }],
      ['spec.training', { ...job.spec, training: { epochs: 9 } }],
      ['spec.worker', { ...job.spec, worker: { image: 'elsewhere/consort:2' } }],
      // No default: added to a job that had none.
      ['spec.classes', { ...job.spec, classes: ['no', 'yes'] }],
    ];
    for (const [field, spec] of edits) {
      const r = await cp.kubectl(['apply', '--server-side=false', '-f', '-'], { input: JSON.stringify({ ...job, spec }) });
      expect(r.code, `${field}: ${show(r)}`).not.toBe(0);
      expect(r.stderr, show(r)).toMatch(naming(field));
      expect(r.stderr, show(r)).toContain('only spec.suspend can');
    }
    // Suspending and resuming, a label, and the manifest as it was: accepted.
    await cp.kubectlOk(['patch', 'fj', 'immutable', '--type=merge', '-p', '{"spec":{"suspend":true},"metadata":{"labels":{"team":"cardio"}}}']);
    await cp.kubectlOk(['patch', 'fj', 'immutable', '--type=merge', '-p', '{"spec":{"suspend":false}}']);
    await cp.kubectlOk(['apply', '--server-side=false', '-f', '-'], { input: JSON.stringify(job) });
    const stored = JSON.parse(await cp.kubectlOk(['get', 'fj', 'immutable', '-o', 'json']));
    expect(stored.spec.rounds).toBe(job.spec.rounds);
    expect(stored.spec.sites).toHaveLength(sites.length);
    expect(stored.spec.classes).toBeUndefined();
    expect(stored.metadata.generation).toBe(3);
  });
});

describe('kubectl explain', () => {
  it('prints the descriptions of the zod schema, the flattened unions included', async () => {
    const strategy = await cp.kubectlOk(['explain', 'federatedjob.spec.strategy']);
    expect(strategy).toContain('How the coordinator turns site updates into the next global model.');
    expect(strategy).toMatch(/mu\s+<number>\s+fedprox: Weight of the proximal term/);
    const data = await cp.kubectlOk(['explain', 'fj.spec.sites.data.generator']);
    expect(data).toContain("hospital: Vitals and lab values of a hospital's patients");
  });
});
