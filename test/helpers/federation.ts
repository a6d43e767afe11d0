// A job over a real nats-server, its coordinator and sites each a `consort` process of its own,
// the way they run in Pods: the job's generated configuration (natsAuthFor) on a harness server,
// seeds and keys in a temporary folder, and an observer connected with the coordinator's
// credentials that records the round notices, tasks, update and evaluation envelopes on the wire
// and asks the coordinator for its status. Every process runs in a process group of its own,
// killed in teardown whatever happened (and by a watcher if this process dies first).
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach } from 'vitest';
import { parse, stringify } from 'yaml';
import { readJobFile } from '../../cli/job-file.ts';
import { type NatsAuth, natsAuthFor, writeNatsConfigFiles } from '../../cli/nats/config.ts';
import { connectAs } from '../../cli/nats/connect.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import { type EvaluationEnvelope, Hello, RoundNotice, Task, type UpdateEnvelope } from '../../core/protocol/messages.ts';
import type { RejectionCode } from '../../core/protocol/rejections.ts';
import { buckets, jobKey, objectNames, subjects } from '../../core/protocol/subjects.ts';
import type { RunReport } from '../../core/report/run-report.ts';
import { CONSORT_BIN, REPO_ROOT } from './consort-cli.ts';
import { readReport } from './jobs.ts';
import { FAILPOINTS_ENV } from '../../worker/nats/failpoints.ts';
import { NatsServer } from './nats-server.ts';

export const HOSPITALS = join(REPO_ROOT, 'manifests/examples/hospitals.yaml');

/** The hospital example with `spec` fields replaced (one level deep: `sampling`, `aggregation`...), written to dir/hospitals.yaml. */
export function writeHospitalJob(dir: string, spec: Record<string, unknown>): string {
  const doc = parse(readFileSync(HOSPITALS, 'utf8')) as { spec: Record<string, unknown> };
  for (const [k, v] of Object.entries(spec)) {
    const old = doc.spec[k];
    doc.spec[k] = typeof v === 'object' && v !== null && !Array.isArray(v) && typeof old === 'object' ? { ...old, ...v } : v;
  }
  const path = join(dir, 'hospitals.yaml');
  writeFileSync(path, stringify(doc));
  return path;
}

/** What a finished run wrote: its report, the model's hash and the bytes of model.safetensors. */
export interface RunOutput {
  report: RunReport;
  sha: string;
  weights: Buffer;
}

export function readOutput(outDir: string): RunOutput {
  const report = readReport(outDir);
  return { report, sha: report.final.modelSha256, weights: readFileSync(join(outDir, 'model.safetensors')) };
}

/** Polls `cond` every 20 ms until it holds; throws after `timeoutMs` with `what` and `context()` (logs). */
export async function until<T>(
  cond: () => T | undefined | false | Promise<T | undefined | false>,
  what: string,
  timeoutMs = 30_000,
  context?: () => string,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${context ? `\n${context()}` : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// ---- processes ------------------------------------------------------------------------------

const groups = new Set<number>();
let exitHook = false;
function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // ESRCH: gone already.
  }
}

// Kills the group $0 when its stdin, a pipe from this process, reaches EOF: this process died
// without teardown (SIGKILL, a crashed runner). SIGKILL ends a stopped (paused) process too.
const WATCHER = 'while read -r _; do :; done; kill -KILL "-$0" 2>/dev/null';

/** A `consort` command running as a process group of its own, its output kept for waits and assertion messages. */
export class ConsortProcess {
  readonly label: string;
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #out = '';

