// The Grafana dashboard for FederatedJobs, built with the Grafana Foundation SDK and generated into
// manifests/grafana/ by `make dashboards` (generate.ts); never edited by hand. Every query of the
// job rows filters by the dashboard's `job` variable (and site-level ones by `site`); the
// operator row shows the process itself. A test runs every query against a real Prometheus
// scraping the operator while a job runs (test/e2e/operator-prometheus.test.ts).
import {
  BigValueGraphMode,
  BigValueTextMode,
  LegendDisplayMode,
  LegendPlacement,
  ReduceDataOptionsBuilder,
  StackingConfigBuilder,
  StackingMode,
  VizLegendOptionsBuilder,
} from '@grafana/grafana-foundation-sdk/common';
import {
  DashboardBuilder,
  DashboardCursorSync,
  DatasourceVariableBuilder,
  QueryVariableBuilder,
  RowBuilder,
  VariableRefresh,
  VariableSort,
} from '@grafana/grafana-foundation-sdk/dashboard';
import type { Dashboard, Panel, RowPanel } from '@grafana/grafana-foundation-sdk/dashboard';
import { DataqueryBuilder } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as StatPanel } from '@grafana/grafana-foundation-sdk/stat';
import { PanelBuilder as TimeseriesPanel } from '@grafana/grafana-foundation-sdk/timeseries';
import { stringify } from 'yaml';

export const DASHBOARD_UID = 'consort-federated-jobs';
export const DASHBOARD_FILE = 'manifests/grafana/consort.json';
export const DASHBOARD_CONFIGMAP_FILE = 'manifests/grafana/consort-dashboard-configmap.yaml';
/** The title of the row whose panels show the operator process, not a job (no `$job` filter). */
export const OPERATOR_ROW = 'Operator';

// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax
const datasource = { type: 'prometheus', uid: '${datasource}' };
/** A job's series: the FederatedJob's namespace and name (`federatedjob`: `job` is the scrape job's). */
const JOB = 'federatedjob=~"$job"';
/** A site's series of a job. */
const SITE = 'federatedjob=~"$job", site=~"$site"';

function query(expr: string, legend: string, refId: string): DataqueryBuilder {
  return new DataqueryBuilder().datasource(datasource).expr(expr).legendFormat(legend).refId(refId).range();
}

function timeseries(title: string, description: string, unit: string, targets: [expr: string, legend: string][], span = 12): TimeseriesPanel {
  const p = new TimeseriesPanel()
    .title(title)
    .description(description)
    .datasource(datasource)
    .unit(unit)
    .span(span)
    .height(8)
    .fillOpacity(10)
    .legend(new VizLegendOptionsBuilder().displayMode(LegendDisplayMode.List).placement(LegendPlacement.Bottom).showLegend(true));
  targets.forEach(([expr, legend], i) => p.withTarget(query(expr, legend, String.fromCharCode(65 + i))));
  return p;
}

function stat(
  title: string,
  description: string,
  unit: string,
  targets: [expr: string, legend: string][],
  textMode = BigValueTextMode.ValueAndName,
): StatPanel {
  const p = new StatPanel()
    .title(title)
    .description(description)
    .datasource(datasource)
    .unit(unit)
    .span(6)
    .height(5)
    .graphMode(BigValueGraphMode.None)
    .textMode(textMode)
    .reduceOptions(new ReduceDataOptionsBuilder().calcs(['lastNotNull']).values(false));
  targets.forEach(([expr, legend], i) => p.withTarget(query(expr, legend, String.fromCharCode(65 + i)).instant()));
  return p;
}

