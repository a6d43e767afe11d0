// The test harness's kubelet stand-in, much as kwok: registers a Node, runs the Pods bound to it as
// local process groups with the Pod's command, env and volumes, and reports their status back
// through the API (pods/status), so that the operator's Pods really run in the tests. Test
// infrastructure, never shipped.
//
// What it does as a kubelet would: a Ready node with a renewed Lease (kube-controller-manager's
// nodelifecycle would otherwise taint it and evict); env (value, $(VAR) expansion, secretKeyRef,
// configMapKeyRef, fieldRef, resourceFieldRef, envFrom); volumes (secret, configMap, emptyDir,
// hostPath, persistentVolumeClaim through `claims`, downwardAPI, projected, including the
// ServiceAccount token volume every Pod gets); workingDir; init containers in order (sidecars,
// restartPolicy Always, alongside); restartPolicy Never / OnFailure / Always with a back-off;
// activeDeadlineSeconds; terminationMessagePolicy FallbackToLogsOnError; graceful deletion
// (SIGTERM the group, SIGKILL after the grace period, then the final delete with grace 0). For
// every PVC named in `claims` it plays the volume binder: a pre-bound hostPath PV, the claim
// marked Bound (so that kube-scheduler schedules its Pods), and the protection finalizers lifted
// when it is deleted.
//
// What it does not: images (an image maps to a local command, see `images`), isolation (every Pod
// shares this machine's network at 127.0.0.1, its filesystem and its ports), probes (a running
// container is ready), resource limits, the termination message file, Services and DNS. A
// volumeMount's mountPath means nothing to a local process, so every occurrence of a mountPath
// in the command, the args, env values and workingDir is rewritten to the volume's local folder.
import {
  accessSync,
  appendFileSync,
  chmodSync,
  constants as fsConstants,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import type {
  V1ConfigMapProjection,
  V1Container,
  V1DownwardAPIVolumeFile,
  V1EnvVarSource,
  V1KeyToPath,
  V1PodSpec,
  V1ResourceFieldSelector,
  V1SecretProjection,
} from '@kubernetes/client-node';
import { isConflict, isNotFound, KubeClient, type KubeObject } from '../../operator/kube/client.ts';
import { Informer, keyOf } from '../../operator/kube/informer.ts';
import { ManagedProcess, signalGroup } from './managed-process.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../..');

/** The worker image; its entrypoint is the consort command. */
export const CONSORT_IMAGE = 'ghcr.io/consort-dev/consort';
/** What `consort` is on this machine: the CLI run by this node. */
export const CONSORT_COMMAND: readonly string[] = [process.execPath, join(REPO_ROOT, 'cli/consort.ts')];

export interface PodRunnerOptions {
  /** Admin kubeconfig (ControlPlane.kubeconfig). */
  kubeconfig: string;
  /** The Node's name (default consort-local). */
  nodeName?: string;
  /** PVC claimName (any namespace) → local folder (created if missing). */
  claims?: Record<string, string>;
  /**
   * Maps a container image to the local command prefix its command and args follow; `[]` runs
   * command[0] itself (found on PATH), undefined leaves the image to the defaults: a command
   * starting with `consort`, or the consort image without a command, runs CONSORT_COMMAND; any
   * other image with a command runs it as is; anything else waits with ErrImagePull.
   */
  images?: (image: string) => string[] | undefined;
  /** Pod folders (volumes, logs). Default: a temporary folder, removed by stop(). */
  workDir?: string;
  log?: (line: string) => void;
  /** Variables of this process's environment that every container inherits (node needs PATH and HOME). */
  inheritEnv?: string[];
  /** Node capacity and allocatable, over the defaults (cpu 64, memory 256Gi, pods 500, nvidia.com/gpu 8). */
  capacity?: Record<string, string>;
  /** Restart back-off, doubling from initial to max (default 500 ms to 5 s). */
  restartBackoffMs?: { initial: number; max: number };
  /** Upper bound on a Pod's termination grace period (default 5 s). */
  maxGraceMs?: number;
  /** Node lease renewal period (default 5 s; the node's status every 4th time). */
  heartbeatMs?: number;
}

/** A Pod as the API sends it (the fields this runner reads). */
export interface Pod extends KubeObject {
  spec: V1PodSpec;
  status?: PodStatus;
}
export interface PodStatus {
  phase?: string;
  reason?: string;
  message?: string;
  podIP?: string;
  hostIP?: string;
  startTime?: string;
  conditions?: PodCondition[];
  containerStatuses?: ContainerStatus[];
  initContainerStatuses?: ContainerStatus[];
}
export interface PodCondition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
  lastTransitionTime?: string;
  lastProbeTime?: string | null;
}
export interface ContainerStatus {
  name: string;
  image: string;
  imageID: string;
  containerID?: string;
  ready: boolean;
  started: boolean;
  restartCount: number;
  state: ContainerState;
  lastState: ContainerState;
}
export interface ContainerState {
  waiting?: { reason: string; message?: string };
  running?: { startedAt: string };
  terminated?: Terminated;
}
export interface Terminated {
  exitCode: number;
  signal?: number;
  reason: string;
  message?: string;
  startedAt?: string;
  finishedAt: string;
  containerID?: string;
}

interface Secret extends KubeObject {
  data?: Record<string, string>;
}
interface ConfigMap extends KubeObject {
  data?: Record<string, string>;
  binaryData?: Record<string, string>;
}
interface Pvc extends KubeObject {
  spec: { volumeName?: string; accessModes?: string[]; storageClassName?: string; volumeMode?: string; resources?: { requests?: Record<string, string> } };
  status?: { phase?: string };
}

/** Why a container cannot be created yet (kubelet retries): its waiting reason and message. */
class WaitingError extends Error {
  readonly reason: string;
  constructor(reason: string, message: string) {
    super(message);
    this.reason = reason;
  }
}

const HOST_IP = '127.0.0.1';
const PVC_PROTECTION = 'kubernetes.io/pvc-protection';
const PV_PROTECTION = 'kubernetes.io/pv-protection';
const MANAGED_CONDITIONS = new Set(['PodReadyToStartContainers', 'Initialized', 'ContainersReady', 'Ready', 'PodScheduled']);
const DEFAULT_INHERIT = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'TF_CPP_MIN_LOG_LEVEL', 'CONSORT_CACHE'];

/** API time (seconds). */
const now = (): string => new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
/** API MicroTime (Lease renewTime). */
const microNow = (): string => new Date().toISOString().replace(/Z$/, '000Z');

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((done) => {
    if (signal?.aborted) return done();
    const finish = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', finish);
      done();
    };
    const timer = setTimeout(finish, ms);
    signal?.addEventListener('abort', finish, { once: true });
  });
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** Appends to a container's log; a folder removed under it (stop() after a failure) costs the text, never the test. */
function appendLog(file: string, text: string): void {
  try {
    appendFileSync(file, text);
  } catch {}
}

/** Kubernetes' $(VAR) expansion: defined names are replaced, $$ is a literal $, anything else stays as written. */
export function expandVars(input: string, vars: ReadonlyMap<string, string>): string {
  let out = '';
  for (let i = 0; i < input.length; i++) {
    const c = input[i]!;
    if (c !== '$' || i + 1 >= input.length) {
      out += c;
      continue;
    }
    const next = input[i + 1];
    if (next === '$') {
      out += '$';
      i++;
    } else if (next === '(' && input.indexOf(')', i + 2) >= 0) {
      const end = input.indexOf(')', i + 2);
      const name = input.slice(i + 2, end);
      out += vars.get(name) ?? input.slice(i, end + 1);
      i = end;
    } else out += c;
  }
  return out;
}

