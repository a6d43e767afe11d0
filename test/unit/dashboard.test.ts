// The Grafana dashboard: the committed files are what operator/dashboard generates (`make
// dashboards`), and every query filters by the dashboard's variables: each job panel by $job,
// each site-level one by $site too (the operator row shows the operator process, not a job).
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import {
  DASHBOARD_CONFIGMAP_FILE,
  DASHBOARD_FILE,
  OPERATOR_ROW,
  buildConsortDashboard,
  dashboardPanels,
  renderDashboardConfigMap,
  renderDashboardJson,
} from '../../operator/dashboard/consort-dashboard.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const dashboard = buildConsortDashboard();
const panels = dashboardPanels(dashboard);
// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax
const DATASOURCE = { type: 'prometheus', uid: '${datasource}' };
const exprs = (p: (typeof panels)[number]) => (p.panel.targets ?? []).map((t) => (t as { expr?: string }).expr ?? '');

describe('the Grafana dashboard', () => {
  it('the committed JSON and ConfigMap are the generated ones (run `make dashboards`)', () => {
    expect(readFileSync(resolve(ROOT, DASHBOARD_FILE), 'utf8')).toBe(renderDashboardJson());
    expect(readFileSync(resolve(ROOT, DASHBOARD_CONFIGMAP_FILE), 'utf8')).toBe(renderDashboardConfigMap());
  });

  it('the ConfigMap carries the Grafana sidecar label and the same dashboard', () => {
    const cm = parse(readFileSync(resolve(ROOT, DASHBOARD_CONFIGMAP_FILE), 'utf8')) as {
      kind: string;
      metadata: { labels: Record<string, string> };
      data: Record<string, string>;
    };
    expect(cm.kind).toBe('ConfigMap');
    expect(cm.metadata.labels.grafana_dashboard).toBe('1');
    expect(JSON.parse(cm.data['consort.json']!)).toEqual(JSON.parse(renderDashboardJson()));
  });

  it('has the job and site variables, the site list filtered by $job', () => {
    const vars = Object.fromEntries((dashboard.templating?.list ?? []).map((v) => [v.name, v]));
    expect(vars.datasource?.type).toBe('datasource');
    expect(vars.job?.query).toBe('label_values(consort_job_round, federatedjob)');
    expect(vars.site?.query).toBe('label_values(consort_site_accuracy{federatedjob=~"$job"}, site)');
  });

  it('every job panel query filters by $job, and site-level ones by $site', () => {
    const jobPanels = panels.filter((p) => p.row !== OPERATOR_ROW);
    expect(jobPanels.length).toBeGreaterThanOrEqual(15);
    for (const p of jobPanels) {
      expect(exprs(p).length, p.panel.title).toBeGreaterThan(0);
      for (const e of exprs(p)) {
        // Each selector of a consort_ series names the job (a binary expression has two).
        for (const sel of e.matchAll(/consort_\w+(\{[^}]*\})?/g)) expect(sel[1] ?? '', `${p.panel.title}: ${e}`).toMatch(/federatedjob=~"\$job"/);
        if (/consort_site_/.test(e)) expect(e, p.panel.title).toMatch(/site=~"\$site"/);
      }
    }
  });

  it('covers the metrics of the issue: round, phase, loss, accuracy per site and spread, sites, bytes, norms, ε, refusals, round durations, and an operator row', () => {
    const all = panels.flatMap(exprs).join('\n');
    for (const m of [
      'consort_job_phase',
      'consort_job_round',
      'consort_job_rounds_planned',
      'consort_job_loss',
      'consort_job_accuracy',
      'consort_job_auc',
      'consort_site_accuracy',
      'consort_site_loss',
      'consort_job_site_accuracy_min',
      'consort_job_site_accuracy_max',
      'consort_job_site_accuracy_stddev',
      'consort_job_sites',
      'consort_site_rounds_missed_consecutive',
      'consort_site_update_norm',
      'consort_job_bytes_received_total',
      'consort_job_bytes_sent_total',
      'consort_job_epsilon_spent',
      'consort_updates_rejected_total',
      'consort_round_duration_seconds_bucket',
      'consort_workqueue_latency_seconds_bucket',
      'consort_reconcile_total',
      'consort_kube_requests_total',
      'process_resident_memory_bytes',
    ])
      expect(all, m).toMatch(new RegExp(`\\b${m}\\b`));
    expect(panels.filter((p) => p.row === OPERATOR_ROW).length).toBeGreaterThanOrEqual(4);
  });

  it('every panel uses the datasource variable and has a title and a unique place on the grid', () => {
    const cells = new Set<string>();
    for (const { panel } of panels) {
      expect(panel.title).toBeTruthy();
      expect(panel.datasource).toEqual(DATASOURCE);
      for (const t of panel.targets ?? []) expect((t as { datasource?: unknown }).datasource).toEqual(DATASOURCE);
      const g = panel.gridPos!;
      expect(g.x + g.w, panel.title).toBeLessThanOrEqual(24);
      for (let x = g.x; x < g.x + g.w; x++)
        for (let y = g.y; y < g.y + g.h; y++) {
          expect(cells.has(`${x},${y}`), `${panel.title} overlaps at ${x},${y}`).toBe(false);
          cells.add(`${x},${y}`);
        }
    }
  });
});
