// A site's data, from its DataSpec. Raw values never leave worker/data except as the standardised
// tensors of SiteData, which go only to the local trainer; the quality report holds counts only.
import type { DataSpec } from '../../core/job/federated-job.ts';
import { loadCsv } from './csv.ts';
import type { LoadContext, SiteData } from './dataset.ts';
import { loadImageFolder } from './image-folder.ts';
import { fedproxSiteData } from './synthetic/fedprox.ts';
import { hospitalSiteData } from './synthetic/hospital.ts';
import { iidSiteData } from './synthetic/iid.ts';

export type { Dataset, LoadContext, SiteData } from './dataset.ts';

export async function loadSiteData(spec: DataSpec, ctx: LoadContext): Promise<SiteData> {
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
