// The operator at scale: 200 FederatedJobs created at once on a real control plane (etcd,
// kube-apiserver, controller manager, scheduler), one `consort operator` process running with
// the RBAC it ships and --metrics-port, every job's round loop inside it. Each job has two
// sites of a few synthetic patients and a logistic model, two rounds of one epoch: the sites'
// training costs milliseconds, so what is measured is the operator. Worker Pods stay Pending
// (a schedulerName that no scheduler answers to): instead of 400 site processes, this process plays every
// site: when a site's credentials Secret appears, it reads the job file from the job's ConfigMap
// and runs the real site (runSite) with those credentials, as the worker Pod would.
//
// Figures: time from the first create to every job Running (or already past it) and to every
// job Succeeded; work-queue latency p50/p99 (from the operator's own histogram, as Prometheus'
// histogram_quantile computes it; the share under 0.5 s is exact, 0.5 s being a bucket bound);
// reconciles per job (mean and max, from consort_job_reconciles_total) and reconciles during a
// quiet period after the last job finished (a hot loop would show there); the operator's peak
// RSS (VmHWM of its process), run with the Node flags of its Deployment. Beside them, what
// explains them: reconcile and API request latency as the operator sees them, API requests per
// job, and the CPU seconds of every process of the run. On a 2-core machine that also runs etcd,
// the API server, nats-server and the 400 sites, the API server's throughput (~100 requests/s)
// bounds the burst: 200 jobs × ~13 requests take it ~25 s, and a key queued behind that backlog
// waits for it whatever the number of workers (more workers move the wait into the API server).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../cli/nats/server.ts';
import type { NatsConnection } from '@nats-io/transport-node';
import { connectAs, readSeed } from '../../cli/nats/connect.ts';
import { parseJob } from '../../cli/job-file.ts';
import { API_VERSION, KIND, type FederatedJob } from '../../core/job/federated-job.ts';
import { LABELS, names } from '../../operator/controller/manifests.ts';
import { QUEUE_LATENCY_BUCKETS } from '../../operator/metrics.ts';
import { isNotFound, KubeClient, type KubeObject, resourcePath, Resources } from '../../operator/kube/client.ts';
import { Informer } from '../../operator/kube/informer.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { ConsortCluster } from '../helpers/consort-cluster.ts';
import { parse } from 'yaml';
import { fixed, printTable } from './table.ts';

export interface OperatorScaleArgs {
  quick: boolean;
}

const NAMESPACE = 'default';
const SITES = ['north', 'south'];
const TARGETS = {
  p99Seconds: 0.5,
  rssBytes: 300e6,
  /**
   * A job's own changes re-queue it: its creation, the finalizer, its ConfigMap, three Secrets,
   * two Pods (created, marked unschedulable, deleted at the end), its status writes (Pending,
   * Running, each round, Succeeded) and its round loop's progress. About 25 events, many
   * merged by the queue; 30 bounds it with room, and a hot loop exceeds any bound.
   */
  reconcilesPerJob: 30,
};
const QUIET_MS = 5000;
const MB = 1e6;

function manifest(i: number): Record<string, unknown> {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name: `scale-${String(i).padStart(3, '0')}`, namespace: NAMESPACE },
    spec: {
      model: { type: 'logistic' },
      sites: SITES.map((name, k) => ({
        name,
        data: { type: 'synthetic', generator: 'hospital', samples: 40, prevalence: 0.3, shift: k * 0.3, testFraction: 0.25 },
      })),
      rounds: 2,
      training: { epochs: 1, batchSize: 16, optimizer: 'sgd', learningRate: 0.1 },
      seed: i,
      coordinator: { joinTimeoutSeconds: 120 },
      // No scheduler has this name: the worker Pods are created and stay Pending, untouched (as
      // in a cluster whose scheduler has not placed them yet); this process plays the sites.
      worker: { schedulerName: 'consort-bench-unscheduled' },
    },
  };
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The sample lines of a Prometheus exposition text. */
export function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** A quantile of a histogram's cumulative buckets (summed over its other labels), interpolated within its bucket (as histogram_quantile). */
export function histogramQuantile(samples: Sample[], name: string, q: number): number {
  const byBound = new Map<number, number>();
  for (const s of samples) {
    if (s.name !== `${name}_bucket`) continue;
    const le = s.labels.le === '+Inf' ? Number.POSITIVE_INFINITY : Number(s.labels.le);
    byBound.set(le, (byBound.get(le) ?? 0) + s.value);
  }
  const buckets = [...byBound].map(([le, count]) => ({ le, count })).sort((a, b) => a.le - b.le);
  const total = buckets.at(-1)?.count ?? 0;
  if (total === 0) return Number.NaN;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      // Beyond the last finite bound: only "more than that" is known.
      if (!Number.isFinite(b.le)) return Number.POSITIVE_INFINITY;
      return lower + ((b.le - lower) * (rank - below)) / Math.max(b.count - below, 1e-12);
    }
    lower = b.le;
    below = b.count;
  }
  return lower;
}

