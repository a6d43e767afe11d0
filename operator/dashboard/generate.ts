// `make dashboards`: writes the Grafana dashboard built in consort-dashboard.ts to manifests/grafana/
// (the dashboard JSON and the ConfigMap that provisions it).
//   node operator/dashboard/generate.ts            write them
//   node operator/dashboard/generate.ts --check    exit 1 if either file is not what the code gives (make lint)
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { DASHBOARD_CONFIGMAP_FILE, DASHBOARD_FILE, renderDashboardConfigMap, renderDashboardJson } from './consort-dashboard.ts';

const root = resolve(import.meta.dirname, '../..');
const json = renderDashboardJson();
const files: [string, string][] = [
  [DASHBOARD_FILE, json],
  [DASHBOARD_CONFIGMAP_FILE, renderDashboardConfigMap(json)],
];
if (process.argv.includes('--check')) {
  let stale = false;
  for (const [name, text] of files) {
    let current: string | undefined;
    try {
      current = readFileSync(resolve(root, name), 'utf8');
    } catch {}
    if (current !== text) {
      stale = true;
      process.stderr.write(
        `${name} is ${current === undefined ? 'missing' : 'stale'}: operator/dashboard changed since it was generated; run \`make dashboards\` and commit the result\n`,
      );
    }
  }
  if (stale) process.exit(1);
} else {
  for (const [name, text] of files) {
    mkdirSync(dirname(resolve(root, name)), { recursive: true });
    writeFileSync(resolve(root, name), text);
    process.stdout.write(`wrote ${name}\n`);
  }
}
