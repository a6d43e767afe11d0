// The IID counterpart of FedProx Synthetic (the reference code's generate_iid.py): every device
// draws x ~ N(0, diag(j^-1.2)) and labels it with one shared model, W ~ N(0, 1), b ~ N(0, 1), drawn
// from Rng.from(seed, 'iid-model'). A device's own draws come from Rng.from(seed, 'iid', device).
import type { SyntheticData } from '../../../core/job/federated-job.ts';
import { Rng } from '../../../core/rng.ts';
import type { SiteData } from '../dataset.ts';
import { drawDevice, indexClasses, type LinearSoftmaxModel, lognormalSamples, syntheticSiteData } from './linear-softmax.ts';

export type IidSpec = Extract<SyntheticData, { generator: 'iid' }>;

export function iidModel(seed: number, d: number, k: number): LinearSoftmaxModel {
  const rng = Rng.from(seed, 'iid-model');
  const model: LinearSoftmaxModel = { d, k, W: new Float64Array(d * k), b: new Float64Array(k) };
  for (let i = 0; i < d * k; i++) model.W[i] = rng.normal(0, 1);
  for (let c = 0; c < k; c++) model.b[c] = rng.normal(0, 1);
  return model;
}

export function iidSiteData(spec: IidSpec, classes?: string[]): SiteData {
  const names = indexClasses(spec.classes, classes, `the IID synthetic set`);
  const rng = Rng.from(spec.seed, 'iid', spec.device);
  const n = spec.samples ?? lognormalSamples(rng);
  const model = iidModel(spec.seed, spec.features, spec.classes);
  return syntheticSiteData(drawDevice(rng, n, new Float64Array(spec.features), model), names);
}
