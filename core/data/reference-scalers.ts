// Scalings a job's data has by construction, whatever the sites' moments say. The synthetic
// hospital generator standardises its vitals and labs with fixed clinical reference values, the
// same at every hospital, instead of sending moments to pool: a run of it had no input scaler,
// so its model card said the model takes the values "as they are, unscaled", and the exported
// model scored 0.30 on raw rows it scores 0.78 on scaled. With the reference as the job's input
// scaler, report.json and the card state it and the exported model folds it in (raw inputs).
import type { FederatedJobSpec } from '../job/federated-job.ts';
import type { InputScaler } from './moments.ts';

/**
 * Clinical reference values (typical adult inpatient mean and spread of each measurement), the
 * same at every hospital, in the generator's feature order (worker/data/synthetic/hospital.ts).
 */
export const HOSPITAL_REFERENCE: InputScaler = {
  mean: [60, 86, 18, 37.1, 126, 97, 8.5, 1.5, 1.05, 255, 0.75, 14.5],
  std: [17, 16, 4.5, 0.7, 19, 2.5, 3.2, 0.8, 0.45, 80, 0.45, 1.3],
};

/** The scaling every site's data has by construction (all sites synthetic hospitals), else undefined. */
export function fixedInputScaler(spec: Pick<FederatedJobSpec, 'sites'>): InputScaler | undefined {
  return spec.sites.every((s) => s.data.type === 'synthetic' && s.data.generator === 'hospital') ? HOSPITAL_REFERENCE : undefined;
}
