// The test harness's kubelet stand-in against a real control plane: Pods scheduled by
// kube-scheduler onto its node run as local processes with their env and volumes, report their
// status, restart as their policy says, die when deleted, and survive an API server restart.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { V1Container, V1PodSpec } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isNotFound, type KubeObject } from '../../operator/kube/client.ts';
import { ControlPlane } from '../helpers/control-plane.ts';
import { type Pod, PodRunner } from '../helpers/pod-runner.ts';

const NODE = process.execPath;
const NS = 'default';
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

function podOf(name: string, container: Partial<V1Container>, spec: Partial<V1PodSpec> = {}): Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: NS },
    spec: { restartPolicy: 'Never', terminationGracePeriodSeconds: 2, containers: [{ name: 'main', image: 'test', ...container }], ...spec },
  };
}
const phaseIs =
  (...phases: string[]) =>
  (p: Pod | undefined) =>
    phases.includes(p?.status?.phase ?? '');
const main = (p: Pod | undefined) => p?.status?.containerStatuses?.[0];

describe('PodRunner', () => {
  let cp: ControlPlane | undefined;
  let runner: PodRunner;
  let dir: string;
  const lines: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'consort-pod-runner-'));
    cp = await ControlPlane.start({ crds: false });
    runner = await PodRunner.start({
      kubeconfig: cp.kubeconfig,
      images: (image) => (image === 'test' ? [] : undefined),
      claims: { 'site-data': join(dir, 'claim') },
      restartBackoffMs: { initial: 200, max: 1000 },
      log: (line) => lines.push(line),
    });
  });
  afterAll(async () => {
    if (process.env.POD_RUNNER_LOG) (await import('node:fs')).writeFileSync(process.env.POD_RUNNER_LOG, lines.join('\n'));
    await runner?.stop();
    await cp?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const create = (kind: 'pods' | 'secrets' | 'configmaps' | 'persistentvolumeclaims', body: unknown) =>
    runner.client.create(`/api/v1/namespaces/${NS}/${kind}`, body);
  const remove = (kind: 'pods' | 'persistentvolumeclaims', name: string) => runner.client.delete(`/api/v1/namespaces/${NS}/${kind}/${name}`);
  const gone = async (path: string) => {
    try {
      await runner.client.get(path);
      return false;
    } catch (err) {
      return isNotFound(err);
    }
  };

  it('registers a Ready node with GPUs to schedule onto, and renews its lease', async () => {
    const node = await runner.client.get<KubeObject & { status: { allocatable: Record<string, string>; conditions: { type: string; status: string }[] } }>(
      `/api/v1/nodes/${runner.nodeName}`,
    );
    expect(node.metadata.labels?.['kubernetes.io/hostname']).toBe(runner.nodeName);
    expect(node.status.allocatable['nvidia.com/gpu']).toBe('8');
    expect(node.status.conditions.find((c) => c.type === 'Ready')?.status).toBe('True');
    const lease = await runner.client.get<KubeObject & { spec: { renewTime: string } }>(
      `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/${runner.nodeName}`,
    );
    expect(Date.now() - Date.parse(lease.spec.renewTime)).toBeLessThan(15_000);
  });

  it('runs a scheduled Pod with its env, secret and hostPath volumes, and reports Succeeded', async () => {
    const out = join(dir, 'out');
    await create('secrets', { metadata: { name: 'creds' }, stringData: { token: 's3cret', 'key.txt': 'the key' } });
    await create('configmaps', { metadata: { name: 'settings' }, data: { mode: 'fast' } });
    const script = `
      const fs = require('node:fs');
      const sa = process.env.SA_DIR;
      fs.writeFileSync(process.env.SCRATCH + '/x', 'scratch');
      fs.writeFileSync(process.argv.at(-1).slice('--out='.length), JSON.stringify({
        token: process.env.TOKEN, key: fs.readFileSync(process.env.KEY_FILE, 'utf8'), greeting: process.env.GREETING,
        mode: process.env.CFG_mode, cpus: process.env.CPUS, node: process.env.NODE_NAME, ip: process.env.POD_IP,
        ns: fs.readFileSync(sa + '/namespace', 'utf8'), saToken: fs.readFileSync(sa + '/token', 'utf8').length > 0,
        scratch: fs.readFileSync(process.env.SCRATCH + '/x', 'utf8'), cwd: process.cwd(),
      }));
      console.log('done');`;
    await create(
      'pods',
      podOf(
        'env-and-volumes',
        {
          command: [NODE, '-e', script],
          args: ['--', '--out=/out/result.json'],
          workingDir: '/scratch',
          env: [
            { name: 'TOKEN', valueFrom: { secretKeyRef: { name: 'creds', key: 'token' } } },
            { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
            { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
            { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
            { name: 'CPUS', valueFrom: { resourceFieldRef: { resource: 'limits.cpu' } } },
            { name: 'GREETING', value: 'hello $(POD_NAME), $$(POD_NAME)' },
            { name: 'KEY_FILE', value: '/etc/creds/key.txt' },
            { name: 'SCRATCH', value: '/scratch' },
            { name: 'SA_DIR', value: '/var/run/secrets/kubernetes.io/serviceaccount' },
          ],
          envFrom: [{ prefix: 'CFG_', configMapRef: { name: 'settings' } }],
          resources: { limits: { cpu: '2', 'nvidia.com/gpu': '2' } },
          volumeMounts: [
            { name: 'creds', mountPath: '/etc/creds', readOnly: true },
            { name: 'out', mountPath: '/out' },
            { name: 'scratch', mountPath: '/scratch' },
          ],
        },
        {
          volumes: [
            { name: 'creds', secret: { secretName: 'creds' } },
            { name: 'out', hostPath: { path: out, type: 'DirectoryOrCreate' } },
            { name: 'scratch', emptyDir: {} },
          ],
        },
      ),
    );
    const pod = await runner.waitForPod(NS, 'env-and-volumes', phaseIs('Succeeded', 'Failed'));
    expect(pod?.status?.phase, runner.logs(NS, 'env-and-volumes')).toBe('Succeeded');
    expect(pod?.spec.nodeName).toBe(runner.nodeName);
    expect(pod?.status?.podIP).toBe('127.0.0.1');
    expect(main(pod)?.state.terminated).toMatchObject({ exitCode: 0, reason: 'Completed' });
    const result = JSON.parse(readFileSync(join(out, 'result.json'), 'utf8'));
    expect(result).toMatchObject({
      token: 's3cret',
      key: 'the key',
      greeting: 'hello env-and-volumes, $(POD_NAME)',
      mode: 'fast',
      cpus: '2',
      node: runner.nodeName,
      ip: '127.0.0.1',
      ns: NS,
      saToken: true,
      scratch: 'scratch',
    });
    expect(result.cwd).toBe(join(runner.podDir(NS, 'env-and-volumes')!, 'volumes', 'scratch'));
    expect(runner.logs(NS, 'env-and-volumes')).toBe('done\n');
  });

  it('reports a failing command as Failed with its exit code, and a missing executable as StartError', async () => {
    await create(
      'pods',
      podOf('fails', { command: [NODE, '-e', 'console.error("boom"); process.exit(3)'], terminationMessagePolicy: 'FallbackToLogsOnError' }),
    );
    await create('pods', podOf('no-such-command', { command: ['/nonexistent/consort-worker'] }));
    const failed = await runner.waitForPod(NS, 'fails', phaseIs('Succeeded', 'Failed'));
    expect(failed?.status?.phase).toBe('Failed');
    expect(main(failed)?.state.terminated).toMatchObject({ exitCode: 3, reason: 'Error', message: 'boom' });
    const missing = await runner.waitForPod(NS, 'no-such-command', phaseIs('Succeeded', 'Failed'));
    expect(missing?.status?.phase).toBe('Failed');
    expect(main(missing)?.state.terminated).toMatchObject({ exitCode: 128, reason: 'StartError' });
  });

  it('runs the consort image and a `consort` command as the repository CLI', async () => {
    await create('pods', podOf('consort-help', { image: 'ghcr.io/consort-dev/consort:0.1.0', command: ['consort', '--help'] }));
    const pod = await runner.waitForPod(NS, 'consort-help', phaseIs('Succeeded', 'Failed'));
    expect(pod?.status?.phase, runner.logs(NS, 'consort-help')).toBe('Succeeded');
    expect(runner.logs(NS, 'consort-help')).toContain('Usage: consort');
  });

  it('restarts a failed container under restartPolicy OnFailure until it succeeds', async () => {
    const counter = join(dir, 'counter');
    mkdirSync(counter);
    const script = `
      const fs = require('node:fs'); const f = '/state/runs';
      const n = (fs.existsSync(f) ? Number(fs.readFileSync(f, 'utf8')) : 0) + 1;
      fs.writeFileSync(f, String(n)); console.log('run ' + n); process.exit(n < 2 ? 1 : 0);`;
    await create(
      'pods',
      podOf(
        'on-failure',
        { command: [NODE, '-e', script], volumeMounts: [{ name: 'state', mountPath: '/state' }] },
        { restartPolicy: 'OnFailure', volumes: [{ name: 'state', hostPath: { path: counter } }] },
      ),
    );
    const pod = await runner.waitForPod(NS, 'on-failure', phaseIs('Succeeded', 'Failed'));
    expect(pod?.status?.phase).toBe('Succeeded');
    expect(main(pod)?.restartCount).toBe(1);
    expect(main(pod)?.lastState.terminated?.exitCode).toBe(1);
    expect(runner.logs(NS, 'on-failure')).toBe('run 1\nrun 2\n');
  });

  it('runs init containers first, then every container; and ends a Pod past its activeDeadlineSeconds', async () => {
    const shared = [{ name: 'shared', mountPath: '/shared' }];
    const write = 'require("node:fs").writeFileSync(process.argv[1], "prepared")';
    const read = 'console.log("a:" + require("node:fs").readFileSync(process.argv[1], "utf8"))';
    await create(
      'pods',
      podOf(
        'multi',
        {},
        {
          initContainers: [{ name: 'init', image: 'test', command: [NODE, '-e', write, '/shared/ready'], volumeMounts: shared }],
          containers: [
            { name: 'a', image: 'test', command: [NODE, '-e', read, '/shared/ready'], volumeMounts: shared },
            { name: 'b', image: 'test', command: [NODE, '-e', 'console.log("b")'] },
          ],
          volumes: [{ name: 'shared', emptyDir: {} }],
        },
      ),
    );
    await create(
      'pods',
      podOf('deadline', { command: [NODE, '-e', 'setInterval(() => {}, 1000)'] }, { activeDeadlineSeconds: 1, terminationGracePeriodSeconds: 1 }),
    );
    const multi = await runner.waitForPod(NS, 'multi', phaseIs('Succeeded', 'Failed'));
    expect(multi?.status?.phase, runner.logs(NS, 'multi')).toBe('Succeeded');
    expect(multi?.status?.initContainerStatuses?.[0]?.state.terminated?.exitCode).toBe(0);
    expect(multi?.status?.containerStatuses?.map((c) => c.state.terminated?.reason)).toEqual(['Completed', 'Completed']);
    expect(runner.logs(NS, 'multi', 'a')).toBe('a:prepared\n');
    expect(runner.logs(NS, 'multi')).toContain('==> b <==\nb\n');
    const late = await runner.waitForPod(NS, 'deadline', phaseIs('Succeeded', 'Failed'));
    expect(late?.status).toMatchObject({ phase: 'Failed', reason: 'DeadlineExceeded' });
  });

  it('waits with CreateContainerConfigError for a missing Secret key, and starts once it exists', async () => {
    await create(
      'pods',
      podOf('late-secret', {
        command: [NODE, '-e', 'console.log(process.env.PASSWORD)'],
        env: [{ name: 'PASSWORD', valueFrom: { secretKeyRef: { name: 'late', key: 'password' } } }],
      }),
    );
    const waiting = await runner.waitForPod(NS, 'late-secret', (p) => main(p)?.state.waiting?.reason === 'CreateContainerConfigError');
    expect(waiting?.status?.phase).toBe('Pending');
    expect(main(waiting)?.state.waiting?.message).toContain('"late" not found');
    await create('secrets', { metadata: { name: 'late' }, stringData: { password: 'finally' } });
    const pod = await runner.waitForPod(NS, 'late-secret', phaseIs('Succeeded', 'Failed'));
    expect(pod?.status?.phase).toBe('Succeeded');
    expect(runner.logs(NS, 'late-secret')).toBe('finally\n');
  });

  it('binds a claim named in `claims`, so its Pod schedules and writes into the local folder; the claim can be deleted', async () => {
    await create('persistentvolumeclaims', {
      metadata: { name: 'site-data' },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
    });
    await create(
      'pods',
      podOf(
        'uses-claim',
        {
          command: [NODE, '-e', 'require("node:fs").writeFileSync(process.argv[1], "from the pod")', '/data/written.txt'],
          volumeMounts: [{ name: 'data', mountPath: '/data' }],
        },
        { volumes: [{ name: 'data', persistentVolumeClaim: { claimName: 'site-data' } }] },
      ),
    );
    const pod = await runner.waitForPod(NS, 'uses-claim', phaseIs('Succeeded', 'Failed'));
    expect(pod?.status?.phase, runner.logs(NS, 'uses-claim')).toBe('Succeeded');
    expect(readFileSync(join(dir, 'claim', 'written.txt'), 'utf8')).toBe('from the pod');
    await remove('pods', 'uses-claim');
    await remove('persistentvolumeclaims', 'site-data');
    const deadline = Date.now() + 15_000;
    while (!(await gone(`/api/v1/namespaces/${NS}/persistentvolumeclaims/site-data`)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(await gone(`/api/v1/namespaces/${NS}/persistentvolumeclaims/site-data`)).toBe(true);
    const volumes = () => runner.client.get<{ items: unknown[] }>('/api/v1/persistentvolumes', { labelSelector: 'consort.dev/pod-runner' });
    while ((await volumes()).items.length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect((await volumes()).items).toEqual([]);
  });

  it('restarts a crashed container under restartPolicy Always, and a deleted Pod is killed (SIGKILL after its grace period) and removed', async () => {
    await create(
      'pods',
      podOf(
        'long-running',
        { command: [NODE, '-e', 'process.on("SIGTERM", () => console.log("ignoring SIGTERM")); setInterval(() => {}, 1000); console.log("up")'] },
        {
          restartPolicy: 'Always',
          terminationGracePeriodSeconds: 1,
        },
      ),
    );
    await runner.waitForPod(NS, 'long-running', (p) => main(p)?.state.running !== undefined && main(p)?.ready === true);
    // Running means the process was spawned, not that it has printed yet: under load, killing it
    // before its first line would leave one "up" in the log where the test counts two.
    await runner.waitForPod(NS, 'long-running', () => (runner.logs(NS, 'long-running').match(/up/g) ?? []).length === 1, 10_000);
    const [first] = runner.pids(NS, 'long-running');
    expect(first).toBeDefined();
    expect(runner.killPodProcess(NS, 'long-running')).toBe(true);
    const restarted = await runner.waitForPod(NS, 'long-running', (p) => main(p)?.restartCount === 1 && main(p)?.state.running !== undefined);
    expect(restarted?.status?.phase).toBe('Running');
    expect(main(restarted)?.lastState.terminated).toMatchObject({ exitCode: 137, signal: 9 });
    const [second] = runner.pids(NS, 'long-running');
    expect(second).not.toBe(first);
    expect(alive(first!)).toBe(false);
    // Running means the process has started; give it a moment to install its SIGTERM handler.
    await runner.waitForPod(NS, 'long-running', () => (runner.logs(NS, 'long-running').match(/up/g) ?? []).length === 2, 10_000);
    const t0 = Date.now();
    await remove('pods', 'long-running');
    await runner.waitForPod(NS, 'long-running', (p) => p === undefined, 15_000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(alive(second!)).toBe(false);
    expect(runner.logs(NS, 'long-running')).toContain('ignoring SIGTERM');
  });

  it('carries on through an API server restart: running Pods keep running, new Pods run, deletions are seen', async () => {
    await create(
      'pods',
      podOf('survivor', { command: [NODE, '-e', 'process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000)'] }, { restartPolicy: 'Always' }),
    );
    await runner.waitForPod(NS, 'survivor', phaseIs('Running'));
    const [pid] = runner.pids(NS, 'survivor');
    await cp!.restartApiServer({ downMs: 500 });
    await create('pods', podOf('after-restart', { command: [NODE, '-e', 'console.log("after")'] }));
    const after = await runner.waitForPod(NS, 'after-restart', phaseIs('Succeeded', 'Failed'));
    expect(after?.status?.phase).toBe('Succeeded');
    expect(runner.pids(NS, 'survivor')).toEqual([pid]);
    await remove('pods', 'survivor');
    await runner.waitForPod(NS, 'survivor', (p) => p === undefined, 15_000);
    expect(alive(pid!)).toBe(false);
  });

  it('kills every process it started on stop() (twice is fine); started again, it finishes what changed while it was down', async () => {
    const opts = { kubeconfig: cp!.kubeconfig, nodeName: 'consort-other', images: () => [] };
    let other = await PodRunner.start(opts);
    try {
      // Bound by name, past the scheduler.
      const sleeper = { command: [NODE, '-e', 'setInterval(() => {}, 1000)'] };
      await create('pods', podOf('on-other', sleeper, { nodeName: 'consort-other' }));
      await create('pods', podOf('deleted-while-down', sleeper, { nodeName: 'consort-other', restartPolicy: 'Always' }));
      await other.waitForPod(NS, 'on-other', phaseIs('Running'));
      await other.waitForPod(NS, 'deleted-while-down', phaseIs('Running'));
      const pids = [...other.pids(NS, 'on-other'), ...other.pids(NS, 'deleted-while-down')];
      expect(pids).toHaveLength(2);
      const workDir = other.workDir;
      await other.stop();
      await other.stop();
      expect(pids.filter(alive)).toEqual([]);
      expect(existsSync(workDir)).toBe(false);
      // With nobody to finish it, a graceful deletion waits.
      await remove('pods', 'deleted-while-down');
      expect((await runner.client.get(`/api/v1/namespaces/${NS}/pods/deleted-while-down`)).metadata.deletionTimestamp).toBeDefined();

      other = await PodRunner.start(opts);
      await other.waitForPod(NS, 'deleted-while-down', (p) => p === undefined);
      const lost = await other.waitForPod(NS, 'on-other', phaseIs('Succeeded', 'Failed'));
      expect(lost?.status?.phase).toBe('Failed');
      expect(main(lost)?.state.terminated).toMatchObject({ exitCode: 137, reason: 'ContainerStatusUnknown' });
      expect(other.pids(NS, 'on-other')).toEqual([]);
      expect(other.pids(NS, 'deleted-while-down')).toEqual([]);
    } finally {
      await other.stop();
    }
  });
});