export function buildConsortDashboard(): Dashboard {
  const quantiles = ([0.5, 0.9, 0.99] as const).map((q): [string, string] => [
    `histogram_quantile(${q}, sum by (namespace, federatedjob, le) (rate(consort_round_duration_seconds_bucket{${JOB}}[$__rate_interval])))`,
    `{{federatedjob}} p${q * 100}`,
  ]);
  return new DashboardBuilder('Consort / Federated jobs')
    .uid(DASHBOARD_UID)
    .description(
      'FederatedJobs as the Consort operator runs them: rounds, global and per-site metrics, sites, traffic, refused updates, privacy, and the operator itself.',
    )
    .tags(['consort', 'federated-learning'])
    .editable()
    .tooltip(DashboardCursorSync.Crosshair)
    .refresh('30s')
    .time({ from: 'now-6h', to: 'now' })
    .timezone('browser')
    .withVariable(new DatasourceVariableBuilder('datasource').label('Data source').type('prometheus'))
    .withVariable(
      new QueryVariableBuilder('job')
        .label('Job')
        .description('FederatedJobs (by name) that have reported a round.')
        .datasource(datasource)
        .query('label_values(consort_job_round, federatedjob)')
        .definition('label_values(consort_job_round, federatedjob)')
        .refresh(VariableRefresh.OnTimeRangeChanged)
        .sort(VariableSort.AlphabeticalAsc)
        .multi(true)
        .includeAll(true)
        .allValue('.+'),
    )
    .withVariable(
      new QueryVariableBuilder('site')
        .label('Site')
        .description('Sites of the selected jobs.')
        .datasource(datasource)
        .query('label_values(consort_site_accuracy{federatedjob=~"$job"}, site)')
        .definition('label_values(consort_site_accuracy{federatedjob=~"$job"}, site)')
        .refresh(VariableRefresh.OnTimeRangeChanged)
        .sort(VariableSort.AlphabeticalAsc)
        .multi(true)
        .includeAll(true)
        .allValue('.+'),
    )

    .withRow(new RowBuilder('Progress'))
    .withPanel(
      stat('Phase', 'The phase each job is in now.', 'none', [[`consort_job_phase{${JOB}} == 1`, '{{federatedjob}}: {{phase}}']], BigValueTextMode.Name),
    )
    .withPanel(
      stat('Round', 'Rounds completed, and rounds planned (spec.rounds).', 'none', [
        [`consort_job_round{${JOB}}`, '{{federatedjob}} round'],
        [`consort_job_rounds_planned{${JOB}}`, '{{federatedjob}} planned'],
      ]),
    )
    .withPanel(
      stat('Since the last round', 'Time since the last completed round, against the round deadline (ConsortJobStalled fires past 3 deadlines).', 's', [
        [`time() - consort_job_last_round_timestamp_seconds{${JOB}}`, '{{federatedjob}} since last'],
        [`consort_job_round_deadline_seconds{${JOB}}`, '{{federatedjob}} deadline'],
      ]),
    )
    .withPanel(
      stat('Accuracy falling', 'Consecutive evaluated rounds whose global accuracy fell (ConsortAccuracyFalling fires at 3).', 'none', [
        [`consort_job_accuracy_falling_rounds{${JOB}}`, '{{federatedjob}}'],
      ]),
    )
    .withPanel(
      timeseries('Rounds per minute', 'Rounds completed per minute.', 'none', [
        [`rate(consort_job_rounds_completed_total{${JOB}}[$__rate_interval]) * 60`, '{{federatedjob}}'],
      ]),
    )
    .withPanel(timeseries('Round duration', 'Quantiles of the time a round takes, from its start to its aggregate.', 's', quantiles))

    .withRow(new RowBuilder('Model quality'))
    .withPanel(
      timeseries('Global accuracy and AUC', "The global model's accuracy and ROC AUC on the sites' test splits, at each evaluated round.", 'percentunit', [
        [`consort_job_accuracy{${JOB}}`, '{{federatedjob}} accuracy'],
        [`consort_job_auc{${JOB}}`, '{{federatedjob}} AUC'],
      ]),
    )
    .withPanel(timeseries('Global loss', "The global model's loss on the sites' test splits.", 'none', [[`consort_job_loss{${JOB}}`, '{{federatedjob}} loss']]))
    .withPanel(
      timeseries('Accuracy per site', "The global model's accuracy on each site's test split.", 'percentunit', [
        [`consort_site_accuracy{${SITE}}`, '{{federatedjob}} {{site}}'],
      ]),
    )
    .withPanel(
      timeseries(
        'Accuracy spread across sites',
        'Lowest, highest and standard deviation of the per-site accuracies: how evenly the model serves every site.',
        'percentunit',
        [
          [`consort_job_site_accuracy_min{${JOB}}`, '{{federatedjob}} min'],
          [`consort_job_site_accuracy_max{${JOB}}`, '{{federatedjob}} max'],
          [`consort_job_site_accuracy_stddev{${JOB}}`, '{{federatedjob}} stddev'],
        ],
      ),
    )
    .withPanel(
      timeseries('Loss per site', "The global model's loss on each site's test split.", 'none', [[`consort_site_loss{${SITE}}`, '{{federatedjob}} {{site}}']]),
    )
    .withPanel(
      timeseries('Update norm per site', "L2 norm of each site's last update: one far above the others is worth a look.", 'none', [
        [`consort_site_update_norm{${SITE}}`, '{{federatedjob}} {{site}}'],
      ]),
    )

    .withRow(new RowBuilder('Sites'))
    .withPanel(
      timeseries('Sites by state', 'Sites that joined, took part in the last round, straggled past its deadline, or refused the job (local policy).', 'none', [
        [`consort_job_sites{${JOB}}`, '{{federatedjob}} {{state}}'],
      ]),
    )
    .withPanel(
      timeseries(
        'Consecutive rounds missed per site',
        'Rounds in a row without an accepted update from the site (ConsortSiteMissingRounds fires at 3).',
        'none',
        [[`consort_site_rounds_missed_consecutive{${SITE}}`, '{{federatedjob}} {{site}}']],
      ),
    )

    .withRow(new RowBuilder('Traffic and refusals'))
    .withPanel(
      timeseries('Bytes in and out', 'Bytes of updates received from the sites and of models sent to them.', 'Bps', [
        [`rate(consort_job_bytes_received_total{${JOB}}[$__rate_interval])`, '{{federatedjob}} received'],
        [`rate(consort_job_bytes_sent_total{${JOB}}[$__rate_interval])`, '{{federatedjob}} sent'],
      ]),
    )
    .withPanel(
      timeseries('Refused updates by reason', 'Updates the coordinator refused, per second, by stable reason code (ConsortRejectedUpdatesBurst).', 'reqps', [
        [`sum by (namespace, federatedjob, reason) (rate(consort_updates_rejected_total{${JOB}}[$__rate_interval]))`, '{{federatedjob}} {{reason}}'],
      ]).stacking(new StackingConfigBuilder().mode(StackingMode.Normal)),
    )

    .withRow(new RowBuilder('Privacy'))
    .withPanel(
      timeseries('ε spent', 'Differential privacy: ε spent so far and the budget (jobs with privacy only; not yet in this version, so empty).', 'none', [
        [`consort_job_epsilon_spent{${JOB}}`, '{{federatedjob}} ε spent'],
        [`consort_job_epsilon_budget{${JOB}}`, '{{federatedjob}} ε budget'],
      ]),
    )
    .withPanel(
      timeseries('Privacy budget used', 'Share of the privacy budget spent (ConsortPrivacyBudgetNearlySpent fires past 90%).', 'percentunit', [
        [`consort_job_epsilon_spent{${JOB}} / consort_job_epsilon_budget{${JOB}}`, '{{federatedjob}}'],
      ]),
    )

    .withRow(new RowBuilder(OPERATOR_ROW))
    .withPanel(
      timeseries('Work-queue latency', 'Time a FederatedJob key waits in the work queue before its reconcile starts, and the queue depth.', 's', [
        ['histogram_quantile(0.99, sum by (le) (rate(consort_workqueue_latency_seconds_bucket[$__rate_interval])))', 'p99 latency'],
        ['histogram_quantile(0.5, sum by (le) (rate(consort_workqueue_latency_seconds_bucket[$__rate_interval])))', 'p50 latency'],
      ]),
    )
    .withPanel(timeseries('Work-queue depth', 'Keys waiting in the work queue.', 'none', [['sum by (instance) (consort_workqueue_depth)', '{{instance}}']]))
    .withPanel(
      timeseries('Reconciles', 'Reconciles of all jobs per second, by result.', 'ops', [
        ['sum by (result) (rate(consort_reconcile_total[$__rate_interval]))', '{{result}}'],
      ]),
    )
    .withPanel(
      timeseries('Reconciles per job', 'Reconciles of each selected job per second: a job reconciled in a hot loop shows here.', 'ops', [
        ['sum by (namespace, federatedjob) (rate(consort_job_reconciles_total{federatedjob=~"$job"}[$__rate_interval]))', '{{federatedjob}}'],
      ]),
    )
    .withPanel(
      timeseries('Reconcile duration', 'Time one reconcile takes.', 's', [
        ['histogram_quantile(0.99, sum by (le) (rate(consort_reconcile_duration_seconds_bucket[$__rate_interval])))', 'p99'],
        ['histogram_quantile(0.5, sum by (le) (rate(consort_reconcile_duration_seconds_bucket[$__rate_interval])))', 'p50'],
      ]),
    )
    .withPanel(
      timeseries('Kubernetes API requests', 'Requests to the API server per second (watches excepted), by method and status code.', 'reqps', [
        ['sum by (method, code) (rate(consort_kube_requests_total[$__rate_interval]))', '{{method}} {{code}}'],
      ]),
    )
    .withPanel(
      timeseries('Operator memory', 'Resident memory of each operator process.', 'bytes', [
        // process_* comes from every target: keep the operators' (those with a work queue).
        ['process_resident_memory_bytes and on (instance) consort_workqueue_depth', '{{instance}}'],
      ]),
    )
    .withPanel(
      timeseries(
        'Event-loop lag',
        "p99 lag of each operator's event loop: round loops aggregate in the operator's process, and a busy loop delays reconciles.",
        's',
        [['nodejs_eventloop_lag_p99_seconds and on (instance) consort_workqueue_depth', '{{instance}}']],
      ),
    )
    .build();
}

