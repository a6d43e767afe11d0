// A real Prometheus (3.x) scrapes the operator every second while it runs a FederatedJob on a real
// API server, with the alert rules of manifests/prometheus/rules.yaml loaded. Through Prometheus'
// HTTP API, as Grafana would ask: every query of every panel of the dashboard (its variables
// substituted) returns data, and both variables list the job and its sites; every alert
// expression evaluates without error, and a burst of refused updates (malformed envelopes sent
// with a site's own credentials) fires ConsortRejectedUpdatesBurst. `promtool check metrics` is
// clean on a live scrape of /metrics. Prometheus scrapes as it does in a cluster: with its own
// ServiceAccount's token, allowed `get` on /metrics and nothing else.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { freePort } from '../../cli/nats/server.ts';
import { connectAs } from '../../cli/nats/connect.ts';
import { Ack } from '../../core/protocol/messages.ts';
import { jobKey, subjects } from '../../core/protocol/subjects.ts';
import { names } from '../../operator/controller/manifests.ts';
import { buildConsortDashboard, dashboardPanels } from '../../operator/dashboard/consort-dashboard.ts';
import { ConsortCluster } from '../helpers/consort-cluster.ts';
import { HOSPITALS } from '../helpers/federation.ts';
import { type MatrixSeries, PrometheusServer, promtool, type VectorSample } from '../helpers/prometheus.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const RULES = join(ROOT, 'manifests/prometheus/rules.yaml');
const JOB = 'watched';
/** The same job with its round loop in a coordinator Pod: the operator reads its figures over NATS. */
const POD_JOB = 'watched-pod';
const POD_ROUNDS = 30;
const SITES = ['st-mary', 'riverside', 'northgate', 'lakeside', 'hillcrest'];
/** The site whose credentials send the malformed envelopes. */
const NOISY = 'lakeside';
/**
 * Panels with no data for this job, on purpose: differential privacy (consort_job_epsilon_*) is
 * exported only for jobs with a privacy budget, and lands with its own issue. Their queries must
 * still evaluate without error.
 */
const EXPECTED_EMPTY = new Set(['ε spent', 'Privacy budget used']);
/** The site variable as Grafana fills a multi-value selection into a regex. */
const SITE_SELECTION = `(${SITES.slice(0, 2).join('|')})`;
/** Prometheus' identity, with the least privilege a scrape needs (the operator checks it with a SubjectAccessReview). */
const PROMETHEUS_RBAC = `
apiVersion: v1
kind: Namespace
metadata: { name: monitoring }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: prometheus, namespace: monitoring }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: consort-metrics-reader }
rules:
  - nonResourceURLs: [/metrics]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: prometheus-consort-metrics-reader }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: consort-metrics-reader }
subjects:
  - { kind: ServiceAccount, name: prometheus, namespace: monitoring }
`;
/** Grafana's $__rate_interval for a 1 s scrape interval and a fine step, with room for jitter. */
const RATE_INTERVAL = '10s';

/** A panel query as Grafana sends it: the dashboard's variables substituted. */
function substitute(expr: string, job = JOB): string {
  return expr.replaceAll('$__rate_interval', RATE_INTERVAL).replaceAll('$job', job).replaceAll('$site', SITE_SELECTION);
}