const value = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
  samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);

async function scrape(port: number): Promise<Sample[]> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return parseExposition(await res.text());
}

function procStatus(pid: number): { hwm: number; rss: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? Number.NaN) * 1024;
  return { hwm: kb('VmHWM'), rss: kb('VmRSS') };
}

/** The operator's Node flags as its Deployment sets them (NODE_OPTIONS in manifests/operator/deployment.yaml): measured as shipped. */
function deployedNodeOptions(): string[] {
  const deployment = parse(readFileSync(new URL('../../manifests/operator/deployment.yaml', import.meta.url), 'utf8')) as {
    spec: { template: { spec: { containers: { name: string; env?: { name: string; value?: string }[] }[] } } };
  };
  const operator = deployment.spec.template.spec.containers.find((c) => c.name === 'operator');
  const value = operator?.env?.find((e) => e.name === 'NODE_OPTIONS')?.value ?? '';
  return value.split(/\s+/).filter((f) => f.length > 0);
}

/** CPU seconds (user + system) a process has used so far; Linux counts them in 1/100 s. */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    // The fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return Number.NaN;
  }
}

/** Every site of every job, played in this process: started when its credentials Secret appears. */
class SiteFleet {
  readonly #client: KubeClient;
  readonly #url: string;
  readonly #dir: string;
  readonly #ctl = new AbortController();
  readonly #jobs = new Map<string, Promise<FederatedJob>>();
  readonly #running: Promise<void>[] = [];
  readonly started = new Set<string>();
  readonly failures: string[] = [];
  fits = 0;
  refused = 0;
  reconnects = 0;
  #connecting = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(client: KubeClient, url: string, dir: string) {
    this.#client = client;
    this.#url = url;
    this.#dir = dir;
  }

  /** The job file as its worker Pod would read it (the operator's ConfigMap; like the kubelet, it waits for it to exist). */
  #job(name: string): Promise<FederatedJob> {
    let p = this.#jobs.get(name);
    if (!p) {
      p = (async () => {
        const path = resourcePath(Resources.configMaps, NAMESPACE, names.jobConfig(name));
        for (let wait = 50; ; wait = Math.min(wait * 2, 1000)) {
          try {
            const cm = await this.#client.get(path);
            return parseJob((cm.data as Record<string, string>)['job.yaml']!, `configmap ${names.jobConfig(name)}`);
          } catch (err) {
            if (!isNotFound(err) || this.#ctl.signal.aborted) throw err;
            await new Promise((r) => setTimeout(r, wait));
          }
        }
      })();
      this.#jobs.set(name, p);
    }
    return p;
  }

  onSecret(s: KubeObject): void {
    const job = s.metadata.labels?.[LABELS.job];
    const site = s.metadata.labels?.[LABELS.site];
    const creds = (s.data as Record<string, string> | undefined)?.['site.creds'];
    if (!job || !site || !creds || this.started.has(`${job}/${site}`) || this.#ctl.signal.aborted) return;
    this.started.add(`${job}/${site}`);
    const file = join(this.#dir, `${job}.${site}.creds`);
    writeFileSync(file, Buffer.from(creds, 'base64'), { mode: 0o600 });
    this.#running.push(
      (async () => {
        const spec = await this.#job(job);
        const nc = await this.#connect(file, site);
        try {
          const summary = await runSite({
            job: spec,
            site,
            nc,
            seed: readSeed(file),
            baseDir: this.#dir,
            backend: 'wasm',
            log: () => {},
            signal: this.#ctl.signal,
          });
          this.fits += summary.fits;
          this.refused += summary.rejected;
        } finally {
          await nc.close().catch(() => {});
        }
      })().catch((err: unknown) => {
        if (!this.#ctl.signal.aborted) this.failures.push(`${job}/${site}: ${(err as Error).message}`);
      }),
    );
  }

  /** Connects as the site; a refused login is tried again, as the kubelet restarts a worker that exits. A few logins at a time. */
  async #connect(file: string, site: string): Promise<NatsConnection> {
    while (this.#connecting >= 16) await new Promise<void>((r) => this.#waiting.push(r));
    this.#connecting++;
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          return await connectAs(this.#url, file, site);
        } catch (err) {
          if (attempt >= 10 || this.#ctl.signal.aborted) throw err;
          this.reconnects++;
          await new Promise((r) => setTimeout(r, 500 * attempt));
        }
      }
    } finally {
      this.#connecting--;
      this.#waiting.shift()?.();
    }
  }

  async stop(): Promise<void> {
    this.#ctl.abort();
    await Promise.all(this.#running);
  }
}

/**
 * The machine's limit, measured in the same run: the API server's write rate for a plain client
 * that does nothing else (ConfigMap creates, as many in flight as the operator's workers could
 * have and more), then the objects deleted in one request. Measured with the control plane idle
 * but for it, so it is an upper bound on what the API server gives anyone during the burst.
 */
async function apiWriteRate(client: KubeClient, writes: number, inFlight: number): Promise<{ writes: number; seconds: number; perSecond: number }> {
  const path = resourcePath(Resources.configMaps, NAMESPACE);
  let next = 0;
  const t = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      for (let i = next++; i < writes; i = next++) {
        await client.create(path, {
          apiVersion: 'v1',
          kind: 'ConfigMap',
          metadata: { name: `capacity-${i}`, labels: { 'consort.dev/bench': 'capacity' } },
          data: { 'job.yaml': 'x'.repeat(1024) },
        });
      }
    }),
  );
  const seconds = (performance.now() - t) / 1000;
  await client.delete(path, { labelSelector: 'consort.dev/bench=capacity' });
  return { writes, seconds, perSecond: writes / seconds };
}

