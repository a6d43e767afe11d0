// A real Prometheus (3.x, built and cached by scripts/prometheus.sh) for tests: a generated
// config scraping the targets a test names every second, its own TSDB in a temporary folder, a
// free loopback port, its own process group (killed on stop() and, should the test runner die,
// by ManagedProcess' watcher). Queries go through the HTTP API, as Grafana's would.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { freePort } from '../../cli/nats/server.ts';
import { ManagedProcess, waitUntil } from './managed-process.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../..');

let binDir: string | undefined;
/** The folder holding `prometheus` and `promtool` (built once by scripts/prometheus.sh). */
export function prometheusBinDir(): string {
  binDir ??= execFileSync('bash', [join(REPO_ROOT, 'scripts/prometheus.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  return binDir;
}

export interface ScrapeTarget {
  /** The scrape job's name (the `job` label Prometheus gives the target's series). */
  jobName: string;
  /** host:port pairs. */
  targets: string[];
  metricsPath?: string;
  /** Sent as `Authorization: Bearer …` (a ServiceAccount token, as Prometheus in a cluster sends its own). */
  bearerToken?: string;
  /** Target labels, as the Prometheus Operator gives a ServiceMonitor's targets (namespace, service, pod...). */
  labels?: Record<string, string>;
  /** honor_labels: the scraped series' own labels win over the target's. */
  honorLabels?: boolean;
}

export interface PrometheusOptions {
  scrape: ScrapeTarget[];
  /** Rule files to load (absolute paths); their alerts are evaluated every second. */
  ruleFiles?: string[];
  scrapeIntervalSeconds?: number;
  log?: (line: string) => void;
}

/** One sample of an instant vector. */
export interface VectorSample {
  metric: Record<string, string>;
  value: [number, string];
}
/** One series of a range vector. */
export interface MatrixSeries {
  metric: Record<string, string>;
  values: [number, string][];
}

export type QueryResult =
  | { resultType: 'vector'; result: VectorSample[] }
  | { resultType: 'matrix'; result: MatrixSeries[] }
  | { resultType: 'scalar' | 'string'; result: [number, string] };

/** What /api/v1/* answers: data on success, errorType and error otherwise. */
export interface ApiResponse<T> {
  status: 'success' | 'error';
  data?: T;
  errorType?: string;
  error?: string;
  warnings?: string[];
  infos?: string[];
}

export interface AlertingRule {
  type: 'alerting' | 'recording';
  name: string;
  query: string;
  health: 'ok' | 'err' | 'unknown';
  lastError?: string;
  state?: 'inactive' | 'pending' | 'firing';
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
export interface RuleGroup {
  name: string;
  file: string;
  rules: AlertingRule[];
}

export class PrometheusServer {
  readonly url: string;
  readonly process: ManagedProcess;
  readonly dir: string;

  private constructor(url: string, process: ManagedProcess, dir: string) {
    this.url = url;
    this.process = process;
    this.dir = dir;
  }

  static async start(opts: PrometheusOptions): Promise<PrometheusServer> {
    const bin = join(prometheusBinDir(), 'prometheus');
    const dir = mkdtempSync(join(tmpdir(), 'consort-prometheus-'));
    const interval = `${opts.scrapeIntervalSeconds ?? 1}s`;
    const config = {
      global: { scrape_interval: interval, scrape_timeout: interval, evaluation_interval: interval },
      ...(opts.ruleFiles?.length ? { rule_files: opts.ruleFiles } : {}),
      scrape_configs: opts.scrape.map((s) => ({
        job_name: s.jobName,
        ...(s.metricsPath ? { metrics_path: s.metricsPath } : {}),
        ...(s.bearerToken ? { authorization: { type: 'Bearer', credentials: s.bearerToken } } : {}),
        ...(s.honorLabels ? { honor_labels: true } : {}),
        static_configs: [{ targets: s.targets, ...(s.labels ? { labels: s.labels } : {}) }],
      })),
    };
    writeFileSync(join(dir, 'prometheus.yml'), stringify(config));
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      const p = new ManagedProcess('prometheus', bin, [
        `--config.file=${join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
        '--log.level=warn',
      ]);
      const url = `http://127.0.0.1:${port}`;
      try {
        await waitUntil('prometheus', async () => (await fetch(`${url}/-/ready`)).ok, {
          timeoutMs: 30_000,
          gone: () => p.exited,
          describe: () => p.log(),
        });
        opts.log?.(`prometheus on ${url}`);
        return new PrometheusServer(url, p, dir);
      } catch (err) {
        await p.stop('SIGKILL');
        // Someone took the port between the probe and the bind: try another.
        if (/address already in use/.test(p.log()) && attempt < 10) continue;
        rmSync(dir, { recursive: true, force: true });
        throw err;
      }
    }
  }

  /** GET (or POST, which the query endpoints take for long expressions) an /api/v1 endpoint; the whole response, errors included. */
  async api<T>(path: string, params: Record<string, string> = {}, method: 'GET' | 'POST' = 'GET'): Promise<ApiResponse<T>> {
    const form = new URLSearchParams(params);
    const res =
      method === 'GET'
        ? await fetch(`${this.url}${path}?${form}`)
        : await fetch(`${this.url}${path}`, { method, headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form });
    const text = await res.text();
    try {
      return JSON.parse(text) as ApiResponse<T>;
    } catch {
      return { status: 'error', errorType: `http ${res.status}`, error: text.slice(0, 500) };
    }
  }

  /** An instant query (`/api/v1/query`), at `time` (Unix seconds) or now; the whole response, errors included. */
  query(expr: string, time?: number): Promise<ApiResponse<QueryResult>> {
    return this.api('/api/v1/query', { query: expr, ...(time !== undefined ? { time: String(time) } : {}) }, 'POST');
  }

  /** A range query (`/api/v1/query_range`) over [start, end] (Unix seconds) with `step` seconds. */
  queryRange(expr: string, start: number, end: number, step: number): Promise<ApiResponse<QueryResult>> {
    return this.api('/api/v1/query_range', { query: expr, start: String(start), end: String(end), step: String(step) }, 'POST');
  }

  /** The rule groups loaded from the rule files, with each rule's health and state. */
  async rules(): Promise<RuleGroup[]> {
    const body = await this.api<{ groups: RuleGroup[] }>('/api/v1/rules');
    if (body.status !== 'success') throw new Error(`/api/v1/rules: ${body.error}`);
    return body.data!.groups;
  }

  /** Scrape targets and their health (`/api/v1/targets`). */
  async targets(): Promise<{ scrapePool: string; scrapeUrl: string; health: 'up' | 'down' | 'unknown'; lastError: string }[]> {
    const body = await this.api<{ activeTargets: never[] }>('/api/v1/targets', { state: 'active' });
    return body.data?.activeTargets ?? [];
  }

  /** Waits until every target has been scraped successfully at least once. */
  async waitForTargetsUp(timeoutMs = 30_000): Promise<void> {
    let last = '';
    await waitUntil(
      'prometheus targets up',
      async () => {
        const t = await this.targets();
        last = JSON.stringify(t);
        return t.length > 0 && t.every((x) => x.health === 'up');
      },
      { timeoutMs, intervalMs: 250, gone: () => this.process.exited, describe: () => `${last}\n${this.process.log()}` },
    );
  }

  async stop(): Promise<void> {
    try {
      await this.process.stop('SIGTERM', 5000);
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** Runs `promtool ARGS`; never throws for a non-zero exit. */
export function promtool(args: string[], opts: { input?: string; cwd?: string } = {}): { code: number; stdout: string; stderr: string } {
  try {
    const stdout = execFileSync(join(prometheusBinDir(), 'promtool'), args, {
      encoding: 'utf8',
      input: opts.input ?? '',
      cwd: opts.cwd ?? REPO_ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    return { code: 0, stdout, stderr: '' };
  } catch (err) {
    const e = err as { status: number | null; stdout?: string; stderr?: string };
    return { code: e.status ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}
