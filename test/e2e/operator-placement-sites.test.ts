// Where the round loop and the sites run: spec.coordinator.placement: pod runs the loop in a
// coordinator Pod of its own (`consort coordinator`) and ends in the same weights as in the
// operator; remote sites are assigned over NATS to their own site-mode operator, which checks its
// local policy: a refusal reaches the job's conditions with the site and the reason, an accepting
// site trains.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Objm } from '@nats-io/obj';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { connectAs } from '../../cli/nats/connect.ts';
import { OPERATOR_USER, siteAgentPermissions } from '../../core/protocol/permissions.ts';
import { buckets, jobKey } from '../../core/protocol/subjects.ts';
import { decodeSafetensors } from '../../core/tensor/safetensors.ts';
import { mintUserCreds, parseAccountSigner } from '../../operator/nats/trust.ts';
import { ConsortCluster } from '../helpers/consort-cluster.ts';
import { HOSPITALS } from '../helpers/federation.ts';
import { ManagedProcess, waitUntil } from '../helpers/managed-process.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';
import { REPO_ROOT } from '../helpers/consort-cli.ts';

/** The bytes of a typed array itself (decoded tensors may be views into a larger buffer). */
const bytesOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

const CLI = join(import.meta.dirname, '../../cli/consort.ts');

function hospitals(name: string, mutate: (spec: Record<string, unknown>) => void = () => {}): string {
  const doc = parse(readFileSync(HOSPITALS, 'utf8')) as { metadata: { name: string }; spec: Record<string, unknown> };
  doc.metadata.name = name;
  doc.spec.rounds = 6;
  mutate(doc.spec);
  return stringify(doc);
}

