// A whole Consort cluster on loopback, as the tests and `make cluster` use it: the control plane
// (etcd, kube-apiserver, controller manager, scheduler) with the CRDs and the operator's RBAC, a
// nats-server that trusts a fresh Consort account (JWT auth), the pod runner that plays the
// kubelet, and operator processes started on demand (`consort operator`, authenticated as its
// ServiceAccount, so that the RBAC it ships is what it runs with).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { NatsServer } from '../../cli/nats/server.ts';
import { createNatsTrust, mintOperatorCreds, renderAccountSigner, renderClusterNatsConfig } from '../../operator/nats/trust.ts';
import { ControlPlane, type ControlPlaneOptions, OPERATOR_NAMESPACE } from './control-plane.ts';
import { ManagedProcess, waitUntil } from './managed-process.ts';
import { PodRunner } from './pod-runner.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../..');
const CLI = join(REPO_ROOT, 'cli/consort.ts');

export interface ConsortClusterOptions {
  log?: (line: string) => void;
  /** PVC claim name → local folder, for sites' data volumes. */
  claims?: Record<string, string>;
  /** Extra token users of the API server (ControlPlaneOptions.users). */
  users?: ControlPlaneOptions['users'];
}

export interface OperatorProcessOptions {
  identity?: string;
  leaderElect?: boolean;
  /** Extra flags of `consort operator`. */
  args?: string[];
  /** Run as admin instead of the operator's ServiceAccount (never in the tests that prove RBAC). */
  asAdmin?: boolean;
  /** Node's own flags, before the script (e.g. the V8 heap settings of manifests/operator/deployment.yaml). */
  nodeArgs?: string[];
}

export class ConsortCluster {
  readonly dir: string;
  readonly cp: ControlPlane;
  readonly nats: NatsServer;
  readonly runner: PodRunner;
  readonly operatorCreds: string;
  readonly accountKey: string;
  readonly operators: ManagedProcess[] = [];
  readonly #log: (line: string) => void;

  private constructor(dir: string, cp: ControlPlane, nats: NatsServer, runner: PodRunner, files: { creds: string; key: string }, log: (line: string) => void) {
    this.dir = dir;
    this.cp = cp;
    this.nats = nats;
    this.runner = runner;
    this.operatorCreds = files.creds;
    this.accountKey = files.key;
    this.#log = log;
  }

  static async start(opts: ConsortClusterOptions = {}): Promise<ConsortCluster> {
    const log = opts.log ?? (() => {});
    const dir = mkdtempSync(join(tmpdir(), 'consort-cluster-'));
    let cp: ControlPlane | undefined;
    let nats: NatsServer | undefined;
    let runner: PodRunner | undefined;
    try {
      cp = await ControlPlane.start({ crds: true, controllers: true, log, ...(opts.users ? { users: opts.users } : {}) });
      await cp.kubectlOk(['apply', '-f', join(REPO_ROOT, 'manifests/operator/rbac.yaml')]);
      const trust = await createNatsTrust();
      nats = await NatsServer.start({ config: renderClusterNatsConfig(trust, { listen: '127.0.0.1:4222', storeDir: join(dir, 'jetstream') }) });
      log(`nats-server on ${nats.url}`);
      const creds = join(dir, 'operator.creds');
      const key = join(dir, 'account.nk');
      writeFileSync(creds, (await mintOperatorCreds(trust.signer)).creds, { mode: 0o600 });
      writeFileSync(key, renderAccountSigner(trust.signer), { mode: 0o600 });
      runner = await PodRunner.start({ kubeconfig: cp.kubeconfig, workDir: join(dir, 'pods'), ...(opts.claims ? { claims: opts.claims } : {}), log });
      return new ConsortCluster(dir, cp, nats, runner, { creds, key }, log);
    } catch (err) {
      await runner?.stop();
      await nats?.stop();
      await cp?.stop();
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Starts `consort operator` as a process of its own; resolves once its caches are synced. */
  async startOperator(o: OperatorProcessOptions = {}): Promise<ManagedProcess> {
    const identity = o.identity ?? `operator-${this.operators.length + 1}`;
    const args = [
      ...process.execArgv,
      ...(o.nodeArgs ?? []),
      CLI,
      'operator',
      '--kubeconfig',
      this.cp.kubeconfigFor(o.asAdmin ? 'admin' : 'operator'),
      '--nats',
      this.nats.url,
      '--nats-creds',
      this.operatorCreds,
      '--account-key',
      this.accountKey,
      '--lease-namespace',
      OPERATOR_NAMESPACE,
      '--identity',
      identity,
      ...(o.leaderElect === false ? ['--no-leader-elect'] : []),
      ...(o.args ?? []),
    ];
    const p = new ManagedProcess(identity, process.execPath, args, {
      env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: '2' },
      onOutput: (text) => {
        for (const line of text.split('\n')) if (line.trim()) this.#log(`[${identity}] ${line}`);
      },
    });
    this.operators.push(p);
    await waitUntil('consort operator', async () => /caches synced/.test(p.log(1_000_000)), {
      timeoutMs: 60_000,
      gone: () => p.exited,
      describe: () => p.log(),
    });
    return p;
  }

  kubectl(args: string[], opts: { input?: string } = {}) {
    return this.cp.kubectl(args, opts);
  }

  /** The job's object as the API server has it (admin). */
  async job(
    name: string,
    namespace = 'default',
  ): Promise<{ metadata: Record<string, unknown>; spec: Record<string, unknown>; status?: Record<string, unknown> } | undefined> {
    const r = await this.cp.request(`/apis/consort.dev/v1alpha1/namespaces/${namespace}/federatedjobs/${name}`);
    return r.status === 200 ? (r.body as never) : undefined;
  }

  /** Waits until the job's status satisfies `pred`; fails with the job, the operators' and the Pods' logs. */
  async waitForJob(
    name: string,
    pred: (status: Record<string, unknown>) => boolean,
    opts: { timeoutMs?: number; namespace?: string } = {},
  ): Promise<Record<string, unknown>> {
    let last: Record<string, unknown> = {};
    await waitUntil(
      `FederatedJob ${name}`,
      async () => {
        const j = await this.job(name, opts.namespace);
        last = j?.status ?? {};
        return pred(last);
      },
      {
        timeoutMs: opts.timeoutMs ?? 180_000,
        intervalMs: 250,
        describe: () =>
          `status: ${JSON.stringify(last, null, 1).slice(0, 3000)}\n${this.operators.map((p) => `--- ${p.name}\n${p.log(3000)}`).join('\n')}\n${this.podLogs(name)}`,
      },
    );
    return last;
  }

  /** The logs of every Pod of job `job` the runner ran (any namespace), for assertion messages. */
  podLogs(job: string, tail = 1500): string {
    return this.runner
      .podKeys()
      .filter((k) => k.split('/')[1]!.startsWith(`${job}-`))
      .map((k) => {
        const [ns, name] = k.split('/') as [string, string];
        return `--- pod ${k}\n${this.runner.logs(ns, name).slice(-tail)}`;
      })
      .join('\n');
  }

  async stop(): Promise<void> {
    for (const p of this.operators) await p.stop('SIGTERM', 5000).catch(() => {});
    await this.runner.stop().catch(() => {});
    await this.nats.stop().catch(() => {});
    await this.cp.stop().catch(() => {});
    rmSync(this.dir, { recursive: true, force: true });
  }
}
