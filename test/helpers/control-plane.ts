// A real Kubernetes control plane on loopback, envtest style: etcd, kube-apiserver and (optional)
// kube-controller-manager and kube-scheduler, the binaries built and cached by scripts/kube.sh.
// There is no kubelet: test/helpers/pod-runner.ts plays one. Used by the tests and `make cluster`.
//
// Users authenticate with static tokens (--token-auth-file): `admin` (system:masters), and
// `operator`, who is the operator's ServiceAccount by name and groups, so that what it may do is
// exactly what the RBAC in manifests/operator/ grants it, as in a real cluster.
import { execFileSync, spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort } from '../../cli/nats/server.ts';
import { ManagedProcess, waitUntil } from './managed-process.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../..');

let binDir: string | undefined;
/** The folder with kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd (built once, cached). */
export function kubeBinaries(): string {
  binDir ??= execFileSync('bash', [join(REPO_ROOT, 'scripts/kube.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  return binDir;
}

export const OPERATOR_NAMESPACE = 'consort-system';
export const OPERATOR_SERVICE_ACCOUNT = 'consort-operator';

export interface TokenUser {
  token: string;
  user: string;
  groups: string[];
}

export interface ControlPlaneOptions {
  /** Apply every manifest in crds/ and wait until established (default true). */
  crds?: boolean;
  /** Run kube-controller-manager (garbage collector, namespaces, service accounts) and kube-scheduler (default true). */
  controllers?: boolean;
  /** Extra token users besides admin and operator. */
  users?: Record<string, Omit<TokenUser, 'token'>>;
  /** Folder for data, certificates and kubeconfigs (default: a new temporary folder, removed by stop()). */
  dir?: string;
  log?: (line: string) => void;
}

export interface KubectlResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class ControlPlane {
  readonly dir: string;
  readonly bin: string;
  readonly users: Record<string, TokenUser>;
  apiPort = 0;
  etcdPort = 0;
  #etcdPeerPort = 0;
  etcd?: ManagedProcess;
  apiserver?: ManagedProcess;
  controllerManager?: ManagedProcess;
  scheduler?: ManagedProcess;
  readonly #opts: ControlPlaneOptions;

  private constructor(opts: ControlPlaneOptions) {
    this.#opts = opts;
    this.bin = kubeBinaries();
    this.dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'consort-kube-'));
    const token = () => randomBytes(24).toString('hex');
    this.users = {
      admin: { token: token(), user: 'admin', groups: ['system:masters'] },
      operator: {
        token: token(),
        user: `system:serviceaccount:${OPERATOR_NAMESPACE}:${OPERATOR_SERVICE_ACCOUNT}`,
        groups: ['system:serviceaccounts', `system:serviceaccounts:${OPERATOR_NAMESPACE}`],
      },
      ...Object.fromEntries(Object.entries(opts.users ?? {}).map(([k, u]) => [k, { ...u, token: token() }])),
    };
  }

  static async start(opts: ControlPlaneOptions = {}): Promise<ControlPlane> {
    const cp = new ControlPlane(opts);
    try {
      await cp.#start();
    } catch (err) {
      await cp.stop();
      throw err;
    }
    return cp;
  }

  get server(): string {
    return `https://127.0.0.1:${this.apiPort}`;
  }
  /** The admin's kubeconfig. */
  get kubeconfig(): string {
    return this.kubeconfigFor('admin');
  }
  kubeconfigFor(user: string): string {
    return join(this.dir, `kubeconfig-${user}`);
  }

  async #start(): Promise<void> {
    const log = this.#opts.log ?? (() => {});
    mkdirSync(join(this.dir, 'certs'), { recursive: true });
    // The service account issuer's key pair: the API server signs tokens, the controller manager mints them.
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    writeFileSync(join(this.dir, 'sa.key'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
    writeFileSync(join(this.dir, 'sa.pub'), publicKey.export({ type: 'spki', format: 'pem' }));
    writeFileSync(
      join(this.dir, 'tokens.csv'),
      Object.values(this.users)
        .map((u) => `${u.token},${u.user},${u.user},"${u.groups.join(',')}"`)
        .join('\n'),
    );
    await this.#startEtcd();
    log(`etcd on 127.0.0.1:${this.etcdPort}`);
    this.apiPort = await freePort();
    for (const name of Object.keys(this.users)) this.#writeKubeconfig(name);
    await this.#startApiServer();
    log(`kube-apiserver on ${this.server}`);
    if (this.#opts.controllers ?? true) await this.#startControllers();
    if (this.#opts.crds ?? true) await this.applyCrds();
  }

  async #startEtcd(): Promise<void> {
    this.etcdPort = await freePort();
    this.#etcdPeerPort = await freePort();
    await this.#launchEtcd();
  }

  async #launchEtcd(): Promise<void> {
    const peer = `http://127.0.0.1:${this.#etcdPeerPort}`;
    const client = `http://127.0.0.1:${this.etcdPort}`;
    this.etcd = new ManagedProcess('etcd', join(this.bin, 'etcd'), [
      '--data-dir',
      join(this.dir, 'etcd'),
      '--listen-client-urls',
      client,
      '--advertise-client-urls',
      client,
      '--listen-peer-urls',
      peer,
      '--initial-advertise-peer-urls',
      peer,
      '--initial-cluster',
      `default=${peer}`,
      // A test cluster's data is thrown away: no fsync keeps a 2-core machine's disk out of the way.
      '--unsafe-no-fsync',
      '--log-level',
      'warn',
    ]);
    const etcd = this.etcd;
    await waitUntil(
      'etcd',
      async () => {
        const res = await fetch(`${client}/health`, { signal: AbortSignal.timeout(1000) });
        return res.ok && ((await res.json()) as { health?: string }).health === 'true';
      },
      { timeoutMs: 30_000, gone: () => etcd.exited, describe: () => etcd.log() },
    );
  }

  async #startApiServer(): Promise<void> {
    const d = this.dir;
    this.apiserver = new ManagedProcess('kube-apiserver', join(this.bin, 'kube-apiserver'), [
      `--etcd-servers=http://127.0.0.1:${this.etcdPort}`,
      `--cert-dir=${join(d, 'certs')}`,
      `--secure-port=${this.apiPort}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      '--service-cluster-ip-range=10.96.0.0/24',
      '--authorization-mode=RBAC',
      `--token-auth-file=${join(d, 'tokens.csv')}`,
      '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
      `--service-account-key-file=${join(d, 'sa.pub')}`,
      `--service-account-signing-key-file=${join(d, 'sa.key')}`,
      '--allow-privileged=false',
      // Fairness queues cost CPU a 2-core test machine would rather spend on the test.
      '--enable-priority-and-fairness=false',
      '--v=0',
    ]);
    const api = this.apiserver;
    await waitUntil('kube-apiserver', () => this.#ready(), { timeoutMs: 60_000, gone: () => api.exited, describe: () => api.log() });
  }

  async #ready(): Promise<boolean> {
    const res = await this.request('/readyz');
    return res.status === 200;
  }

  /** A request to the API server as `user` (admin by default). */
  async request(path: string, init: { method?: string; body?: unknown; user?: string } = {}): Promise<{ status: number; body: unknown }> {
    const token = this.users[init.user ?? 'admin']!.token;
    // The API server's serving certificate is self-signed for this run; loopback only.
    const { request } = await import('node:https');
    return await new Promise((done, fail) => {
      const req = request(
        `${this.server}${path}`,
        {
          method: init.method ?? 'GET',
          rejectUnauthorized: false,
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json' },
          timeout: 5000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let body: unknown = text;
            try {
              body = JSON.parse(text);
            } catch {}
            done({ status: res.statusCode ?? 0, body });
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', fail);
      if (init.body !== undefined) req.write(JSON.stringify(init.body));
      req.end();
    });
  }

  async #startControllers(): Promise<void> {
    const kc = this.kubeconfigFor('admin');
    // Both run as admin, without leader election, serving their health port on loopback.
    const common = async () => [
      `--kubeconfig=${kc}`,
      `--authentication-kubeconfig=${kc}`,
      `--authorization-kubeconfig=${kc}`,
      '--leader-elect=false',
      `--secure-port=${await freePort()}`,
      '--bind-address=127.0.0.1',
      '--v=0',
    ];
    this.controllerManager = new ManagedProcess('kube-controller-manager', join(this.bin, 'kube-controller-manager'), [
      ...(await common()),
      // What a cluster does for the operator's objects: cascading deletion by owner reference,
      // namespace teardown, each namespace's default ServiceAccount (Pods need it), node health.
      '--controllers=garbagecollector,namespace,serviceaccount,serviceaccount-token,nodelifecycle,ttl-after-finished',
      `--service-account-private-key-file=${join(this.dir, 'sa.key')}`,
      '--use-service-account-credentials=false',
      '--concurrent-gc-syncs=5',
    ]);
    this.scheduler = new ManagedProcess('kube-scheduler', join(this.bin, 'kube-scheduler'), await common());
    // Ready once the default namespace's ServiceAccount exists (Pods cannot be created before).
    const kcm = this.controllerManager;
    await waitUntil('kube-controller-manager', async () => (await this.request('/api/v1/namespaces/default/serviceaccounts/default')).status === 200, {
      timeoutMs: 60_000,
      gone: () => kcm.exited,
      describe: () => kcm.log(),
    });
  }

  #writeKubeconfig(name: string): void {
    const u = this.users[name]!;
    const text = [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      '- name: consort-test',
      '  cluster:',
      `    server: ${this.server}`,
      '    insecure-skip-tls-verify: true',
      'users:',
      `- name: ${name}`,
      '  user:',
      `    token: ${u.token}`,
      'contexts:',
      `- name: ${name}`,
      '  context:',
      '    cluster: consort-test',
      `    user: ${name}`,
      '    namespace: default',
      `current-context: ${name}`,
      '',
    ].join('\n');
    writeFileSync(this.kubeconfigFor(name), text, { mode: 0o600 });
  }

  /** kubectl as `user` (admin by default); never throws for a non-zero exit. */
  kubectl(args: string[], opts: { input?: string; user?: string; timeoutMs?: number } = {}): Promise<KubectlResult> {
    return new Promise((done) => {
      const p = spawn(join(this.bin, 'kubectl'), [`--kubeconfig=${this.kubeconfigFor(opts.user ?? 'admin')}`, ...args], {
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (c: Buffer) => {
        stdout += c.toString('utf8');
      });
      p.stderr.on('data', (c: Buffer) => {
        stderr += c.toString('utf8');
      });
      const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
      p.on('close', (code) => {
        clearTimeout(timer);
        done({ code: code ?? 1, stdout, stderr });
      });
      p.stdin.end(opts.input ?? '');
    });
  }

  /** kubectl that must succeed. */
  async kubectlOk(args: string[], opts: { input?: string; user?: string } = {}): Promise<string> {
    const r = await this.kubectl(args, opts);
    if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed (${r.code}):\n${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  async applyCrds(): Promise<void> {
    const dir = join(REPO_ROOT, 'crds');
    const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));
    for (const f of files) await this.kubectlOk(['apply', '--server-side', '--force-conflicts', '-f', join(dir, f)]);
    // Polled rather than `kubectl wait`, which fails outright ("accessor error: <nil>") on a CRD
    // whose status has no conditions yet: seen once in CI.
    let last = '';
    await waitUntil(
      'CRDs established',
      async () => {
        const r = await this.kubectl(['get', 'crd', '-o', 'json']);
        last = `${r.stderr}${r.stdout.slice(0, 2000)}`;
        if (r.code !== 0) return false;
        const items = (JSON.parse(r.stdout) as { items: Array<{ status?: { conditions?: Array<{ type: string; status: string }> } }> }).items;
        return items.length > 0 && items.every((c) => c.status?.conditions?.some((x) => x.type === 'Established' && x.status === 'True'));
      },
      { timeoutMs: 60_000, intervalMs: 200, describe: () => last },
    );
  }

  /** Kills the API server (SIGKILL by default) and starts it again on the same port; etcd keeps the state. */
  async restartApiServer(opts: { signal?: NodeJS.Signals; downMs?: number } = {}): Promise<void> {
    await this.apiserver?.stop(opts.signal ?? 'SIGKILL', 2000);
    if (opts.downMs) await new Promise((r) => setTimeout(r, opts.downMs));
    await this.#startApiServer();
  }

  /** Stops everything this control plane started (process groups), newest first, then removes its folder. */
  async stop(): Promise<void> {
    for (const p of [this.scheduler, this.controllerManager, this.apiserver, this.etcd]) await p?.stop('SIGTERM', 3000).catch(() => {});
    if (!this.#opts.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}