describe('coordinator placement and site mode', () => {
  const tmp = useTmpDirs();
  let cluster: ConsortCluster;
  const agents: ManagedProcess[] = [];

  beforeAll(async () => {
    // Lakeside's agent authenticates as the ServiceAccount of manifests/site-agent/ (a token user
    // of that name: RBAC binds by user name), so it runs with exactly the Role shipped there.
    cluster = await ConsortCluster.start({
      users: {
        'lakeside-agent': {
          user: 'system:serviceaccount:site-lakeside:consort-site-agent',
          groups: ['system:serviceaccounts', 'system:serviceaccounts:site-lakeside', 'system:authenticated'],
        },
      },
    });
    await cluster.startOperator();
  }, 180_000);
  afterAll(async () => {
    for (const a of agents) await a.stop();
    await cluster?.stop();
  });

  async function weights(name: string): Promise<Float32Array> {
    const nc = await connectAs(cluster.nats.url, cluster.operatorCreds, OPERATOR_USER);
    try {
      const bytes = await (await new Objm(nc).open(buckets(jobKey({ name, namespace: 'default' })).models)).getBlob('global/final');
      return decodeSafetensors(bytes!).values;
    } finally {
      await nc.close();
    }
  }

  it('spec.coordinator.placement: pod runs the same job to the same final model', async () => {
    for (const input of [hospitals('in-operator'), hospitals('in-pod', (s) => Object.assign(s, { coordinator: { placement: 'pod' } }))]) {
      const r = await cluster.kubectl(['apply', '-f', '-'], { input });
      expect(r.code, r.stderr).toBe(0);
    }
    // The loop of "in-pod" runs in its own Pod.
    await expect
      .poll(async () => (await cluster.kubectl(['get', 'pod', 'in-pod-coordinator', '-o', 'name'])).stdout.trim(), { timeout: 30_000 })
      .toBe('pod/in-pod-coordinator');
    for (const name of ['in-operator', 'in-pod']) {
      const s = await cluster.waitForJob(name, (st) => st.phase === 'Succeeded' || st.phase === 'Failed', { timeoutMs: 240_000 });
      expect(s.phase, `${name}: ${JSON.stringify(s)}\n${cluster.runner.logs('default', 'in-pod-coordinator').slice(-3000)}`).toBe('Succeeded');
      expect(s.round).toBe(6);
    }
    const [a, b] = [await weights('in-operator'), await weights('in-pod')];
    expect(bytesOf(b).equals(bytesOf(a))).toBe(true);
    const podStatus = (await cluster.job('in-pod'))!.status!;
    const operatorStatus = (await cluster.job('in-operator'))!.status!;
    expect(podStatus.accuracy).toBe(operatorStatus.accuracy);
    // Both statuses name the weights' hash, the one `consort run` prints (the objects' own differ: the job's name is in their metadata).
    const weightsSha = createHash('sha256').update(bytesOf(a)).digest('hex');
    expect(podStatus.model).toMatchObject({ weightsSha256: weightsSha });
    expect(operatorStatus.model).toMatchObject({ weightsSha256: weightsSha });
  });

  it('a job whose sites run apart on CSV data without spec.classes fails at once, saying why (each site sees only its own labels)', async () => {
    const input = hospitals('no-classes', (s) => {
      (s.sites as Array<{ data: unknown }>)[0]!.data = { type: 'csv', train: 'train.csv', labelColumn: 'sepsis' };
    });
    const r = await cluster.kubectl(['apply', '-f', '-'], { input });
    expect(r.code, r.stderr).toBe(0);
    const s = await cluster.waitForJob('no-classes', (st) => st.phase === 'Failed' || st.phase === 'Running' || st.phase === 'Succeeded', {
      timeoutMs: 60_000,
    });
    expect(s.phase, JSON.stringify(s)).toBe('Failed');
    const failed = (s.conditions as Array<{ type: string; reason?: string; message?: string }> | undefined)?.find((c) => c.type === 'Failed');
    expect(failed).toMatchObject({ reason: 'InvalidSpec' });
    expect(failed?.message).toContain('spec.classes: required when sites run apart with CSV or image data (sites st-mary)');
  });

  it('a job whose worker stops on bad input (a data file it cannot find) fails, naming the site and the problem, instead of crash-looping', async () => {
    // As JSON: kubectl reads YAML 1.1, where a plain no and yes are booleans.
    const input = JSON.stringify(
      parse(
        hospitals('no-data', (s) => {
          s.classes = ['no', 'yes'];
          (s.sites as Array<{ data: unknown }>)[0]!.data = { type: 'csv', train: 'no-such-file.csv', labelColumn: 'sepsis' };
        }),
      ),
    );
    const r = await cluster.kubectl(['apply', '-f', '-'], { input });
    expect(r.code, r.stderr).toBe(0);
    const s = await cluster.waitForJob('no-data', (st) => st.phase === 'Failed' || st.phase === 'Succeeded', { timeoutMs: 120_000 });
    expect(s.phase, JSON.stringify(s)).toBe('Failed');
    const failed = (s.conditions as Array<{ type: string; reason?: string; message?: string }> | undefined)?.find((c) => c.type === 'Failed');
    expect(failed).toMatchObject({ reason: 'WorkerInvalidInput' });
    expect(failed?.message).toMatch(
      /^site st-mary: its worker no-data-site-st-mary stops on bad input \(exit status 2\), which restarting cannot mend: .*no-such-file\.csv.*\[CONSORT_W_DATA_FILE\]/,
    );
    // Per site: st-mary failed, saying why; the others were stopped with the job, none is ready.
    const sites = s.sites as Array<{ name: string; state: string; message?: string }>;
    expect(sites.find((x) => x.name === 'st-mary')).toMatchObject({ state: 'Failed', message: failed?.message });
    expect(sites.filter((x) => x.name !== 'st-mary').map((x) => x.state)).toEqual(sites.slice(1).map(() => 'Stopped'));
    expect(s.sitesReady).toBe(`0/${sites.length}`);
  });

  it('site mode: a site whose policy refuses the model leaves a condition naming it and why; a site that accepts trains', async () => {
    const dir = tmp('site-mode');
    const signer = parseAccountSigner(readFileSync(cluster.accountKey, 'utf8'));
    // Two hospitals run their own agents, each with its own NATS user and namespace (its "cluster").
    const policies: Record<string, unknown> = {
      lakeside: { allowedModels: ['mlp', 'logistic'] },
      hillcrest: { allowedModels: ['cnn'] },
    };
    const startAgent = async (site: string) => {
      const ns = `site-${site}`;
      await cluster.cp.kubectlOk(['create', 'namespace', ns]);
      if (site === 'lakeside') {
        // The shipped agent's ServiceAccount, Role and RoleBinding, in this site's namespace.
        const shipped = parseAllDocuments(readFileSync(join(REPO_ROOT, 'manifests/site-agent/site-agent.yaml'), 'utf8')).map(
          (d) => d.toJS() as { kind: string },
        );
        const rbac = shipped.filter((d) => ['ServiceAccount', 'Role', 'RoleBinding'].includes(d.kind));
        expect(rbac).toHaveLength(3);
        const here = (d: unknown) =>
          stringify(d).replaceAll('consort-site', ns).replaceAll(`${ns}-agent`, 'consort-site-agent').replaceAll(`${ns}-policy`, 'consort-site-policy');
        await cluster.cp.kubectlOk(['apply', '-f', '-'], { input: rbac.map(here).join('---\n') });
        // The rest (the policy ConfigMap, the Deployment) is what the API server accepts.
        await cluster.cp.kubectlOk(['apply', '--dry-run=server', '-f', '-'], { input: shipped.map(here).join('---\n') });
      }
      await waitUntil('default ServiceAccount', async () => (await cluster.kubectl(['get', 'sa', 'default', '-n', ns])).code === 0, { timeoutMs: 30_000 });
      const creds = join(dir, `${site}.creds`);
      writeFileSync(creds, (await mintUserCreds(signer, { name: site, permissions: siteAgentPermissions(site) })).creds, { mode: 0o600 });
      const policy = join(dir, `${site}-policy.yaml`);
      writeFileSync(policy, stringify(policies[site]));
      const agent = new ManagedProcess(`agent-${site}`, process.execPath, [
        CLI,
        'operator',
        '--mode',
        'site',
        '--site',
        site,
        '--kubeconfig',
        site === 'lakeside' ? cluster.cp.kubeconfigFor('lakeside-agent') : cluster.cp.kubeconfig,
        '--namespace',
        ns,
        '--nats',
        cluster.nats.url,
        '--nats-creds',
        creds,
        '--policy',
        policy,
      ]);
      agents.push(agent);
      await waitUntil(`site agent ${site}`, async () => /listening on/.test(agent.log()), {
        timeoutMs: 30_000,
        gone: () => agent.exited,
        describe: () => agent.log(),
      });
    };
    // Hillcrest's agent is up before the job; lakeside's only after the operator found no one to
    // ask (it is asked again every 5 s: a reconcile in between used to cancel that, for good).
    await startAgent('hillcrest');
    const input = hospitals('multi', (spec) => {
      for (const s of spec.sites as { name: string; remote?: boolean }[]) if (s.name === 'lakeside' || s.name === 'hillcrest') s.remote = true;
      spec.sampling = { minSites: 4 };
      // The rounds start once every site that has not refused is here: the refused one is not
      // waited for (it used to hold the job for the whole join timeout, longer than this test).
      spec.coordinator = { joinTimeoutSeconds: 600 };
    });
    const r = await cluster.kubectl(['apply', '-f', '-'], { input });
    expect(r.code, r.stderr).toBe(0);
    await waitUntil(
      "the operator's first unanswered assignment to lakeside",
      async () => /multi: site lakeside's agent does not answer its assignment/.test(cluster.operators[0]!.log(1_000_000)),
      {
        timeoutMs: 60_000,
      },
    );
    await startAgent('lakeside');
    const refused = await cluster.waitForJob('multi', (s) =>
      ((s.conditions as { type: string; status: string }[] | undefined) ?? []).some((c) => c.type === 'SitesAccepted' && c.status === 'False'),
    );
    const cond = (refused.conditions as { type: string; reason: string; message: string }[]).find((c) => c.type === 'SitesAccepted')!;
    expect(cond.reason).toBe('SiteRefused');
    expect(cond.message).toMatch(/hillcrest: model type "mlp" is not allowed.*CONSORT_P_MODEL/);
    // The accepting site's worker runs in its own namespace, not the job's.
    await expect
      .poll(async () => (await cluster.kubectl(['get', 'pods', '-n', 'site-lakeside', '-o', 'name'])).stdout.trim(), { timeout: 30_000 })
      .toBe('pod/multi-site-lakeside');
    expect((await cluster.kubectl(['get', 'pods', '-n', 'site-hillcrest', '-o', 'name'])).stdout.trim()).toBe('');
    const done = await cluster.waitForJob('multi', (s) => s.phase === 'Succeeded' || s.phase === 'Failed', { timeoutMs: 240_000 });
    expect(done.phase, JSON.stringify(done)).toBe('Succeeded');
    const sites = done.sites as { name: string; state: string; lastRound?: number; message?: string }[];
    expect(sites.find((s) => s.name === 'lakeside')?.lastRound).toBe(6);
    expect(sites.find((s) => s.name === 'hillcrest')).toMatchObject({ state: 'Refused' });
    expect(sites.find((s) => s.name === 'hillcrest')?.lastRound).toBeUndefined();
    expect((await cluster.kubectl(['describe', 'fj', 'multi'])).stdout).toMatch(/Warning\s+SiteRefused\s+.*hillcrest/);
    // The job is over at lakeside: its agent removes the worker Pod, the credentials Secret and the
    // ConfigMap it made there (they stayed in the hospital's cluster for good).
    await expect
      .poll(
        async () => (await cluster.kubectl(['get', 'pods,secrets,configmaps', '-n', 'site-lakeside', '-l', 'consort.dev/job-uid', '-o', 'name'])).stdout.trim(),
        { timeout: 40_000, interval: 500 },
      )
      .toBe('');

    // The same with the round loop in a Pod of its own: the operator tells it who refused (it
    // used to wait out its join timeout, here 600 s, for hillcrest).
    const inPod = hospitals('multi-pod', (spec) => {
      for (const s of spec.sites as { name: string; remote?: boolean }[]) if (s.name === 'lakeside' || s.name === 'hillcrest') s.remote = true;
      spec.sampling = { minSites: 4 };
      spec.coordinator = { placement: 'pod', joinTimeoutSeconds: 600 };
    });
    const p = await cluster.kubectl(['apply', '-f', '-'], { input: inPod });
    expect(p.code, p.stderr).toBe(0);
    const podDone = await cluster.waitForJob('multi-pod', (s) => s.phase === 'Succeeded' || s.phase === 'Failed', { timeoutMs: 240_000 });
    expect(podDone.phase, JSON.stringify(podDone)).toBe('Succeeded');
    expect((podDone.sites as { name: string; state: string }[]).find((s) => s.name === 'hillcrest')).toMatchObject({ state: 'Refused' });
    expect(cluster.podLogs('multi-pod', 100_000)).toMatch(
      /not waiting for sites whose own operator refused the job: hillcrest \(model type "mlp" is not allowed/,
    );
  });
});
