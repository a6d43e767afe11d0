// A site's data-quality report. Only these counts ever leave a site: never rows, never values.
import { z } from 'zod';

export const DataQuality = z.object({
  rowsUsed: z.number().int().min(0),
  /** Rejected rows by reason, e.g. { "label not a known class": 3, "non-numeric value": 1 }. */
  rowsRejected: z.record(z.string(), z.number().int().min(0)),
  /** Missing (empty) values per column, after which the value was imputed with the train mean. */
  missing: z.record(z.string(), z.number().int().min(0)),
  /** Examples per label, train and test together. */
  labels: z.record(z.string(), z.number().int().min(0)),
  /** Examples per label in the train split alone (absent from sites of earlier versions). */
  trainLabels: z.record(z.string(), z.number().int().min(0)).optional(),
  trainSamples: z.number().int().min(0),
  testSamples: z.number().int().min(0),
});
export type DataQuality = z.infer<typeof DataQuality>;
