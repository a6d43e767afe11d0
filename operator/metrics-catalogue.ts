// Every consort_* series the operator (and `consort run --metrics-port`) can export, read from the
// very registries that export them: manifests/README.md's table is checked against it
// (test/unit/metrics-catalogue.test.ts), so that a platform engineer writing alerts has a list
// that matches the code.
import { Registry } from 'prom-client';
import { requestsCounter } from './api/server.ts';
import { JobMetrics } from './job-metrics.ts';
import { OperatorMetrics } from './metrics.ts';

export interface CatalogueEntry {
  name: string;
  type: string;
  labels: string[];
  help: string;
}

export async function metricsCatalogue(): Promise<CatalogueEntry[]> {
  const jobs = new Registry();
  new JobMetrics(jobs);
  const operator = new OperatorMetrics().registry;
  requestsCounter(operator);
  const out: CatalogueEntry[] = [];
  for (const registry of [jobs, operator]) {
    for (const m of await registry.getMetricsAsJSON()) {
      if (!m.name.startsWith('consort_')) continue;
      const labels = (registry.getSingleMetric(m.name) as unknown as { labelNames?: string[] }).labelNames ?? [];
      out.push({ name: m.name, type: String(m.type), labels: [...labels], help: m.help });
    }
  }
  return out;
}

/** One markdown table row of an entry. */
export function catalogueRow(e: CatalogueEntry): string {
  return `| \`${e.name}\` | ${e.type} | ${e.labels.map((l) => `\`${l}\``).join(', ')} | ${e.help.replace(/\|/g, '\\|')} |`;
}
