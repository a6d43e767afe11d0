// FedProx Synthetic(α, β), one device per site, following the reference code (generate_synthetic.py
// of litian96/FedProx): its np.random.normal(0, alpha) takes a STANDARD DEVIATION, so u_k ~ N(0, α²)
// in variance terms, and likewise B_k. Per device k:
//   n_k = int(lognormal(4, 2)) + 50; u_k ~ N(0, sd α); B_k ~ N(0, sd β); v_k,j ~ N(B_k, 1);
//   W_k ~ N(u_k, 1) (60 × 10); b_k ~ N(u_k, 1) (10); x ~ N(v_k, diag(j^-1.2)); y = argmax(x W_k + b_k).
// Every draw of device k comes from Rng.from(seed, 'fedprox', α, β, k), so a device's data never
// depends on how many other devices exist or were generated first.
import type { SyntheticData } from '../../../core/job/federated-job.ts';
import { Rng } from '../../../core/rng.ts';
import type { SiteData } from '../dataset.ts';
import { drawDevice, indexClasses, type LinearSoftmaxModel, lognormalSamples, syntheticSiteData } from './linear-softmax.ts';

export type FedProxSpec = Extract<SyntheticData, { generator: 'fedprox' }>;

export const FEDPROX_DIMENSION = 60;
export const FEDPROX_CLASSES = 10;

export function fedproxSiteData(spec: FedProxSpec, classes?: string[]): SiteData {
  const d = FEDPROX_DIMENSION;
  const k = FEDPROX_CLASSES;
  const names = indexClasses(k, classes, `FedProx Synthetic(${spec.alpha}, ${spec.beta})`);
  const rng = Rng.from(spec.seed, 'fedprox', spec.alpha, spec.beta, spec.device);
  const n = lognormalSamples(rng);
  const u = rng.normal(0, spec.alpha);
  const B = rng.normal(0, spec.beta);
  const v = new Float64Array(d);
  for (let j = 0; j < d; j++) v[j] = rng.normal(B, 1);
  const model: LinearSoftmaxModel = { d, k, W: new Float64Array(d * k), b: new Float64Array(k) };
  for (let i = 0; i < d * k; i++) model.W[i] = rng.normal(u, 1);
  for (let c = 0; c < k; c++) model.b[c] = rng.normal(u, 1);
  return syntheticSiteData(drawDevice(rng, n, v, model), names);
}