describe('Prometheus scrapes the operator while a job runs', () => {
  let cluster: ConsortCluster;
  let prom: PrometheusServer;
  let metricsUrl: string;
  let token: string;
  let started = 0;
  let ended = 0;
  const dir = mkdtempSync(join(tmpdir(), 'consort-operator-prometheus-'));

  beforeAll(async () => {
    cluster = await ConsortCluster.start();
    const port = await freePort();
    metricsUrl = `http://127.0.0.1:${port}/metrics`;
    const rbac = await cluster.kubectl(['apply', '-f', '-'], { input: PROMETHEUS_RBAC });
    expect(rbac.code, rbac.stderr).toBe(0);
    const minted = await cluster.cp.request('/api/v1/namespaces/monitoring/serviceaccounts/prometheus/token', {
      method: 'POST',
      body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { expirationSeconds: 3600 } },
    });
    expect(minted.status, JSON.stringify(minted.body)).toBe(201);
    token = (minted.body as { status: { token: string } }).status.token;
    await cluster.startOperator({ args: ['--metrics-port', String(port), '--metrics-address', '127.0.0.1'] });
    prom = await PrometheusServer.start({
      // As the shipped ServiceMonitor scrapes it: the Prometheus Operator labels the target with
      // the Service's namespace (consort-system), and the endpoint's honorLabels decides whether
      // a job's own namespace label survives that.
      scrape: [
        {
          jobName: 'consort-operator',
          targets: [`127.0.0.1:${port}`],
          bearerToken: token,
          labels: { namespace: 'consort-system', service: 'consort-operator', endpoint: 'http' },
          honorLabels: serviceMonitorEndpoint().honorLabels === true,
        },
      ],
      ruleFiles: [RULES],
    });
    await prom.waitForTargetsUp();
  }, 240_000);

  /** The scrape endpoint of manifests/prometheus/servicemonitor.yaml. */
  function serviceMonitorEndpoint(): { honorLabels?: boolean } {
    const doc = parse(readFileSync(join(ROOT, 'manifests/prometheus/servicemonitor.yaml'), 'utf8')) as {
      spec: { endpoints: Array<{ honorLabels?: boolean }> };
    };
    return doc.spec.endpoints[0]!;
  }

  afterAll(async () => {
    await prom?.stop();
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Sends `n` malformed update envelopes on NOISY's subject with NOISY's own credentials; each is refused as malformed. */
  async function sendMalformed(n: number, job = JOB): Promise<void> {
    const secret = await cluster.cp.request(`/api/v1/namespaces/default/secrets/${names.siteSecret(job, NOISY)}`);
    expect(secret.status).toBe(200);
    const file = join(dir, `${NOISY}.creds`);
    writeFileSync(file, Buffer.from((secret.body as { data: Record<string, string> }).data['site.creds']!, 'base64'), { mode: 0o600 });
    const nc = await connectAs(cluster.nats.url, file, NOISY);
    try {
      for (let i = 0; i < n; i++) {
        const ack = Ack.parse(
          (await nc.request(subjects(jobKey({ name: job, namespace: 'default' })).update(NOISY), `not json ${i}`, { timeout: 10_000 })).json(),
        );
        expect(ack).toMatchObject({ accepted: false, code: 'CONSORT_R_MALFORMED' });
      }
    } finally {
      await nc.close();
    }
  }

  it('runs the job to Succeeded while Prometheus scrapes; a burst of refused updates fires ConsortRejectedUpdatesBurst', async () => {
    const doc = parse(readFileSync(HOSPITALS, 'utf8')) as { metadata: { name: string }; spec: Record<string, unknown> };
    doc.metadata.name = JOB;
    // Long enough for many scrapes, and for the refusals below to land while it runs.
    doc.spec.rounds = 60;
    started = Date.now() / 1000;
    const applied = await cluster.kubectl(['apply', '-f', '-'], { input: stringify(doc) });
    expect(applied.code, applied.stderr).toBe(0);
    await cluster.waitForJob(JOB, (s) => s.phase === 'Running' && (s.round as number) >= 2, { timeoutMs: 240_000 });

    // One refusal first, so that the counter's series exists before the burst (a counter first
    // seen at 15 shows no increase), then the burst: 15 refusals in 5 minutes.
    await sendMalformed(1);
    await expect
      .poll(async () => ((await prom.query(`consort_updates_rejected_total{federatedjob="${JOB}"}`)).data?.result ?? []).length, { timeout: 30_000 })
      .toBeGreaterThan(0);
    await sendMalformed(15);
    await expect
      .poll(
        async () => {
          const rule = (await prom.rules()).flatMap((g) => g.rules).find((r) => r.name === 'ConsortRejectedUpdatesBurst');
          return rule?.state;
        },
        { timeout: 30_000, interval: 500 },
      )
      .toBe('firing');
    const alerts = await prom.api<{ alerts: { labels: Record<string, string>; annotations: Record<string, string>; state: string }[] }>('/api/v1/alerts');
    const burst = alerts.data!.alerts.find((x) => x.labels.alertname === 'ConsortRejectedUpdatesBurst');
    expect(burst?.labels).toMatchObject({ namespace: 'default', federatedjob: JOB, severity: 'warning' });
    expect(burst?.annotations.summary).toMatch(new RegExp(`^FederatedJob default/${JOB} refused about \\d+ updates in 5 minutes\\.$`));
    expect(burst?.annotations.runbook_url).toBe('docs/runbooks.md#consortrejectedupdatesburst');

    const status = await cluster.waitForJob(JOB, (s) => s.phase === 'Succeeded' || s.phase === 'Failed', { timeoutMs: 300_000 });
    expect(status.phase, JSON.stringify(status)).toBe('Succeeded');
    // A few more scrapes of the final state.
    await new Promise((r) => setTimeout(r, 3000));
    ended = Date.now() / 1000;
  });

  it('a job whose loop runs in a coordinator Pod exports its bytes, refusals, update norms and round durations too', async () => {
    const doc = parse(readFileSync(HOSPITALS, 'utf8')) as { metadata: { name: string }; spec: Record<string, unknown> };
    doc.metadata.name = POD_JOB;
    doc.spec.rounds = POD_ROUNDS;
    doc.spec.coordinator = { placement: 'pod' };
    const applied = await cluster.kubectl(['apply', '-f', '-'], { input: stringify(doc) });
    expect(applied.code, applied.stderr).toBe(0);
    await cluster.waitForJob(POD_JOB, (s) => s.phase === 'Running' && (s.round as number) >= 2, { timeoutMs: 240_000 });
    await sendMalformed(3, POD_JOB);
    const status = await cluster.waitForJob(POD_JOB, (s) => s.phase === 'Succeeded' || s.phase === 'Failed', { timeoutMs: 300_000 });
    expect(status.phase, JSON.stringify(status)).toBe('Succeeded');
    const samples = async (expr: string) => ((await prom.query(expr)).data?.result ?? []) as VectorSample[];
    const value = async (expr: string) => Number((await samples(expr))[0]?.value[1] ?? Number.NaN);
    const job = `federatedjob="${POD_JOB}"`;
    // Scraped after the job's end: every round's duration, bytes both ways, a norm per site, the refusals by code.
    await expect.poll(() => value(`consort_round_duration_seconds_count{${job}}`), { timeout: 30_000 }).toBe(POD_ROUNDS);
    expect(await value(`consort_job_bytes_received_total{${job}}`)).toBeGreaterThan(0);
    expect(await value(`consort_job_bytes_sent_total{${job}}`)).toBeGreaterThan(0);
    expect(await samples(`consort_site_update_norm{${job}} > 0`)).toHaveLength(SITES.length);
    expect(await value(`consort_updates_rejected_total{${job}, reason="CONSORT_R_MALFORMED"}`)).toBe(3);
    // Enough scrapes of the final state for the panels' rates (two samples in their window).
    await expect.poll(() => value(`count_over_time(consort_updates_rejected_total{${job}}[1m])`), { timeout: 30_000 }).toBeGreaterThanOrEqual(3);
    ended = Date.now() / 1000;
  });

  it('every query of every dashboard panel returns data (privacy panels excepted), over each job and now', async () => {
    const dashboard = buildConsortDashboard();
    const failures: string[] = [];
    let checked = 0;
    for (const { panel, job } of dashboardPanels(dashboard).flatMap((p) => [JOB, POD_JOB].map((job) => ({ ...p, job })))) {
      for (const target of panel.targets ?? []) {
        const expr = substitute((target as { expr?: string }).expr ?? '', job);
        const range = await prom.queryRange(expr, started - 5, ended, 1);
        if (range.status !== 'success') {
          failures.push(`${panel.title}: ${expr}: ${range.errorType}: ${range.error}`);
          continue;
        }
        checked++;
        if (EXPECTED_EMPTY.has(panel.title!)) continue;
        const series = range.data!.result as MatrixSeries[];
        const finite = series.some((s) => s.values.some(([, v]) => Number.isFinite(Number(v))));
        if (!finite) failures.push(`${panel.title}: ${expr}: ${series.length === 0 ? 'no series' : 'no finite value'}`);
      }
    }
    expect(failures, failures.join('\n')).toEqual([]);
    expect(checked).toBeGreaterThanOrEqual(30);
  });

  it("the dashboard's variables list the job and its sites", async () => {
    const values = async (label: string, match: string) => {
      const r = await prom.api<string[]>(`/api/v1/label/${label}/values`, { 'match[]': match, start: String(started - 5), end: String(ended) });
      expect(r.status, r.error).toBe('success');
      return r.data!;
    };
    // label_values(consort_job_round, federatedjob) and label_values(consort_site_accuracy{federatedjob=~"$job"}, site)
    expect(await values('federatedjob', 'consort_job_round')).toContain(JOB);
    expect((await values('site', `consort_site_accuracy{federatedjob=~"${JOB}"}`)).sort()).toEqual([...SITES].sort());
  });

  it('every alert expression evaluates without error; the loaded rules are healthy', async () => {
    const groups = (parse(readFileSync(RULES, 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] }).groups;
    for (const rule of groups.flatMap((g) => g.rules)) {
      const r = await prom.query(rule.expr);
      expect(r.status, `${rule.alert}: ${r.errorType}: ${r.error}`).toBe('success');
      expect(r.warnings ?? [], rule.alert).toEqual([]);
    }
    const loaded = (await prom.rules()).flatMap((g) => g.rules);
    expect(loaded.map((r) => r.name).sort()).toEqual(
      groups
        .flatMap((g) => g.rules)
        .map((r) => r.alert)
        .sort(),
    );
    for (const r of loaded) expect(r.health, `${r.name}: ${r.lastError}`).toBe('ok');
    // The job succeeded: no stall, no site missing rounds.
    const firing = loaded.filter((r) => r.state === 'firing').map((r) => r.name);
    expect(firing).not.toContain('ConsortJobStalled');
    expect(firing).not.toContain('ConsortSiteMissingRounds');
  });

  it('promtool check metrics is clean on a live scrape of /metrics', async () => {
    expect((await fetch(metricsUrl)).status).toBe(401);
    const res = await fetch(metricsUrl, { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toMatch(new RegExp(`^consort_job_round\\{[^}]*federatedjob="${JOB}"`, 'm'));
    const r = promtool(['check', 'metrics'], { input: text });
    expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
  });
});
