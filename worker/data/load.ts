// A site's data, from its DataSpec. Raw values never leave worker/data except as the standardised
// tensors of SiteData, which go only to the local trainer; the quality report holds counts only.
import type { DataSpec } from '../../core/job/federated-job.ts';
import { WorkerError } from '../errors.ts';
import { loadCsv } from './csv.ts';
import type { LoadContext, SiteData } from './dataset.ts';
import { loadImageFolder } from './image-folder.ts';
import { fedproxSiteData } from './synthetic/fedprox.ts';
import { hospitalSiteData } from './synthetic/hospital.ts';
import { iidSiteData } from './synthetic/iid.ts';

export type { Dataset, LoadContext, SiteData } from './dataset.ts';

/**
 * The site's data. Refuses (CONSORT_W_DATA_EMPTY) a site left with no training or no test
 * examples (a single usable row, say): it could neither train nor be scored, and its metrics
 * would be NaN in every report.
 */
export async function loadSiteData(spec: DataSpec, ctx: LoadContext): Promise<SiteData> {
  const data = await loadAny(spec, ctx);
  for (const [part, ds] of [
    ['training', data.train],
    ['test', data.test],
  ] as const) {
    if (ds.n > 0) continue;
    const rows = data.quality.rowsUsed;
    const fix = spec.type !== 'synthetic' && spec.test === undefined ? ': with no test file, at least 2 are needed (one to train on, one to test on)' : '';
    throw new WorkerError('CONSORT_W_DATA_EMPTY', `site "${ctx.site}": no ${part} examples (${rows} usable example${rows === 1 ? '' : 's'}${fix})`);
  }
  return data;
}

async function loadAny(spec: DataSpec, ctx: LoadContext): Promise<SiteData> {
  switch (spec.type) {
    case 'csv':
      return loadCsv(spec, ctx);
    case 'imageFolder':
      return loadImageFolder(spec, ctx);
    case 'synthetic':
      switch (spec.generator) {
        case 'hospital':
          return hospitalSiteData(spec, ctx);
        case 'fedprox':
          return fedproxSiteData(spec, ctx.classes);
        case 'iid':
          return iidSiteData(spec, ctx.classes);
      }
  }
}