/** Every panel, rows' nested panels included (a collapsed row keeps its panels inside it). */
export function dashboardPanels(d: Dashboard): { panel: Panel; row: string | undefined }[] {
  const out: { panel: Panel; row: string | undefined }[] = [];
  let row: string | undefined;
  for (const p of (d.panels ?? []) as (Panel | RowPanel)[]) {
    if (p.type === 'row') {
      row = (p as RowPanel).title;
      for (const inner of (p as RowPanel).panels ?? []) out.push({ panel: inner as Panel, row });
    } else out.push({ panel: p as Panel, row });
  }
  return out;
}

/** The dashboard as the JSON file Grafana imports. */
export function renderDashboardJson(): string {
  return `${JSON.stringify(buildConsortDashboard(), null, 2)}\n`;
}

/** A ConfigMap for the Grafana sidecar (kube-prometheus-stack, the Grafana Helm chart), which loads every ConfigMap labelled grafana_dashboard=1. */
export function renderDashboardConfigMap(json = renderDashboardJson()): string {
  const header = [
    '# Generated by `make dashboards` from operator/dashboard/consort-dashboard.ts: do not edit.',
    '# The Grafana sidecar provisions every ConfigMap labelled grafana_dashboard=1 (in its namespace, or all, as it is set up):',
    '#   kubectl apply -n monitoring -f manifests/grafana/consort-dashboard-configmap.yaml',
  ].join('\n');
  const doc = {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: {
      name: 'consort-dashboard',
      labels: { grafana_dashboard: '1', 'app.kubernetes.io/name': 'consort', 'app.kubernetes.io/component': 'dashboard' },
      annotations: { grafana_folder: 'Consort' },
    },
    data: { 'consort.json': json },
  };
  return `${header}\n${stringify(doc, { lineWidth: 0 })}`;
}
