// The weights a TF.js model.json carries (its weightsManifest), put in a layout's order: a user's
// pre-trained model is then round 1's global model (fine-tuning), not a seeded fresh start.
// Pure: the caller reads the files the manifest names and hands over their bytes.
import { z } from 'zod';
import { type ParameterLayout, layoutOffsets, layoutSize, tensorSize } from './layout.ts';

const WeightEntry = z
  .object({
    name: z.string().min(1),
    shape: z.array(z.number().int().min(0)),
    dtype: z.string(),
    quantization: z.unknown().optional(),
  })
  .passthrough();

export const WeightsManifest = z
  .array(z.object({ paths: z.array(z.string().min(1)).min(1), weights: z.array(WeightEntry) }).passthrough())
  .describe("TF.js model.json's weightsManifest: groups of weights, each stored across its paths' files in order");
export type WeightsManifest = z.infer<typeof WeightsManifest>;

/** Whether a model.json's contents carry weights (a non-empty weightsManifest): a pre-trained model. */
export function carriesWeights(modelJson: unknown): boolean {
  const raw = (modelJson as { weightsManifest?: unknown } | null)?.weightsManifest;
  return Array.isArray(raw) && raw.length > 0;
}

/** A weights file that cannot give the model its weights; the message says why. */
export class WeightsError extends Error {}

/**
 * The manifest's float32 weights in `layout`'s order, from each group's bytes (its paths' files
 * concatenated). Weights are matched by name; a file saved from another naming of the same
 * layers (a Keras export) falls back to the order, when every shape then agrees.
 */
/** The largest |weight| a model file may start from. */
const MAX_WEIGHT = 2 ** 20;

export function weightsInLayout(manifest: WeightsManifest, groupBytes: readonly Uint8Array[], layout: ParameterLayout): Float32Array {
  const stored = new Map<string, { shape: number[]; values: Float32Array }>();
  const inOrder: Array<{ name: string; shape: number[]; values: Float32Array }> = [];
  manifest.forEach((group, g) => {
    const bytes = groupBytes[g];
    if (!bytes) throw new WeightsError(`weight group ${g} (${group.paths.join(', ')}) was not read`);
    let at = 0;
    for (const w of group.weights) {
      if (w.quantization !== undefined) {
        throw new WeightsError(`weight "${w.name}" is quantized; save the model without weight quantization (float32)`);
      }
      if (w.dtype !== 'float32') throw new WeightsError(`weight "${w.name}" is ${w.dtype}; a trained model's weights must be float32`);
      const size = tensorSize(w.shape);
      if (at + 4 * size > bytes.length) {
        throw new WeightsError(
          `${group.paths.join(', ')}: ${bytes.length} bytes, too few for weight "${w.name}" (shape [${w.shape.join(', ')}]) at byte ${at}`,
        );
      }
      // A copy: the files' bytes need not be 4-byte aligned, and are little-endian as on every TF.js platform.
      const values = new Float32Array(size);
      new Uint8Array(values.buffer).set(bytes.subarray(at, at + 4 * size));
      at += 4 * size;
      stored.set(w.name, { shape: w.shape, values });
      inOrder.push({ name: w.name, shape: w.shape, values });
    }
    if (at !== bytes.length) throw new WeightsError(`${group.paths.join(', ')}: ${bytes.length} bytes, but its weights take ${at}`);
  });
  const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);
  const byName = layout.map((t) => stored.get(t.name));
  let chosen: Array<{ shape: number[]; values: Float32Array }>;
  if (byName.every((w) => w !== undefined)) {
    chosen = byName as Array<{ shape: number[]; values: Float32Array }>;
  } else if (inOrder.length === layout.length && inOrder.every((w, i) => sameShape(w.shape, layout[i]!.shape))) {
    chosen = inOrder;
  } else {
    const missing = layout.filter((_, i) => byName[i] === undefined).map((t) => t.name);
    throw new WeightsError(
      `the weights file has no weight named ${missing
        .slice(0, 3)
        .map((n) => `"${n}"`)
        .join(', ')}${missing.length > 3 ? ` (and ${missing.length - 3} more)` : ''} (it has ${inOrder
        .slice(0, 5)
        .map((w) => `"${w.name}"`)
        .join(', ')}${inOrder.length > 5 ? ', ...' : ''}), and its weights in order do not have the model's shapes`,
    );
  }
  const out = new Float32Array(layoutSize(layout));
  const offsets = layoutOffsets(layout);
  layout.forEach((t, i) => {
    const w = chosen[i]!;
    if (!sameShape(w.shape, t.shape)) {
      throw new WeightsError(`weight "${t.name}" has shape [${w.shape.join(', ')}] in the weights file, [${t.shape.join(', ')}] in the model`);
    }
    out.set(w.values, offsets[i]!.offset);
  });
  // Beyond what an update may change a weight by (ingestion's ±2^20), a weight is no trained
  // model's: training from 1e30 diverged at once and was blamed on the learning rate.
  for (let i = 0; i < out.length; i++) {
    const v = out[i]!;
    if (Number.isFinite(v) && Math.abs(v) <= MAX_WEIGHT) continue;
    const t = offsets.findIndex((o) => i < o.offset + o.size);
    const where = `element ${i - offsets[t]!.offset} of "${layout[t]!.name}"`;
    throw new WeightsError(
      Number.isFinite(v)
        ? `the weights file holds ${v} (${where}), beyond ±${MAX_WEIGHT}: no model trains from such weights (is the file another model's, or not float32?)`
        : `the weights file holds a ${v} (${where})`,
    );
  }
  return out;
}