async function until(what: string, cond: () => boolean, timeoutMs: number, progress: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastReport = Date.now();
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not reached in ${timeoutMs / 1000} s (${progress()})`);
    if (Date.now() - lastReport > 15_000) {
      process.stdout.write(`   … ${progress()}\n`);
      lastReport = Date.now();
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function run(args: OperatorScaleArgs): Promise<unknown> {
  const count = args.quick ? 40 : 200;
  const say = (line: string) => process.stdout.write(`   ${line}\n`);
  const dir = mkdtempSync(join(tmpdir(), 'consort-operator-scale-'));
  let cluster: ConsortCluster | undefined;
  let operatorLog: (() => string) | undefined;
  let fleet: SiteFleet | undefined;
  const informers: Informer<KubeObject>[] = [];
  try {
    const t = performance.now();
    cluster = await ConsortCluster.start();
    const port = await freePort();
    const operator = await cluster.startOperator({
      args: ['--metrics-port', String(port), '--metrics-address', '127.0.0.1', '--no-metrics-auth'],
      nodeArgs: [
        ...deployedNodeOptions(),
        ...(process.env.CONSORT_BENCH_OPERATOR_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.CONSORT_BENCH_OPERATOR_PROF}`] : []),
      ],
    });
    operatorLog = () => operator.log(2_000_000);
    say(`control plane, nats-server and operator up in ${fixed((performance.now() - t) / 1000, 0)} s`);
    const idle = procStatus(operator.pid);
    const idleMetrics = await scrape(port);
    const ready = await fetch(`http://127.0.0.1:${port}/readyz`);
    if (ready.status !== 200) throw new Error(`the operator's /readyz answered ${ready.status}`);

    const client = KubeClient.fromKubeconfig(cluster.cp.kubeconfig);
    const capacity = await apiWriteRate(client, args.quick ? 400 : 1500, 32);
    say(
      `the API server's write rate for a plain client: ${fixed(capacity.perSecond, 0)} creates/s (${capacity.writes} in ${fixed(capacity.seconds, 1)} s, 32 in flight)`,
    );
    fleet = new SiteFleet(client, cluster.nats.url, dir);
    const running = new Map<string, number>();
    const done = new Map<string, { at: number; phase: string; why?: string }>();
    let t0 = 0;
    const jobs = new Informer<KubeObject>(client, { path: resourcePath(Resources.federatedJobs, NAMESPACE) });
    jobs.on({
      upsert: (j) => {
        const phase = (j.status as { phase?: string } | undefined)?.phase;
        const now = performance.now();
        if ((phase === 'Running' || phase === 'Succeeded' || phase === 'Failed') && !running.has(j.metadata.name)) running.set(j.metadata.name, now - t0);
        if ((phase === 'Succeeded' || phase === 'Failed') && !done.has(j.metadata.name)) {
          const failed = (j.status as { conditions?: { type: string; message?: string }[] }).conditions?.find((c) => c.type === 'Failed');
          done.set(j.metadata.name, { at: now - t0, phase, ...(failed?.message ? { why: failed.message } : {}) });
        }
      },
    });
    const secrets = new Informer<KubeObject>(client, { path: resourcePath(Resources.secrets, NAMESPACE), labelSelector: `${LABELS.role}=site` });
    const f = fleet;
    secrets.on({ upsert: (s) => f.onSecret(s) });
    informers.push(jobs, secrets);
    for (const i of informers) i.start();
    await Promise.all(informers.map((i) => i.waitForSync()));

    const c = cluster;
    const processes: Record<string, () => number> = {
      operator: () => cpuSeconds(operator.pid),
      'kube-apiserver': () => cpuSeconds(c.cp.apiserver?.pid),
      etcd: () => cpuSeconds(c.cp.etcd?.pid),
      'kube-scheduler': () => cpuSeconds(c.cp.scheduler?.pid),
      'kube-controller-manager': () => cpuSeconds(c.cp.controllerManager?.pid),
      'nats-server': () => cpuSeconds(c.nats.pid),
      'this process (the sites)': () => {
        const u = process.cpuUsage();
        return (u.user + u.system) / 1e6;
      },
    };
    const cpuAtStart = Object.fromEntries(Object.entries(processes).map(([k, f]) => [k, f()]));

    // All at once: every create in flight together (the API server takes them as they come).
    t0 = performance.now();
    const path = resourcePath(Resources.federatedJobs, NAMESPACE);
    await Promise.all(Array.from({ length: count }, (_, i) => client.create(path, manifest(i))));
    const createdMs = performance.now() - t0;
    say(`${count} FederatedJobs created in ${fixed(createdMs / 1000, 2)} s`);
    const progress = () => {
      const stuck = jobs
        .list()
        .filter((j) => !done.has(j.metadata.name))
        .slice(0, 3)
        .map((j) => `${j.metadata.name} ${JSON.stringify(j.status ?? {}).slice(0, 300)}`);
      return `${running.size}/${count} Running or later, ${done.size}/${count} finished, ${f.started.size} sites started, ${f.failures.length} failed${
        f.failures.length ? ` (${f.failures.slice(0, 3).join('; ')})` : ''
      }${stuck.length ? `; not finished: ${stuck.join('; ')}` : ''}`;
    };
    await until('every job Running', () => running.size >= count, 180_000, progress);
    const allRunningMs = Math.max(...running.values());
    say(`every job Running after ${fixed(allRunningMs / 1000, 1)} s`);
    await until('every job finished', () => done.size >= count, 240_000, progress);
    const allDoneMs = Math.max(...[...done.values()].map((d) => d.at));
    const cpu = Object.fromEntries(Object.entries(processes).map(([k, f]) => [k, f() - cpuAtStart[k]!]));
    const failed = [...done].filter(([, d]) => d.phase !== 'Succeeded').map(([n]) => n);
    say(`every job finished after ${fixed(allDoneMs / 1000, 1)} s (${count - failed.length} Succeeded)`);

    // A hot loop keeps reconciling with nothing changing: count the reconciles of a quiet period.
    // (Worker Pods are still being deleted a moment after the last job finishes: let that settle first.)
    await new Promise((r) => setTimeout(r, 2000));
    const before = await scrape(port);
    await new Promise((r) => setTimeout(r, QUIET_MS));
    const after = await scrape(port);
    const quietReconciles = value(after, 'consort_reconcile_total') - value(before, 'consort_reconcile_total');
    const mem = procStatus(operator.pid);

    const m = after;
    const perJob = m.filter((s) => s.name === 'consort_job_reconciles_total' && s.labels.federatedjob?.startsWith('scale-')).map((s) => s.value);
    const reconciles = value(m, 'consort_reconcile_total');
    const errors = value(m, 'consort_reconcile_total', { result: 'error' });
    const p50 = histogramQuantile(m, 'consort_workqueue_latency_seconds', 0.5);
    const p99 = histogramQuantile(m, 'consort_workqueue_latency_seconds', 0.99);
    const adds = value(m, 'consort_workqueue_latency_seconds_count');
    const underTarget = value(m, 'consort_workqueue_latency_seconds_bucket', { le: String(TARGETS.p99Seconds) });
    const requests = value(m, 'consort_kube_requests_total');
    const requestsBy = Object.fromEntries(
      ['GET', 'POST', 'PATCH', 'PUT', 'DELETE'].map((method) => [method, value(m, 'consort_kube_requests_total', { method })]),
    );
    const relists = value(m, 'consort_informer_relists_total');
    const heap = (x: Sample[]) =>
      `heap used ${fixed(value(x, 'nodejs_heap_size_used_bytes') / MB, 0)} of ${fixed(value(x, 'nodejs_heap_size_total_bytes') / MB, 0)} MB, external ${fixed(
        value(x, 'nodejs_external_memory_bytes') / MB,
        0,
      )} MB`;
    const meanPerJob = perJob.reduce((a, b) => a + b, 0) / Math.max(perJob.length, 1);
    const maxPerJob = Math.max(0, ...perJob);
    const reconcileP50 = histogramQuantile(m, 'consort_reconcile_duration_seconds', 0.5);
    const reconcileP99 = histogramQuantile(m, 'consort_reconcile_duration_seconds', 0.99);
    const apiP50 = histogramQuantile(m, 'consort_kube_request_duration_seconds', 0.5);
    const apiP99 = histogramQuantile(m, 'consort_kube_request_duration_seconds', 0.99);
    const apiByMethod = ['POST', 'PATCH', 'GET', 'DELETE'].map((method) => {
      const only = m.filter((x) => x.labels.method === method);
      return `${method} ${fixed(histogramQuantile(only, 'consort_kube_request_duration_seconds', 0.5) * 1000, 0)}/${fixed(
        histogramQuantile(only, 'consort_kube_request_duration_seconds', 0.99) * 1000,
        0,
      )}`;
    });

    // The floor this machine sets: a job's first reconcile writes at least its finalizer, ConfigMap,
    // coordinator Secret, a Secret and a Pod per site, and its status; the API server takes those
    // of all the burst's jobs at its write rate at best, so the job set up last cannot be set up
    // sooner, whatever the queue does. A queue that starts keys only as fast as the API server
    // absorbs their writes (more in flight only moves the wait into the API server's own queue)
    // then has a p99 latency of about 0.99 of that.
    const firstWrites = 4 + 2 * SITES.length;
    const setupFloorS = (count * firstWrites) / capacity.perSecond;
    const runFloorS = requests / capacity.perSecond;
    const tail = QUEUE_LATENCY_BUCKETS.at(-1)! * 1000;
    // A quantile past the histogram's last bound is only known to be larger than it.
    const shown = (v: number, digits: number) => (v === Number.POSITIVE_INFINITY ? `> ${fixed(tail, 0)}` : fixed(v, digits));
    const row = (what: string, figure: number, unit: string, digits: number, target: number | undefined, ok?: boolean) => [
      what,
      `${shown(figure, digits)}${unit}`,
      target === undefined ? '' : `${fixed(target, digits)}${unit}`,
      target === undefined || target === 0 ? '' : figure === Number.POSITIVE_INFINITY ? `> ${fixed(tail / target, 0)}x` : `${fixed(figure / target, 2)}x`,
      target === undefined ? '' : (ok ?? figure <= target) ? 'yes' : 'NO',
    ];
    printTable(
      `Operator at scale: ${count} FederatedJobs created at once (2 sites each, logistic model, 2 rounds), one operator`,
      ['figure', 'measured', 'target', 'measured / target', 'meets'],
      [
        row('work-queue latency p50', p50 * 1000, ' ms', 1, undefined),
        row('work-queue latency p99', p99 * 1000, ' ms', 1, TARGETS.p99Seconds * 1000, underTarget >= 0.99 * adds),
        row('operator peak RSS (VmHWM)', mem.hwm / MB, ' MB', 0, TARGETS.rssBytes / MB),
        row('reconciles per job, mean', meanPerJob, '', 1, TARGETS.reconcilesPerJob),
        row('reconciles per job, max', maxPerJob, '', 0, TARGETS.reconcilesPerJob),
        row(`reconciles in ${QUIET_MS / 1000} s of quiet after the last job`, quietReconciles, '', 0, 0, quietReconciles === 0),
        row('create → every job Running', allRunningMs / 1000, ' s', 1, undefined),
        row('create → every job Succeeded', allDoneMs / 1000, ' s', 1, undefined),
        row("API server's write rate, plain client (the machine's limit)", capacity.perSecond, '/s', 0, undefined),
        row(`floor: ${count} × ${firstWrites} first-reconcile writes at that rate`, setupFloorS, ' s', 1, undefined),
        row('work-queue latency p99 / 0.99 × that floor', p99 / (0.99 * setupFloorS), 'x', 2, undefined),
        row("floor: all the operator's requests at that rate", runFloorS, ' s', 1, undefined),
        row('create → every job Succeeded / that floor', allDoneMs / 1000 / runFloorS, 'x', 2, undefined),
      ],
      [
        `p99 is interpolated within its histogram bucket; exact: ${fixed((100 * underTarget) / adds, 2)} % of ${adds} queue adds started within ${TARGETS.p99Seconds} s`,
        `${reconciles} reconciles (${errors} failed, then retried), each p50 ${fixed(reconcileP50 * 1000, 1)} ms, p99 ${fixed(reconcileP99 * 1000, 1)} ms, ${fixed(value(m, 'consort_reconcile_duration_seconds_sum'), 1)} s in all; API requests p50 ${fixed(apiP50 * 1000, 1)} ms, p99 ${fixed(apiP99 * 1000, 1)} ms; ${requests} API requests (${Object.entries(
          requestsBy,
        )
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}), ${fixed(requests / count, 1)} per job; ${relists} informer re-lists`,
        `API request p50/p99 ms by method: ${apiByMethod.join(', ')}; the API server answered the operator ${fixed(requests / (allDoneMs / 1000), 0)} requests/s over the run`,
        `operator run as deployed (NODE_OPTIONS ${deployedNodeOptions().join(' ') || 'none'}); its RSS idle (before the jobs) ${fixed(idle.rss / MB, 0)} MB (${heap(idleMetrics)}), after them ${fixed(mem.rss / MB, 0)} MB (${heap(m)}); creates took ${fixed(createdMs / 1000, 2)} s`,
        `sites played in this process: ${f.started.size} started (${f.reconnects} logins tried again), ${f.fits} updates sent, ${f.refused} refused, ${f.failures.length} failed${f.failures.length ? `: ${f.failures.slice(0, 3).join('; ')}` : ''}`,
        ...(failed.length ? [`jobs not Succeeded: ${failed.slice(0, 10).join(', ')}; the first: ${done.get(failed[0]!)?.why ?? 'no reason given'}`] : []),
        `CPU seconds from the first create to the last job's end (${fixed(allDoneMs / 1000, 1)} s on ${availableParallelism()} cores): ${Object.entries(cpu)
          .map(([k, v]) => `${k} ${fixed(v, 1)}`)
          .join(', ')}`,
      ],
    );
    return {
      jobs: count,
      sitesPerJob: SITES.length,
      targets: TARGETS,
      workqueueLatency: { p50Seconds: p50, p99Seconds: p99, adds, withinTargetShare: underTarget / adds },
      reconciles: {
        total: reconciles,
        errors,
        meanPerJob,
        maxPerJob,
        quietPeriodMs: QUIET_MS,
        quietReconciles,
        p50Seconds: reconcileP50,
        p99Seconds: reconcileP99,
      },
      kubeRequests: { total: requests, byMethod: requestsBy, perJob: requests / count, p50Seconds: apiP50, p99Seconds: apiP99 },
      informerRelists: relists,
      operatorRss: { peakBytes: mem.hwm, idleBytes: idle.rss, afterBytes: mem.rss },
      seconds: { create: createdMs / 1000, allRunning: allRunningMs / 1000, allSucceeded: allDoneMs / 1000 },
      machineLimit: {
        apiWriteRate: capacity,
        firstReconcileWritesPerJob: firstWrites,
        setupFloorSeconds: setupFloorS,
        p99OverFloor: p99 / (0.99 * setupFloorS),
        requestsFloorSeconds: runFloorS,
        succeededOverFloor: allDoneMs / 1000 / runFloorS,
      },
      cpuSeconds: cpu,
      failedJobs: failed,
      sites: { started: f.started.size, fits: f.fits, refused: f.refused, loginRetries: f.reconnects, failures: f.failures },
      ratios: { p99: p99 / TARGETS.p99Seconds, rss: mem.hwm / TARGETS.rssBytes, reconcilesPerJob: maxPerJob / TARGETS.reconcilesPerJob },
    };
  } catch (err) {
    // What the operator said, for the post-mortem.
    if (operatorLog) writeFileSync(new URL('../artifacts/operator-scale-operator.log', import.meta.url), operatorLog());
    throw err;
  } finally {
    for (const i of informers) await i.stop().catch(() => {});
    await fleet?.stop().catch(() => {});
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