/**
 * Rewrites every occurrence of a mount path (as a whole path prefix: `/data` in `--in=/data/x`,
 * never in `/database` or `/x/data`) to its local folder, the longest mount path first.
 */
export function pathRewriter(mounts: { mountPath: string; local: string }[]): (text: string) => string {
  const map = new Map<string, string>();
  for (const m of mounts) {
    const from = m.mountPath.replace(/\/+$/, '');
    if (from && !map.has(from)) map.set(from, m.local);
  }
  if (map.size === 0) return (text) => text;
  const alternatives = [...map.keys()].sort((a, b) => b.length - a.length).map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  const re = new RegExp(`(?<![\\w./-])(?:${alternatives.join('|')})(?![\\w.-])`, 'g');
  return (text) => text.replace(re, (m) => map.get(m)!);
}

// biome-ignore format: a table
const SUFFIXES: Record<string, number> = {
  n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
  Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60,
};
function parseQuantity(q: string): number {
  const m = /^([+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)([a-zA-Z]*)$/.exec(q.trim());
  const scale = m ? SUFFIXES[m[2]!] : undefined;
  if (!m || scale === undefined) throw new WaitingError('CreateContainerConfigError', `bad quantity ${JSON.stringify(q)}`);
  return Number(m[1]) * scale;
}

function findExecutable(cmd: string, pathVar: string | undefined, cwd: string): string | undefined {
  const candidates = cmd.includes('/')
    ? [resolve(cwd, cmd)]
    : (pathVar ?? '')
        .split(delimiter)
        .filter(Boolean)
        .map((d) => join(d, cmd));
  for (const file of candidates) {
    try {
      if (!statSync(file).isFile()) continue;
      accessSync(file, fsConstants.X_OK);
      return file;
    } catch {}
  }
  return undefined;
}

/** What a PodWork needs of its runner. */
interface Ctx {
  client: KubeClient;
  nodeName: string;
  signal: AbortSignal;
  claims: Record<string, string>;
  inherited: Record<string, string>;
  serviceEnv: Record<string, string>;
  allocatable: Record<string, string>;
  caData: string;
  backoff: { initial: number; max: number };
  maxGraceMs: number;
  log: (line: string) => void;
  command: (c: V1Container) => { prefix: string[]; words: string[] };
  track: (p: Promise<unknown>) => void;
}

interface Ctr {
  spec: V1Container;
  sidecar: boolean;
  restartCount: number;
  everStarted: boolean;
  state: ContainerState;
  lastState: ContainerState;
  containerID?: string;
  proc?: ManagedProcess;
  /** Terminated for good: no restart will follow. */
  done: boolean;
  /** Asked to stop (sidecars once the regular containers are done). */
  halted: boolean;
  logFile: string;
}

interface Launch {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  /** Set when the command cannot be started at all (the runtime's StartError, exit code 128). */
  startError?: string;
}

/** One Pod on this node: its volumes, its containers' processes, and the status it reports. */
class PodWork {
  readonly ctx: Ctx;
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  readonly dir: string;
  pod: Pod;
  readonly inits: Ctr[];
  readonly regular: Ctr[];
  readonly #ctl = new AbortController();
  /** No (re)start from now on. */
  #halted = false;
  /** No more status writes (the Pod is going or the runner stops). */
  #abandoned = false;
  #deleting: Promise<void> | undefined;
  #phase: 'Succeeded' | 'Failed' | undefined;
  #reason: string | undefined;
  #message: string | undefined;
  #startTime: string | undefined;
  #volumesReady = false;
  #initialized = false;
  readonly #volumes = new Map<string, string>();
  readonly #transitions = new Map<string, { status: string; time: string }>();
  #dirty = false;
  #writer: Promise<void> | undefined;
  #main: Promise<void> | undefined;
  #deadline: NodeJS.Timeout | undefined;

  constructor(ctx: Ctx, pod: Pod, dir: string) {
    this.ctx = ctx;
    this.pod = pod;
    this.uid = pod.metadata.uid ?? '';
    this.namespace = pod.metadata.namespace ?? 'default';
    this.name = pod.metadata.name;
    this.dir = dir;
    mkdirSync(join(dir, 'logs'), { recursive: true });
    const ctr = (spec: V1Container, sidecar: boolean): Ctr => ({
      spec,
      sidecar,
      restartCount: 0,
      everStarted: false,
      state: { waiting: { reason: 'ContainerCreating' } },
      lastState: {},
      done: false,
      halted: false,
      logFile: join(dir, 'logs', `${spec.name}.log`),
    });
    this.inits = (pod.spec.initContainers ?? []).map((c) => ctr(c, c.restartPolicy === 'Always'));
    this.regular = pod.spec.containers.map((c) => ctr(c, false));
  }

  get #policy(): string {
    return this.pod.spec.restartPolicy ?? 'Always';
  }
  get #path(): string {
    return `/api/v1/namespaces/${this.namespace}/pods/${this.name}`;
  }
  #log(line: string): void {
    this.ctx.log(`${this.namespace}/${this.name}: ${line}`);
  }
  /** Running or going to run: a user of its claims, for pvc-protection. */
  get active(): boolean {
    const phase = this.#computePhase();
    return !this.#halted && phase !== 'Succeeded' && phase !== 'Failed';
  }
  containers(): Ctr[] {
    return [...this.inits, ...this.regular];
  }

  start(): Promise<void> {
    this.#main = this.#run().catch((err) => this.#log(`failed: ${(err as Error).stack ?? err}`));
    return this.#main;
  }

  update(pod: Pod): void {
    this.pod = pod;
    if (pod.metadata.deletionTimestamp) this.ctx.track(this.delete());
  }

  /** Graceful deletion as the kubelet does it: stop the containers, then remove the Pod for good. */
  delete(): Promise<void> {
    this.#deleting ??= (async () => {
      this.#abandoned = true;
      const seconds = (this.pod.metadata.deletionGracePeriodSeconds as number | undefined) ?? this.pod.spec.terminationGracePeriodSeconds ?? 30;
      await this.#shutdown(Math.min(seconds * 1000, this.ctx.maxGraceMs));
      for (let backoff = 200; !this.ctx.signal.aborted; backoff = Math.min(backoff * 2, 5000)) {
        try {
          // The kubelet sends a uid precondition in DeleteOptions; KubeClient's DELETE carries no
          // body (node sends none without a content-length), so the uid is checked just before.
          if ((await this.ctx.client.get(this.#path)).metadata.uid !== this.uid) return;
          await this.ctx.client.request(this.#path, { method: 'DELETE', query: { gracePeriodSeconds: 0 }, signal: this.ctx.signal });
          this.#log('deleted');
          return;
        } catch (err) {
          if (isNotFound(err) || isConflict(err) || this.ctx.signal.aborted) return;
          this.#log(`delete failed, retrying: ${message(err)}`);
          await sleep(backoff, this.ctx.signal);
        }
      }
    })();
    return this.#deleting;
  }

  /** The Pod is gone (or the runner stops): kill its processes, report nothing more. */
  async abandon(graceMs = 1000): Promise<void> {
    this.#abandoned = true;
    await this.#shutdown(graceMs);
  }

  killProcess(container?: string): boolean {
    let killed = false;
    for (const c of this.containers()) {
      if (c.proc && !c.proc.exited && (container === undefined || c.spec.name === container)) {
        signalGroup(c.proc.pid, 'SIGKILL');
        killed = true;
      }
    }
    return killed;
  }

  async #shutdown(graceMs: number): Promise<void> {
    this.#halted = true;
    this.#ctl.abort();
    clearTimeout(this.#deadline);
    await Promise.all(this.containers().map((c) => c.proc?.stop('SIGTERM', graceMs)));
    await this.#main;
  }

  async #run(): Promise<void> {
    const previous = this.pod.status;
    this.#startTime = previous?.startTime ?? now();
    // A Pod that ran under an earlier runner: its processes died with that runner.
    const before = new Map([...(previous?.initContainerStatuses ?? []), ...(previous?.containerStatuses ?? [])].map((s) => [s.name, s]));
    const lost = previous?.phase === 'Running' || [...before.values()].some((s) => s.state?.running || s.state?.terminated);
    if (lost) {
      if (this.#policy === 'Never') {
        for (const c of this.containers()) {
          const old = before.get(c.spec.name);
          c.restartCount = old?.restartCount ?? 0;
          c.state = old?.state?.terminated
            ? { terminated: old.state.terminated }
            : {
                terminated: {
                  exitCode: 137,
                  reason: 'ContainerStatusUnknown',
                  message: 'The container could not be located when the pod was terminated',
                  finishedAt: now(),
                },
              };
          c.done = true;
        }
        this.#initialized = true;
        this.#phase = this.regular.every((c) => c.state.terminated?.exitCode === 0) ? 'Succeeded' : 'Failed';
        this.#markDirty();
        return;
      }
      for (const c of this.containers()) {
        c.restartCount = before.get(c.spec.name)?.restartCount ?? 0;
        c.everStarted = true;
      }
    }
    this.#markDirty();
    const deadline = this.pod.spec.activeDeadlineSeconds;
    if (deadline !== undefined) {
      const left = Date.parse(this.#startTime) + deadline * 1000 - Date.now();
      this.#deadline = setTimeout(() => this.ctx.track(this.#deadlineExceeded()), Math.max(0, left));
    }

    for (let backoff = 500; !this.#halted; backoff = Math.min(backoff * 2, 5000)) {
      try {
        await this.#prepareVolumes();
        break;
      } catch (err) {
        const reason = err instanceof WaitingError ? err.reason : 'CreateContainerConfigError';
        this.#log(`volumes: ${message(err)}`);
        for (const c of this.containers()) c.state = { waiting: { reason, message: message(err) } };
        this.#markDirty();
        await sleep(backoff, this.#ctl.signal);
      }
    }
    if (this.#halted) return;
    this.#volumesReady = true;
    this.#markDirty();

    const sidecars: Promise<void>[] = [];
    for (const c of this.inits) {
      if (c.sidecar) {
        sidecars.push(this.#supervise(c, 'Always'));
        while (!c.everStarted && !this.#halted) await sleep(50, this.#ctl.signal);
        continue;
      }
      await this.#supervise(c, this.#policy === 'Never' ? 'Never' : 'OnFailure');
      if (this.#halted) break;
      if (c.state.terminated?.exitCode !== 0) {
        this.#phase = 'Failed';
        break;
      }
    }
    if (!this.#halted && !this.#phase) {
      this.#initialized = true;
      this.#markDirty();
      await Promise.all(this.regular.map((c) => this.#supervise(c, this.#policy)));
    }
    for (const c of this.inits) if (c.sidecar) c.halted = true;
    await Promise.all(this.inits.map((c) => c.proc?.stop('SIGTERM', this.ctx.maxGraceMs)));
    await Promise.all(sidecars);
    clearTimeout(this.#deadline);
    this.#markDirty();
  }

  async #deadlineExceeded(): Promise<void> {
    if (this.#halted || this.#phase) return;
    this.#phase = 'Failed';
    this.#reason = 'DeadlineExceeded';
    this.#message = 'Pod was active on the node longer than the specified deadline';
    this.#log('deadline exceeded');
    const grace = Math.min((this.pod.spec.terminationGracePeriodSeconds ?? 30) * 1000, this.ctx.maxGraceMs);
    await this.#shutdown(grace);
    for (const c of this.containers()) {
      if (!c.state.terminated) c.state = { terminated: { exitCode: 137, reason: 'DeadlineExceeded', finishedAt: now() } };
      c.done = true;
    }
    this.#markDirty();
  }

  /** Runs one container until it is done for good, restarting it as `policy` says. */
  async #supervise(c: Ctr, policy: string): Promise<void> {
    let backoff = this.ctx.backoff.initial;
    for (;;) {
      if (this.#halted || c.halted) return;
      let launch: Launch;
      try {
        launch = await this.#prepare(c);
      } catch (err) {
        const reason = err instanceof WaitingError ? err.reason : 'CreateContainerConfigError';
        if (c.state.waiting?.message !== message(err)) this.#log(`${c.spec.name}: ${reason}: ${message(err)}`);
        c.state = { waiting: { reason, message: message(err) } };
        this.#markDirty();
        await sleep(backoff, this.#ctl.signal);
        backoff = Math.min(backoff * 2, this.ctx.backoff.max);
        continue;
      }
      if (this.#halted || c.halted) return;
      if (c.everStarted) c.restartCount++;
      c.everStarted = true;
      const startedAt = now();
      const t0 = Date.now();
      let term: Terminated;
      let proc: ManagedProcess | undefined;
      if (!launch.startError) {
        const logFile = c.logFile;
        try {
          proc = new ManagedProcess(`${this.namespace}/${this.name}/${c.spec.name}`, launch.argv[0]!, launch.argv.slice(1), {
            env: launch.env,
            cwd: launch.cwd,
            onOutput: (chunk) => appendLog(logFile, chunk),
          });
          proc.child.on('error', (err) => this.#log(`${c.spec.name}: ${err.message}`));
        } catch (err) {
          launch.startError = message(err);
        }
      }
      if (!proc) {
        const why = launch.startError ?? 'no process';
        this.#log(`${c.spec.name}: StartError: ${why}`);
        appendLog(c.logFile, `${why}\n`);
        term = { exitCode: 128, reason: 'StartError', message: why, startedAt, finishedAt: now() };
      } else {
        c.proc = proc;
        c.containerID = `pod-runner://${proc.pid}`;
        c.state = { running: { startedAt } };
        this.#log(`${c.spec.name}: started (pid ${proc.pid}, restart ${c.restartCount})`);
        this.#markDirty();
        const { code, signal } = await proc.closed;
        const exitCode = code ?? 128 + (signal ? (osConstants.signals[signal] ?? 9) : 0);
        term = {
          exitCode,
          reason: exitCode === 0 ? 'Completed' : 'Error',
          startedAt,
          finishedAt: now(),
          containerID: c.containerID,
          ...(signal ? { signal: osConstants.signals[signal] } : {}),
        };
        if (exitCode !== 0 && c.spec.terminationMessagePolicy === 'FallbackToLogsOnError') {
          const tail = proc.log(2048).split('\n').slice(-80).join('\n').trim();
          if (tail) term.message = tail;
        }
        this.#log(`${c.spec.name}: exited ${exitCode}${signal ? ` (${signal})` : ''}`);
        c.proc = undefined;
      }
      const restart = !this.#halted && !c.halted && (policy === 'Always' || (policy === 'OnFailure' && term.exitCode !== 0));
      if (!restart) {
        c.state = { terminated: term };
        c.done = true;
        this.#markDirty();
        return;
      }
      if (Date.now() - t0 > 10_000) backoff = this.ctx.backoff.initial;
      c.lastState = { terminated: term };
      c.state = { waiting: { reason: 'CrashLoopBackOff', message: `back-off ${backoff}ms restarting failed container=${c.spec.name} pod=${this.name}` } };
      this.#markDirty();
      await sleep(backoff, this.#ctl.signal);
      backoff = Math.min(backoff * 2, this.ctx.backoff.max);
    }
  }

  // --- configuration ---

  async #get<T>(kind: 'secrets' | 'configmaps', name: string): Promise<T | undefined> {
    try {
      return await this.ctx.client.get<T>(`/api/v1/namespaces/${this.namespace}/${kind}/${name}`);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw new WaitingError('CreateContainerConfigError', `${kind} ${name}: ${message(err)}`);
    }
  }
  /** A Secret's or ConfigMap's keys as bytes; undefined if it does not exist. */
  async #data(kind: 'secrets' | 'configmaps', name: string): Promise<Record<string, Buffer> | undefined> {
    if (kind === 'secrets') {
      const s = await this.#get<Secret>('secrets', name);
      return s && Object.fromEntries(Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')]));
    }
    const cm = await this.#get<ConfigMap>('configmaps', name);
    if (!cm) return undefined;
    return {
      ...Object.fromEntries(Object.entries(cm.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'utf8')])),
      ...Object.fromEntries(Object.entries(cm.binaryData ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')])),
    };
  }

  #field(path: string): string {
    const m = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(path);
    if (m) return (m[1] === 'labels' ? this.pod.metadata.labels : this.pod.metadata.annotations)?.[m[2]!] ?? '';
    const meta = this.pod.metadata;
    const map = (o: Record<string, string> | undefined) =>
      Object.entries(o ?? {})
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
        .join('\n');
    switch (path) {
      case 'metadata.name':
        return meta.name;
      case 'metadata.namespace':
        return this.namespace;
      case 'metadata.uid':
        return this.uid;
      case 'metadata.labels':
        return map(meta.labels);
      case 'metadata.annotations':
        return map(meta.annotations);
      case 'spec.nodeName':
        return this.ctx.nodeName;
      case 'spec.serviceAccountName':
        return this.pod.spec.serviceAccountName ?? 'default';
      case 'status.podIP':
      case 'status.podIPs':
      case 'status.hostIP':
      case 'status.hostIPs':
        return HOST_IP;
    }
    throw new WaitingError('CreateContainerConfigError', `fieldRef ${path} is not supported by the pod runner`);
  }

  #resource(ref: V1ResourceFieldSelector, container: V1Container | undefined): string {
    const c = ref.containerName ? this.pod.spec.containers.find((x) => x.name === ref.containerName) : container;
    const [kind, ...rest] = ref.resource.split('.');
    const name = rest.join('.');
    const limit = c?.resources?.limits?.[name] ?? this.ctx.allocatable[name] ?? '0';
    const q = kind === 'limits' ? limit : (c?.resources?.requests?.[name] ?? c?.resources?.limits?.[name] ?? '0');
    // The API server fills an unset divisor in as "0", which means 1.
    const divisor = parseQuantity(ref.divisor ?? '1') || 1;
    return String(Math.ceil(parseQuantity(q) / divisor));
  }

  async #valueFrom(from: V1EnvVarSource, c: V1Container): Promise<string | undefined> {
    const ref = from.secretKeyRef ?? from.configMapKeyRef;
    if (ref) {
      const kind = from.secretKeyRef ? 'secrets' : 'configmaps';
      const what = from.secretKeyRef ? 'secret' : 'configmap';
      const data = await this.#data(kind, ref.name ?? '');
      if (!data) {
        if (ref.optional) return undefined;
        throw new WaitingError('CreateContainerConfigError', `${what} "${ref.name}" not found`);
      }
      const value = data[ref.key];
      if (value === undefined) {
        if (ref.optional) return undefined;
        throw new WaitingError(
          'CreateContainerConfigError',
          `couldn't find key ${ref.key} in ${what === 'secret' ? 'Secret' : 'ConfigMap'} ${this.namespace}/${ref.name}`,
        );
      }
      return value.toString('utf8');
    }
    if (from.fieldRef) return this.#field(from.fieldRef.fieldPath);
    if (from.resourceFieldRef) return this.#resource(from.resourceFieldRef, c);
    throw new WaitingError('CreateContainerConfigError', `env valueFrom ${JSON.stringify(from)} is not supported by the pod runner`);
  }

  async #prepare(c: Ctr): Promise<Launch> {
    const spec = c.spec;
    const vars = new Map<string, string>(Object.entries(this.ctx.serviceEnv));
    for (const from of spec.envFrom ?? []) {
      const ref = from.secretRef ?? from.configMapRef;
      if (!ref) continue;
      const data = await this.#data(from.secretRef ? 'secrets' : 'configmaps', ref.name ?? '');
      if (!data) {
        if (ref.optional) continue;
        throw new WaitingError('CreateContainerConfigError', `${from.secretRef ? 'secret' : 'configmap'} "${ref.name}" not found`);
      }
      for (const [k, v] of Object.entries(data)) vars.set(`${from.prefix ?? ''}${k}`, v.toString('utf8'));
    }
    for (const e of spec.env ?? []) {
      if (e.valueFrom) {
        const v = await this.#valueFrom(e.valueFrom, spec);
        if (v !== undefined) vars.set(e.name, v);
      } else vars.set(e.name, expandVars(e.value ?? '', vars));
    }
    const rewrite = pathRewriter(
      (spec.volumeMounts ?? []).flatMap((m) => {
        const local = this.#volumes.get(m.name);
        return local === undefined ? [] : [{ mountPath: m.mountPath, local: m.subPath ? join(local, m.subPath) : local }];
      }),
    );
    const env: Record<string, string> = { ...this.ctx.inherited, HOSTNAME: this.pod.spec.hostname ?? this.name };
    for (const [k, v] of vars) env[k] = rewrite(v);
    // The Pod's own words get $(VAR) expansion and mount paths rewritten; the local prefix does not.
    const { prefix, words } = this.ctx.command(spec);
    const argv = [...prefix, ...words.map((a) => rewrite(expandVars(a, vars)))];
    if (argv.length === 0) throw new WaitingError('RunContainerError', `container ${spec.name} has no command`);
    // A workingDir outside every mount is the container's own filesystem: a folder of the Pod's.
    const wd = spec.workingDir && rewrite(spec.workingDir);
    const cwd = !spec.workingDir ? join(this.dir, 'cwd', spec.name) : wd !== spec.workingDir ? wd! : join(this.dir, 'rootfs', spec.name, spec.workingDir);
    mkdirSync(cwd, { recursive: true });
    const exe = findExecutable(argv[0]!, env.PATH, cwd);
    if (!exe) return { argv, env, cwd, startError: `exec: ${JSON.stringify(argv[0])}: executable file not found in $PATH` };
    argv[0] = exe;
    return { argv, env, cwd };
  }

  // --- volumes ---

  #writeFile(file: string, bytes: Buffer | string, mode: number | undefined): void {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, bytes);
    chmodSync(file, mode ?? 0o644);
  }

  async #writeKeys(
    dir: string,
    kind: 'secrets' | 'configmaps',
    ref: { name?: string; items?: V1KeyToPath[]; optional?: boolean },
    defaultMode: number | undefined,
  ): Promise<void> {
    const what = kind === 'secrets' ? 'secret' : 'configmap';
    const data = await this.#data(kind, ref.name ?? '');
    if (!data) {
      if (ref.optional) return;
      // The ServiceAccount volume's CA: kube-controller-manager's root-ca-cert-publisher is not run here.
      if (kind === 'configmaps' && ref.name === 'kube-root-ca.crt') {
        for (const item of ref.items ?? [{ key: 'ca.crt', path: 'ca.crt' }]) this.#writeFile(join(dir, item.path), this.ctx.caData, item.mode ?? defaultMode);
        return;
      }
      throw new WaitingError('ContainerCreating', `MountVolume.SetUp failed: ${what} "${ref.name}" not found`);
    }
    const items = ref.items ?? Object.keys(data).map((key) => ({ key, path: key }) as V1KeyToPath);
    for (const item of items) {
      const bytes = data[item.key];
      if (bytes === undefined) {
        if (ref.optional) continue;
        throw new WaitingError('ContainerCreating', `MountVolume.SetUp failed: ${what} ${this.namespace}/${ref.name} has no key ${item.key}`);
      }
      this.#writeFile(join(dir, item.path), bytes, item.mode ?? defaultMode);
    }
  }

  #writeDownward(dir: string, items: V1DownwardAPIVolumeFile[], defaultMode: number | undefined): void {
    for (const item of items) {
      const value = item.fieldRef ? this.#field(item.fieldRef.fieldPath) : item.resourceFieldRef ? this.#resource(item.resourceFieldRef, undefined) : '';
      this.#writeFile(join(dir, item.path), value, item.mode ?? defaultMode);
    }
  }

  async #token(path: string, audience: string | undefined, expirationSeconds: number | undefined): Promise<string> {
    const sa = this.pod.spec.serviceAccountName ?? 'default';
    try {
      const res = await this.ctx.client.create<{ status?: { token?: string } }>(`/api/v1/namespaces/${this.namespace}/serviceaccounts/${sa}/token`, {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenRequest',
        spec: {
          ...(audience ? { audiences: [audience] } : {}),
          expirationSeconds: expirationSeconds ?? 3607,
          boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: this.name, uid: this.uid },
        },
      });
      return res.status?.token ?? '';
    } catch (err) {
      this.#log(`token for ${path}: ${message(err)} (written empty)`);
      return '';
    }
  }

  async #prepareVolumes(): Promise<void> {
    for (const v of this.pod.spec.volumes ?? []) {
      const dir = join(this.dir, 'volumes', v.name);
      if (v.hostPath) {
        const p = v.hostPath.path;
        if (v.hostPath.type === 'DirectoryOrCreate') mkdirSync(p, { recursive: true });
        else if (v.hostPath.type === 'FileOrCreate') {
          mkdirSync(dirname(p), { recursive: true });
          appendFileSync(p, '');
        } else if (v.hostPath.type === 'Directory' || v.hostPath.type === 'File') {
          let ok = false;
          try {
            ok = v.hostPath.type === 'Directory' ? statSync(p).isDirectory() : statSync(p).isFile();
          } catch {}
          if (!ok)
            throw new WaitingError(
              'ContainerCreating',
              `MountVolume.SetUp failed for volume "${v.name}": hostPath type check failed: ${p} is not a ${v.hostPath.type}`,
            );
        }
        this.#volumes.set(v.name, p);
        continue;
      }
      if (v.persistentVolumeClaim) {
        const folder = this.ctx.claims[v.persistentVolumeClaim.claimName];
        if (folder === undefined)
          throw new WaitingError(
            'CreateContainerConfigError',
            `persistentvolumeclaim "${v.persistentVolumeClaim.claimName}" has no local folder (PodRunner option claims)`,
          );
        mkdirSync(folder, { recursive: true });
        this.#volumes.set(v.name, folder);
        continue;
      }
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      if (v.emptyDir) {
        // Nothing to fill.
      } else if (v.secret) {
        await this.#writeKeys(dir, 'secrets', { name: v.secret.secretName, items: v.secret.items, optional: v.secret.optional }, v.secret.defaultMode);
      } else if (v.configMap) {
        await this.#writeKeys(dir, 'configmaps', v.configMap, v.configMap.defaultMode);
      } else if (v.downwardAPI) {
        this.#writeDownward(dir, v.downwardAPI.items ?? [], v.downwardAPI.defaultMode);
      } else if (v.projected) {
        const mode = v.projected.defaultMode;
        for (const s of v.projected.sources ?? []) {
          if (s.secret) await this.#writeKeys(dir, 'secrets', s.secret as V1SecretProjection, mode);
          else if (s.configMap) await this.#writeKeys(dir, 'configmaps', s.configMap as V1ConfigMapProjection, mode);
          else if (s.downwardAPI) this.#writeDownward(dir, s.downwardAPI.items ?? [], mode);
          else if (s.serviceAccountToken) {
            const t = s.serviceAccountToken;
            this.#writeFile(join(dir, t.path), await this.#token(t.path, t.audience, t.expirationSeconds), mode ?? 0o600);
          } else
            throw new WaitingError('ContainerCreating', `volume "${v.name}": projected source ${Object.keys(s).join(',')} is not supported by the pod runner`);
        }
      } else {
        throw new WaitingError(
          'ContainerCreating',
          `volume "${v.name}": only secret, configMap, emptyDir, hostPath, persistentVolumeClaim, downwardAPI and projected volumes run here`,
        );
      }
      this.#volumes.set(v.name, dir);
    }
  }

  // --- status ---

  #computePhase(): string {
    if (this.#phase) return this.#phase;
    if (!this.#initialized) return 'Pending';
    if (this.regular.every((c) => c.done) && this.inits.every((c) => !c.proc)) {
      return this.regular.every((c) => c.state.terminated?.exitCode === 0) ? 'Succeeded' : 'Failed';
    }
    return this.regular.some((c) => c.everStarted) ? 'Running' : 'Pending';
  }

  #condition(type: string, ok: boolean, reason?: string, msg?: string): PodCondition {
    const status = ok ? 'True' : 'False';
    let t = this.#transitions.get(type);
    if (t?.status !== status) this.#transitions.set(type, (t = { status, time: now() }));
    return { type, status, lastProbeTime: null, lastTransitionTime: t.time, ...(ok ? {} : { reason, message: msg }) };
  }

  #status(): PodStatus & Record<string, unknown> {
    const phase = this.#computePhase();
    const terminal = phase === 'Succeeded' || phase === 'Failed';
    const status = (c: Ctr): ContainerStatus => ({
      name: c.spec.name,
      image: c.spec.image ?? '',
      imageID: c.spec.image ?? '',
      ...(c.containerID ? { containerID: c.containerID } : {}),
      ready: !!c.state.running,
      started: !!c.state.running,
      restartCount: c.restartCount,
      state: c.state,
      lastState: c.lastState,
    });
    const unready = this.regular.filter((c) => !c.state.running).map((c) => c.spec.name);
    const ready = phase === 'Running' && unready.length === 0;
    const readyReason = terminal ? 'PodCompleted' : 'ContainersNotReady';
    const readyMessage = terminal ? undefined : `containers with unready status: [${unready.join(' ')}]`;
    const existing = this.pod.status?.conditions ?? [];
    const scheduled = existing.find((c) => c.type === 'PodScheduled') ?? {
      type: 'PodScheduled',
      status: 'True',
      lastProbeTime: null,
      lastTransitionTime: now(),
    };
    const conditions: PodCondition[] = [
      this.#condition('PodReadyToStartContainers', this.#volumesReady && !terminal),
      this.#condition('Initialized', this.#initialized, 'ContainersNotInitialized', 'containers with incomplete status'),
      this.#condition('Ready', ready, readyReason, readyMessage),
      this.#condition('ContainersReady', ready, readyReason, readyMessage),
      scheduled,
      ...existing.filter((c) => !MANAGED_CONDITIONS.has(c.type)),
    ];
    return {
      phase,
      reason: this.#reason ?? null,
      message: this.#message ?? null,
      hostIP: HOST_IP,
      hostIPs: [{ ip: HOST_IP }],
      podIP: HOST_IP,
      podIPs: [{ ip: HOST_IP }],
      startTime: this.#startTime,
      conditions,
      containerStatuses: this.regular.map(status),
      ...(this.inits.length ? { initContainerStatuses: this.inits.map(status) } : {}),
    } as PodStatus & Record<string, unknown>;
  }

  #markDirty(): void {
    this.#dirty = true;
    this.#writer ??= this.#write().finally(() => {
      this.#writer = undefined;
    });
  }

  /** Writes the latest status until none is pending; retries through API errors (the server may be restarting). */
  async #write(): Promise<void> {
    let backoff = 200;
    while (this.#dirty && !this.#abandoned && !this.ctx.signal.aborted) {
      this.#dirty = false;
      const body = { metadata: { uid: this.uid }, status: this.#status() };
      try {
        await this.ctx.client.patch(`${this.#path}/status`, body, 'merge');
        backoff = 200;
      } catch (err) {
        if (this.#abandoned || this.ctx.signal.aborted) return;
        if (isNotFound(err) || isConflict(err)) {
          this.#log(`status not written, the Pod is gone: ${message(err)}`);
          return;
        }
        this.#log(`status write failed, retrying in ${backoff} ms: ${message(err)}`);
        this.#dirty = true;
        await sleep(backoff, this.ctx.signal);
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  }
}

/** The harness's kubelet: see the top of this file. */
export class PodRunner {
  readonly nodeName: string;
  readonly workDir: string;
  readonly client: KubeClient;
  readonly #opts: PodRunnerOptions;
  readonly #ownsWorkDir: boolean;
  readonly #ctl = new AbortController();
  readonly #pods = new Map<string, PodWork>();
  /** ns/name → the latest Pod folder of that name (for logs(), also after the Pod is gone). */
  readonly #dirs = new Map<string, string>();
  readonly #inflight = new Set<Promise<unknown>>();
  readonly #binding = new Set<string>();
  readonly #capacity: Record<string, string>;
  readonly #ctx: Ctx;
  #podInformer: Informer<Pod> | undefined;
  #pvcInformer: Informer<Pvc> | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #beating = false;
  #beats = 0;
  #nodeUid = '';
  #stopped: Promise<void> | undefined;

  private constructor(opts: PodRunnerOptions) {
    this.#opts = opts;
    this.nodeName = opts.nodeName ?? 'consort-local';
    this.#ownsWorkDir = !opts.workDir;
    this.workDir = opts.workDir ?? mkdtempSync(join(tmpdir(), 'consort-pods-'));
    mkdirSync(this.workDir, { recursive: true });
    this.client = KubeClient.fromKubeconfig(opts.kubeconfig);
    this.#capacity = { cpu: '64', memory: '256Gi', pods: '500', 'ephemeral-storage': '1Ti', 'nvidia.com/gpu': '8', ...opts.capacity };
    const server = new URL(this.client.server);
    const cluster = this.client.config.getCurrentCluster();
    const caData = cluster?.caData ? Buffer.from(cluster.caData, 'base64').toString('utf8') : cluster?.caFile ? readFileSync(cluster.caFile, 'utf8') : '';
    const inherit = opts.inheritEnv ?? DEFAULT_INHERIT;
    const port = server.port || (server.protocol === 'https:' ? '443' : '80');
    this.#ctx = {
      client: this.client,
      nodeName: this.nodeName,
      signal: this.#ctl.signal,
      claims: opts.claims ?? {},
      inherited: Object.fromEntries(inherit.flatMap((k) => (process.env[k] !== undefined ? [[k, process.env[k]!]] : []))),
      // What the kubelet tells every container about the API server, here its loopback address.
      serviceEnv: {
        KUBERNETES_SERVICE_HOST: server.hostname,
        KUBERNETES_SERVICE_PORT: port,
        KUBERNETES_SERVICE_PORT_HTTPS: port,
        KUBERNETES_PORT: `tcp://${server.hostname}:${port}`,
      },
      allocatable: this.#capacity,
      caData,
      backoff: opts.restartBackoffMs ?? { initial: 500, max: 5000 },
      maxGraceMs: opts.maxGraceMs ?? 5000,
      log: (line) => this.#log(line),
      command: (c) => this.#command(c),
      track: (p) => this.#track(p),
    };
  }

  /** Registers the node, starts its heartbeat and the Pod watch; resolves once the first list is in. */
  static async start(opts: PodRunnerOptions): Promise<PodRunner> {
    const runner = new PodRunner(opts);
    try {
      await runner.#start();
    } catch (err) {
      await runner.stop();
      throw err;
    }
    return runner;
  }

  #log(line: string): void {
    this.#opts.log?.(`pod-runner ${this.nodeName}: ${line}`);
  }

  #track(p: Promise<unknown>): void {
    const tracked = p.catch((err) => this.#log(`error: ${(err as Error).stack ?? err}`)).finally(() => this.#inflight.delete(tracked));
    this.#inflight.add(tracked);
  }

  #command(c: V1Container): { prefix: string[]; words: string[] } {
    const image = c.image ?? '';
    const command = c.command ?? [];
    const args = c.args ?? [];
    if (command[0] === 'consort') return { prefix: [...CONSORT_COMMAND], words: [...command.slice(1), ...args] };
    const prefix = this.#opts.images?.(image);
    if (prefix) return { prefix, words: [...command, ...args] };
    const repo = image.replace(/[@:][^/]*$/, '');
    if (repo === CONSORT_IMAGE && command.length === 0) return { prefix: [...CONSORT_COMMAND], words: args };
    if (command.length) return { prefix: [], words: [...command, ...args] };
    throw new WaitingError('ErrImagePull', `image ${JSON.stringify(image)} has no local command (PodRunner option images) and the container gives no command`);
  }

  async #start(): Promise<void> {
    await this.#registerNode();
    await this.#renewLease();
    this.#heartbeat = setInterval(() => void this.#beat(), this.#opts.heartbeatMs ?? 5000);
    this.#heartbeat.unref();
    const informerOpts = { watchTimeoutSeconds: 120, stallMs: 90_000, backoffMs: { initial: 200, max: 2000 }, log: (l: string) => this.#log(l) };
    if (Object.keys(this.#ctx.claims).length) {
      this.#pvcInformer = new Informer<Pvc>(this.client, { path: '/api/v1/persistentvolumeclaims', ...informerOpts }).on({
        upsert: (pvc) => this.#guard(() => this.#onClaim(pvc)),
        deleted: (pvc) => this.#guard(() => this.#onClaimDeleted(pvc)),
      });
      this.#pvcInformer.start();
    }
    this.#podInformer = new Informer<Pod>(this.client, { path: '/api/v1/pods', fieldSelector: `spec.nodeName=${this.nodeName}`, ...informerOpts }).on({
      upsert: (pod) => this.#guard(() => this.#onPod(pod)),
      deleted: (pod) => this.#guard(() => this.#onPodDeleted(pod)),
    });
    this.#podInformer.start();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, fail) => {
      timer = setTimeout(() => fail(new Error('pod-runner: the Pod list did not come in 30 s')), 30_000);
    });
    try {
      await Promise.race([this.#podInformer.waitForSync(), timeout]);
    } finally {
      clearTimeout(timer);
    }
    this.#log(`node registered; watching its Pods (work dir ${this.workDir})`);
  }

  /** An event handler never throws into the informer's loop. */
  #guard(fn: () => void): void {
    try {
      if (!this.#ctl.signal.aborted) fn();
    } catch (err) {
      this.#log(`event handler failed: ${(err as Error).stack ?? err}`);
    }
  }

  // --- node ---

  #nodeStatus(): Record<string, unknown> {
    const t = now();
    const cond = (type: string, status: string, reason: string, msg: string) => ({
      type,
      status,
      reason,
      message: msg,
      lastHeartbeatTime: t,
      lastTransitionTime: t,
    });
    return {
      capacity: this.#capacity,
      allocatable: this.#capacity,
      conditions: [
        cond('MemoryPressure', 'False', 'KubeletHasSufficientMemory', 'kubelet has sufficient memory available'),
        cond('DiskPressure', 'False', 'KubeletHasNoDiskPressure', 'kubelet has no disk pressure'),
        cond('PIDPressure', 'False', 'KubeletHasSufficientPID', 'kubelet has sufficient PID available'),
        cond('Ready', 'True', 'KubeletReady', 'consort pod runner is posting ready status'),
      ],
      addresses: [
        { type: 'InternalIP', address: HOST_IP },
        { type: 'Hostname', address: this.nodeName },
      ],
      daemonEndpoints: { kubeletEndpoint: { Port: 0 } },
      nodeInfo: {
        machineID: this.nodeName,
        systemUUID: this.nodeName,
        bootID: `${process.pid}`,
        kernelVersion: '',
        osImage: 'consort pod runner',
        containerRuntimeVersion: 'pod-runner://1',
        kubeletVersion: 'v1.35.4',
        kubeProxyVersion: '',
        operatingSystem: 'linux',
        architecture: 'amd64',
      },
    };
  }

  async #registerNode(): Promise<void> {
    const labels = {
      'kubernetes.io/hostname': this.nodeName,
      'kubernetes.io/os': 'linux',
      'kubernetes.io/arch': 'amd64',
      'consort.dev/pod-runner': 'true',
    };
    const path = `/api/v1/nodes/${this.nodeName}`;
    let node: KubeObject;
    try {
      node = await this.client.create('/api/v1/nodes', {
        apiVersion: 'v1',
        kind: 'Node',
        metadata: { name: this.nodeName, labels },
        spec: {},
        status: this.#nodeStatus(),
      });
    } catch (err) {
      if (!isConflict(err)) throw err;
      // Left by an earlier runner: take it over.
      node = await this.client.patch(path, { metadata: { labels }, spec: { unschedulable: null } });
    }
    this.#nodeUid = node.metadata.uid ?? '';
    await this.client.patch(`${path}/status`, { status: this.#nodeStatus() });
  }

  async #renewLease(): Promise<void> {
    const path = `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/${this.nodeName}`;
    const spec = { holderIdentity: this.nodeName, leaseDurationSeconds: 40, renewTime: microNow() };
    try {
      await this.client.patch(path, { spec });
    } catch (err) {
      if (!isNotFound(err)) throw err;
      await this.client.create('/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases', {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: {
          name: this.nodeName,
          namespace: 'kube-node-lease',
          ownerReferences: [{ apiVersion: 'v1', kind: 'Node', name: this.nodeName, uid: this.#nodeUid }],
        },
        spec,
      });
    }
  }

  async #beat(): Promise<void> {
    if (this.#beating || this.#ctl.signal.aborted) return;
    this.#beating = true;
    try {
      await this.#renewLease();
      if (++this.#beats % 4 === 0) await this.client.patch(`/api/v1/nodes/${this.nodeName}/status`, { status: { conditions: this.#nodeStatus().conditions } });
    } catch (err) {
      if (!this.#ctl.signal.aborted) this.#log(`heartbeat failed: ${message(err)}`);
      // The node object may be gone (a test deleted it): register again.
      if (isNotFound(err)) await this.#registerNode().catch(() => {});
    } finally {
      this.#beating = false;
    }
  }

  // --- pods ---

  #onPod(pod: Pod): void {
    const key = keyOf(pod);
    let work = this.#pods.get(key);
    if (work && work.uid !== pod.metadata.uid) {
      // Deleted and created again under the same name while we were not looking.
      this.#track(work.abandon());
      this.#pods.delete(key);
      work = undefined;
    }
    if (work) {
      work.update(pod);
      return;
    }
    const phase = pod.status?.phase;
    if (!pod.metadata.deletionTimestamp && (phase === 'Succeeded' || phase === 'Failed')) return;
    const dir = join(this.workDir, pod.metadata.namespace ?? 'default', `${pod.metadata.name}-${(pod.metadata.uid ?? '').slice(0, 8)}`);
    work = new PodWork(this.#ctx, pod, dir);
    this.#pods.set(key, work);
    this.#dirs.set(key, dir);
    if (pod.metadata.deletionTimestamp) this.#track(work.delete());
    else this.#track(work.start());
  }

  #onPodDeleted(pod: Pod): void {
    const key = keyOf(pod);
    const work = this.#pods.get(key);
    if (!work || work.uid !== pod.metadata.uid) return;
    this.#pods.delete(key);
    this.#track(work.abandon());
  }

  // --- claims (the volume binder's part) ---

  #pvName(pvc: Pvc): string {
    return `pvc-${pvc.metadata.uid}`;
  }

  #onClaim(pvc: Pvc): void {
    const folder = this.#ctx.claims[pvc.metadata.name];
    if (folder === undefined || !pvc.metadata.uid) return;
    if (pvc.metadata.deletionTimestamp) {
      if (pvc.metadata.finalizers?.includes(PVC_PROTECTION) && pvc.spec.volumeName === this.#pvName(pvc)) this.#track(this.#releaseClaim(pvc));
      return;
    }
    if (pvc.spec.volumeName || this.#binding.has(pvc.metadata.uid)) return;
    this.#binding.add(pvc.metadata.uid);
    this.#track(this.#retry(`bind ${keyOf(pvc)}`, () => this.#bindClaim(pvc, folder)).finally(() => this.#binding.delete(pvc.metadata.uid!)));
  }

  async #bindClaim(pvc: Pvc, folder: string): Promise<void> {
    mkdirSync(folder, { recursive: true });
    const ns = pvc.metadata.namespace ?? 'default';
    const name = this.#pvName(pvc);
    const storage = pvc.spec.resources?.requests?.storage ?? '1Gi';
    const accessModes = pvc.spec.accessModes?.length ? pvc.spec.accessModes : ['ReadWriteOnce'];
    try {
      await this.client.create('/api/v1/persistentvolumes', {
        apiVersion: 'v1',
        kind: 'PersistentVolume',
        metadata: { name, labels: { 'consort.dev/pod-runner': this.nodeName } },
        spec: {
          capacity: { storage },
          accessModes,
          hostPath: { path: folder },
          persistentVolumeReclaimPolicy: 'Retain',
          storageClassName: pvc.spec.storageClassName ?? '',
          volumeMode: pvc.spec.volumeMode ?? 'Filesystem',
          claimRef: { apiVersion: 'v1', kind: 'PersistentVolumeClaim', namespace: ns, name: pvc.metadata.name, uid: pvc.metadata.uid },
        },
      });
    } catch (err) {
      if (!isConflict(err)) throw err;
    }
    await this.client.patch(`/api/v1/persistentvolumes/${name}/status`, { status: { phase: 'Bound' } });
    const path = `/api/v1/namespaces/${ns}/persistentvolumeclaims/${pvc.metadata.name}`;
    await this.client.patch(path, {
      metadata: { uid: pvc.metadata.uid, annotations: { 'pv.kubernetes.io/bind-completed': 'yes', 'pv.kubernetes.io/bound-by-controller': 'yes' } },
      spec: { volumeName: name },
    });
    await this.client.patch(`${path}/status`, { metadata: { uid: pvc.metadata.uid }, status: { phase: 'Bound', accessModes, capacity: { storage } } });
    this.#log(`claim ${keyOf(pvc)} bound to ${name} (${folder})`);
  }

  /** pvc-protection's part: lift the finalizer once no Pod here uses the claim. */
  async #releaseClaim(pvc: Pvc): Promise<void> {
    const ns = pvc.metadata.namespace ?? 'default';
    const inUse = () =>
      [...this.#pods.values()].some(
        (w) => w.active && w.namespace === ns && (w.pod.spec.volumes ?? []).some((v) => v.persistentVolumeClaim?.claimName === pvc.metadata.name),
      );
    while (inUse() && !this.#ctl.signal.aborted) await sleep(1000, this.#ctl.signal);
    await this.#retry(`release ${keyOf(pvc)}`, async () => {
      const path = `/api/v1/namespaces/${ns}/persistentvolumeclaims/${pvc.metadata.name}`;
      const current = await this.client.get<Pvc>(path);
      if (current.metadata.uid !== pvc.metadata.uid) return;
      await this.client.patch(path, {
        metadata: { uid: pvc.metadata.uid, finalizers: (current.metadata.finalizers ?? []).filter((f) => f !== PVC_PROTECTION) },
      });
    });
  }

  #onClaimDeleted(pvc: Pvc): void {
    if (this.#ctx.claims[pvc.metadata.name] === undefined || pvc.spec.volumeName !== this.#pvName(pvc)) return;
    const path = `/api/v1/persistentvolumes/${this.#pvName(pvc)}`;
    this.#track(
      this.#retry(`remove ${path}`, async () => {
        await this.client.delete(path);
        await this.client.patch(path, {
          metadata: { finalizers: (await this.client.get(path)).metadata.finalizers?.filter((f) => f !== PV_PROTECTION) ?? [] },
        });
      }),
    );
  }

  /** Retries `fn` through API errors until it succeeds, answers 404, or the runner stops. */
  async #retry(what: string, fn: () => Promise<void>): Promise<void> {
    for (let backoff = 200; !this.#ctl.signal.aborted; backoff = Math.min(backoff * 2, 5000)) {
      try {
        await fn();
        return;
      } catch (err) {
        if (isNotFound(err) || this.#ctl.signal.aborted) return;
        this.#log(`${what} failed, retrying: ${message(err)}`);
        await sleep(backoff, this.#ctl.signal);
      }
    }
  }

  // --- for tests ---

  /** The output (stdout and stderr) of a Pod's containers, all runs appended; `==> name <==` headers when there are several. */
  /** Every Pod this runner has run (namespace/name), also those gone since. */
  podKeys(): string[] {
    return [...this.#dirs.keys()];
  }

  logs(namespace: string, name: string, container?: string): string {
    const dir = this.#dirs.get(`${namespace}/${name}`);
    if (!dir) return '';
    const read = (file: string) => {
      try {
        return readFileSync(join(dir, 'logs', file), 'utf8');
      } catch {
        return '';
      }
    };
    if (container) return read(`${container}.log`);
    let files: string[] = [];
    try {
      files = readdirSync(join(dir, 'logs')).filter((f) => f.endsWith('.log'));
    } catch {}
    if (files.length === 1) return read(files[0]!);
    return files.map((f) => `==> ${f.slice(0, -4)} <==\n${read(f)}`).join('\n');
  }

  /** The local folder of a Pod (volumes/, logs/, cwd/). */
  podDir(namespace: string, name: string): string | undefined {
    return this.#dirs.get(`${namespace}/${name}`);
  }

  /** The process ids of a Pod's running containers (each the leader of its own process group). */
  pids(namespace: string, name: string): number[] {
    const work = this.#pods.get(`${namespace}/${name}`);
    return work ? work.containers().flatMap((c) => (c.proc && !c.proc.exited ? [c.proc.pid] : [])) : [];
  }

  /** SIGKILLs a Pod's container process group (all containers without `container`), as a crash would; false if none ran. */
  killPodProcess(namespace: string, name: string, container?: string): boolean {
    return this.#pods.get(`${namespace}/${name}`)?.killProcess(container) ?? false;
  }

  /** Polls the Pod until `until` holds (undefined: it does not exist); fails with its status and logs after `timeoutMs`. */
  async waitForPod(namespace: string, name: string, until: (pod: Pod | undefined) => boolean, timeoutMs = 30_000): Promise<Pod | undefined> {
    const deadline = Date.now() + timeoutMs;
    let last: Pod | undefined;
    let error = '';
    for (;;) {
      try {
        last = await this.client.get<Pod>(`/api/v1/namespaces/${namespace}/pods/${name}`);
        error = '';
      } catch (err) {
        if (isNotFound(err)) last = undefined;
        else error = message(err);
      }
      if (!error && until(last)) return last;
      if (Date.now() > deadline) {
        throw new Error(
          `pod ${namespace}/${name}: condition not met after ${timeoutMs} ms${error ? ` (${error})` : ''}\nstatus: ${JSON.stringify(last?.status ?? 'absent', null, 1)}\nlogs:\n${this.logs(namespace, name).slice(-4000)}`,
        );
      }
      await sleep(200);
    }
  }

  /** Stops the watches and the heartbeat and kills every process group it started; safe to call twice. */
  stop(): Promise<void> {
    this.#stopped ??= (async () => {
      this.#ctl.abort();
      clearInterval(this.#heartbeat);
      const bounded = (p: Promise<void> | undefined) => Promise.race([p, sleep(3000)]).catch(() => {});
      await Promise.all([bounded(this.#podInformer?.stop()), bounded(this.#pvcInformer?.stop())]);
      await Promise.allSettled([...this.#pods.values()].map((w) => w.abandon(1000)));
      await Promise.race([Promise.allSettled([...this.#inflight]), sleep(5000)]);
      if (this.#ownsWorkDir) rmSync(this.workDir, { recursive: true, force: true });
      this.#log('stopped');
    })();
    return this.#stopped;
  }
}