  constructor(label: string, args: string[], env: Record<string, string> = {}) {
    this.label = label;
    this.child = spawn(process.execPath, [CONSORT_BIN, ...args], {
      cwd: REPO_ROOT,
      env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: '2', NO_COLOR: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const pgid = this.child.pid;
    if (pgid === undefined) throw new Error(`${label}: spawn failed`);
    groups.add(pgid);
    if (!exitHook) {
      exitHook = true;
      process.on('exit', () => {
        for (const id of groups) signalGroup(id, 'SIGKILL');
      });
    }
    const watcher = spawn('sh', ['-c', WATCHER, String(pgid)], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
    watcher.unref();
    (watcher.stdin as Socket).unref();
    const append = (chunk: Buffer) => {
      this.#out += chunk.toString('utf8');
    };
    this.child.stdout!.on('data', append);
    this.child.stderr!.on('data', append);
    this.exited = new Promise((done) => {
      this.child.on('close', (code, signal) => {
        groups.delete(pgid);
        watcher.kill('SIGKILL');
        done({ code, signal });
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }
  output(): string {
    return this.#out;
  }

  /** Resolves with the first match of `pattern` in the output (from `from` on), polling. */
  waitFor(pattern: RegExp, timeoutMs = 60_000, from = 0, context = () => this.tail()): Promise<RegExpMatchArray> {
    return until(
      () => this.#out.slice(from).match(pattern) ?? (this.running ? undefined : Promise.reject(this.#died(pattern))),
      `${this.label}: ${pattern}`,
      timeoutMs,
      context,
    );
  }

  #died(pattern: RegExp): Error {
    return new Error(`${this.label} exited (${this.child.exitCode ?? this.child.signalCode}) before printing ${pattern}\n${this.tail()}`);
  }

  tail(lines = 40): string {
    return `--- ${this.label} (pid ${this.pid}) ---\n${this.#out.split('\n').slice(-lines).join('\n')}`;
  }

  signal(signal: NodeJS.Signals): void {
    signalGroup(this.pid, signal);
  }
  /** SIGSTOP: the process keeps its connection but does nothing until resume(). */
  pause(): void {
    this.signal('SIGSTOP');
  }
  resume(): void {
    this.signal('SIGCONT');
  }
  /** SIGKILL, and waits until it is gone. */
  async kill(): Promise<void> {
    this.signal('SIGKILL');
    await this.exited;
  }
}

// ---- the federation -------------------------------------------------------------------------

/** What the coordinator answers on `subjects(job).status`. */
export interface CoordinatorStatus {
  job: string;
  round: number;
  done: boolean;
  joined: string[];
  alive: string[];
  rejections: Partial<Record<RejectionCode, number>>;
  duplicates: number;
  accepted: number;
  stray: number;
}

/** A message the observer saw: subject, bytes, parsed value, and when (Date.now()). */
export interface Seen<T> {
  subject: string;
  data: Uint8Array;
  value: T;
  at: number;
}

const decoder = new TextDecoder();
const parseJson = (data: Uint8Array): unknown => {
  try {
    return JSON.parse(decoder.decode(data));
  } catch {
    return undefined;
  }
};

export class Federation {
  readonly dir: string;
  readonly jobPath: string;
  readonly job: FederatedJob;
  readonly key: string;
  readonly subj: ReturnType<typeof subjects>;
  readonly bucket: ReturnType<typeof buckets>;
  readonly auth: NatsAuth;
  readonly server: NatsServer;
  /** Connected as the coordinator's user: sees what the coordinator sees, answers nothing. */
  readonly observer: NatsConnection;
  readonly processes: ConsortProcess[] = [];
  readonly notices: Seen<RoundNotice>[] = [];
  readonly tasks: Seen<Task>[] = [];
  readonly hellos: Seen<Hello>[] = [];
  readonly updates: Seen<UpdateEnvelope>[] = [];
  readonly evaluations: Seen<EvaluationEnvelope>[] = [];
  readonly #clients: NatsConnection[] = [];

  private constructor(dir: string, jobPath: string, auth: NatsAuth, server: NatsServer, observer: NatsConnection) {
    this.dir = dir;
    this.jobPath = jobPath;
    this.job = readJobFile(jobPath);
    this.key = jobKey(this.job.metadata);
    this.subj = subjects(this.key);
    this.bucket = buckets(this.key);
    this.auth = auth;
    this.server = server;
    this.observer = observer;
    const record = <T>(subject: string, into: Seen<T>[], parse: (v: unknown) => T | undefined) =>
      observer.subscribe(subject, {
        callback: (err, msg) => {
          if (err) return;
          const value = parse(parseJson(msg.data));
          if (value === undefined) return;
          into.push({ subject: msg.subject, data: msg.data, value, at: Date.now() });
        },
      });
    record(this.subj.round, this.notices, (v) => RoundNotice.safeParse(v).data);
    record(this.subj.task('*'), this.tasks, (v) => Task.safeParse(v).data);
    record(this.subj.helloAll, this.hellos, (v) => Hello.safeParse(v).data);
    // Envelopes as sent, whatever the coordinator makes of them (it parses them itself).
    record(this.subj.updateAll, this.updates, (v) => v as UpdateEnvelope);
    record(this.subj.evaluationAll, this.evaluations, (v) => v as EvaluationEnvelope);
  }

  /** A harness nats-server with the job's configuration, the seeds and keys in `dir`, and the observer connected. */
  static async start(dir: string, jobPath: string): Promise<Federation> {
    const job = readJobFile(jobPath);
    const auth = natsAuthFor(job);
    writeNatsConfigFiles(join(dir, 'nats'), auth);
    const server = await NatsServer.start({ config: auth.config });
    try {
      const observer = await connectAs(server.url, auth.coordinator.seed, COORDINATOR_USER);
      const f = new Federation(dir, jobPath, auth, server, observer);
      await observer.flush();
      return f;
    } catch (err) {
      await server.stop();
      throw err;
    }
  }

  get siteNames(): string[] {
    return this.job.spec.sites.map((s) => s.name);
  }

  /** `consort coordinator JOB --nats URL --creds coordinator.nk --keys keys.json --out OUT`. */
  coordinator(out: string, ...flags: string[]): ConsortProcess {
    return this.coordinatorWith({}, out, ...flags);
  }

  /** coordinator() with more environment (its failpoints: CONSORT_COORDINATOR_FAILPOINTS). */
  coordinatorWith(env: Record<string, string>, out: string, ...flags: string[]): ConsortProcess {
    const n = join(this.dir, 'nats');
    const label = `coordinator #${this.processes.filter((p) => p.label.startsWith('coordinator')).length + 1}`;
    return this.consort(
      label,
      ['coordinator', this.jobPath, '--nats', this.server.url, '--creds', join(n, 'coordinator.nk'), '--keys', join(n, 'keys.json'), '--out', out, ...flags],
      env,
    );
  }

  /**
   * `consort site --job JOB --site NAME --nats URL --creds sites/NAME.nk`; `stopAfterAck`: the
   * tasks (`fit:3`, `evaluate:5`) after whose acknowledgement it stops itself (SIGSTOP) until
   * resumed (worker/nats/failpoints.ts), each logged as `failpoint: stopped` first; `more`: further
   * flags, and failpoints as CONSORT_FAILPOINTS spells them (`stop-before-answer:fit:3`).
   */
  site(name: string, stopAfterAck: string[] = [], more: { args?: string[]; failpoints?: string[] } = {}): ConsortProcess {
    const label = `site ${name} #${this.processes.filter((p) => p.label.startsWith(`site ${name} `)).length + 1}`;
    const failpoints = [...stopAfterAck.map((t) => `stop-after-ack:${t}`), ...(more.failpoints ?? [])];
    const env: Record<string, string> = failpoints.length ? { [FAILPOINTS_ENV]: failpoints.join(',') } : {};
    return this.consort(
      label,
      [
        'site',
        '--job',
        this.jobPath,
        '--site',
        name,
        '--nats',
        this.server.url,
        '--creds',
        join(this.dir, 'nats', 'sites', `${name}.nk`),
        ...(more.args ?? []),
      ],
      env,
    );
  }

  /** Any `consort` command, as a process group of this federation's (killed in teardown). */
  consort(label: string, args: string[], env: Record<string, string> = {}): ConsortProcess {
    const p = new ConsortProcess(label, args, env);
    this.processes.push(p);
    return p;
  }

  /**
   * `consort run JOB --out OUT FLAGS...` to its end, and what it wrote: with no --nats, the
   * in-process run that the runs over NATS must equal. JOB is this federation's unless given.
   * Started at once; a failure is reported where the promise is awaited, never as an unhandled
   * rejection before.
   */
  run(out: string, flags: string[] = [], job = this.jobPath): Promise<RunOutput> {
    const p = this.consort(`consort run ${flags.join(' ')}`.trim(), ['run', job, '--quiet', '--out', out, ...flags]);
    const result = p.exited.then(({ code, signal }) => {
      if (code !== 0) throw new Error(`consort run ${flags.join(' ')} ended with ${code ?? signal}\n${p.tail()}`);
      return readOutput(out);
    });
    result.catch(() => {});
    return result;
  }

  /** One process per site of the job, by name; `stopAfterAck`: per site, as site() takes it. */
  sites(names = this.siteNames, stopAfterAck: Record<string, string[]> = {}): Record<string, ConsortProcess> {
    return Object.fromEntries(names.map((s) => [s, this.site(s, stopAfterAck[s])]));
  }

  /** Waits until `site` has stopped itself at its failpoint after acknowledging `task` (`fit:3`). */
  async stoppedAt(site: ConsortProcess, task: string): Promise<void> {
    const [type, round] = task.split(':');
    // Every process's log on a timeout: a site that never gets there usually waits on the coordinator.
    await site.waitFor(new RegExp(`failpoint: stopped after acknowledging the ${type} task of round ${round}\\b`), 60_000, 0, () => this.logs());
  }

  /** A connection with a site's own credentials (what a hostile site can do). */
  async connectAsSite(name: string): Promise<NatsConnection> {
    const nc = await connectAs(this.server.url, this.auth.sites[name]!.seed, name);
    this.#clients.push(nc);
    return nc;
  }

  /**
   * Lifts the cap the coordinator put on `site`'s update bucket (what a site may store at once:
   * the updates of the rounds still open), with the coordinator's credentials: for a test that
   * plants more objects there than a site ever could, to see what the coordinator makes of each.
   */
  async liftUpdateCap(site: string): Promise<void> {
    const jsm = await jetstreamManager(this.observer);
    const stream = `OBJ_${this.bucket.updates(site)}`;
    const { config } = await jsm.streams.info(stream);
    await jsm.streams.update(stream, { ...config, max_bytes: -1 });
  }

  /** The coordinator's status (a request on subjects(job).status); undefined when no coordinator answers. */
  async status(timeoutMs = 2000): Promise<CoordinatorStatus | undefined> {
    try {
      const reply = await this.observer.request(this.subj.status, '', { timeout: timeoutMs });
      return JSON.parse(decoder.decode(reply.data)) as CoordinatorStatus;
    } catch {
      return undefined;
    }
  }

  /** The checkpoint object in the job's state bucket, read with the coordinator's credentials (null if none). */
  async checkpoint(): Promise<Uint8Array | null> {
    const state = await new Objm(this.observer).open(this.bucket.state);
    return await state.getBlob(objectNames.checkpoint);
  }

  /**
   * The objects stored now (names, and bytes of each bucket's stream): the models bucket's and
   * each site's updates bucket's, read with the coordinator's credentials.
   */
  async storedObjects(): Promise<{ models: string[]; updates: string[]; bytes: number }> {
    const objm = new Objm(this.observer);
    const names = async (bucket: string) => {
      const store = await objm.open(bucket).catch(() => undefined);
      if (!store) return { names: [], bytes: 0 };
      const [list, status] = await Promise.all([store.list(), store.status()]);
      return { names: list.filter((i) => !i.deleted).map((i) => i.name), bytes: status.size };
    };
    const models = await names(this.bucket.models);
    const sites = await Promise.all(this.siteNames.map((s) => names(this.bucket.updates(s))));
    return { models: models.names, updates: sites.flatMap((u) => u.names), bytes: models.bytes + sites.reduce((n, u) => n + u.bytes, 0) };
  }

  /** Resolves once the coordinator announced round `round` (phase `started` unless given). */
  notice(round: number, phase: RoundNotice['phase'] = 'started', timeoutMs = 60_000): Promise<Seen<RoundNotice>> {
    return until(
      () => this.notices.find((n) => n.value.round === round && n.value.phase === phase),
      `the ${phase} notice of round ${round}`,
      timeoutMs,
      () => this.logs(),
    );
  }

  /** Resolves with the first task of `type` for `round` to each site once `count` sites were sent one. */
  async tasksOf(type: Task['type'], round: number, count = 1, timeoutMs = 60_000): Promise<Seen<Task>[]> {
    return until(
      () => {
        const seen = new Map<string, Seen<Task>>();
        for (const t of this.tasks) if (t.value.type === type && t.value.round === round && !seen.has(t.value.site)) seen.set(t.value.site, t);
        return seen.size >= count ? [...seen.values()] : undefined;
      },
      `${count} ${type} task(s) of round ${round}`,
      timeoutMs,
      () => this.logs(),
    );
  }

  /** The first update envelope `site` sent for `round`, once on the wire. */
  updateOf(site: string, round: number, timeoutMs = 60_000): Promise<Seen<UpdateEnvelope>> {
    return until(
      () => this.updates.find((u) => u.value.site === site && u.value.round === round),
      `the update of ${site} for round ${round}`,
      timeoutMs,
      () => this.logs(),
    );
  }

  /** The first evaluation envelope `site` sent for `round`, once on the wire. */
  evaluationOf(site: string, round: number, timeoutMs = 60_000): Promise<Seen<EvaluationEnvelope>> {
    return until(
      () => this.evaluations.find((e) => e.value.site === site && e.value.round === round),
      `the evaluation of ${site} for round ${round}`,
      timeoutMs,
      () => this.logs(),
    );
  }

  /** Polls the status until `cond` holds on it. */
  statusWhere(cond: (s: CoordinatorStatus) => boolean, what: string, timeoutMs = 60_000): Promise<CoordinatorStatus> {
    return until(
      async () => {
        const s = await this.status(1000);
        return s && cond(s) ? s : undefined;
      },
      `a status where ${what}`,
      timeoutMs,
      () => this.logs(),
    );
  }

  /**
   * Holds round `round` open: `site`, started to stop itself after acknowledging its fit task of
   * that round (`site(name, ['fit:<round>'])`), has stopped, and every other site's update of that
   * round is counted; resolves with that status. `resume()` the site to let the round close.
   */
  async hold(site: ConsortProcess, name: string, round: number): Promise<CoordinatorStatus> {
    await this.stoppedAt(site, `fit:${round}`);
    const others = this.siteNames.length - 1;
    const status = await this.statusWhere((s) => s.round === round && s.accepted === others, `round ${round} has ${others} updates counted`);
    if (this.updates.some((u) => u.value.site === name && u.value.round === round)) {
      throw new Error(`hold missed: ${name} answered round ${round} before it stopped`);
    }
    return status;
  }

  /** The last lines of every process's output, for assertion messages. */
  logs(lines = 25): string {
    return this.processes.map((p) => p.tail(lines)).join('\n');
  }

  /** Kills every process group (SIGCONT first, so a paused one dies too), closes the clients, stops the server. */
  async stop(): Promise<void> {
    for (const p of this.processes) {
      p.resume();
      p.signal('SIGKILL');
    }
    await Promise.all(this.processes.map((p) => p.exited));
    await Promise.all([this.observer, ...this.#clients].map((nc) => nc.close().catch(() => {})));
    await this.server.stop();
  }
}

/**
 * Returns a function that starts a Federation in a fresh temporary folder; every one started is
 * stopped, and its folder removed, after each test (or after the file, `scope: 'file'`).
 */
export function useFederations(scope: 'test' | 'file' = 'test'): (spec: Record<string, unknown>, label?: string) => Promise<Federation> {
  const made: Array<{ dir: string; federation?: Federation }> = [];
  const cleanup = async () => {
    for (const m of made.splice(0)) {
      await m.federation?.stop();
      rmSync(m.dir, { recursive: true, force: true });
    }
  };
  if (scope === 'test') afterEach(cleanup);
  afterAll(cleanup);
  return async (spec, label = 'consort-nats-e2e') => {
    const entry: { dir: string; federation?: Federation } = { dir: mkdtempSync(join(tmpdir(), `${label}-`)) };
    made.push(entry);
    entry.federation = await Federation.start(entry.dir, writeHospitalJob(entry.dir, spec));
    return entry.federation;
  };
}
