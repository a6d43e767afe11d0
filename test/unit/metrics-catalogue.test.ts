// manifests/README.md lists every consort_* series the code exports, as the registries say: a
// metric added, renamed or relabelled without its line in the table fails here.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { catalogueRow, metricsCatalogue } from '../../operator/metrics-catalogue.ts';
import { REPO_ROOT } from '../helpers/consort-cli.ts';

describe('the metrics reference in manifests/README.md', () => {
  it('has a row for every consort_* series, with its type, labels and help, and none for a series that does not exist', async () => {
    const readme = readFileSync(join(REPO_ROOT, 'manifests/README.md'), 'utf8');
    const catalogue = await metricsCatalogue();
    expect(catalogue.length).toBeGreaterThan(25);
    for (const e of catalogue) expect(readme, e.name).toContain(catalogueRow(e));
    const listed = [...readme.matchAll(/^\| `(consort_[a-z_]+)` \|/gm)].map((m) => m[1]);
    expect(listed.sort()).toEqual(catalogue.map((e) => e.name).sort());
  });
});
