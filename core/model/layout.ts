// A model's parameters as one flat Float32Array over its tensors, in a fixed order. The wire,
// the aggregator and the checkpoints only ever see this flat form; shapes travel beside it.
import { z } from 'zod';
import { Rng } from '../rng.ts';

export const TensorSpec = z.object({
  name: z.string().min(1),
  shape: z.array(z.number().int().min(0)),
});
export type TensorSpec = z.infer<typeof TensorSpec>;

export const ParameterLayout = z.array(TensorSpec);
export type ParameterLayout = z.infer<typeof ParameterLayout>;

export function tensorSize(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function layoutSize(layout: ParameterLayout): number {
  return layout.reduce((n, t) => n + tensorSize(t.shape), 0);
}

/** [offset, size] of each tensor in the flat vector. */
export function layoutOffsets(layout: ParameterLayout): Array<{ offset: number; size: number }> {
  let offset = 0;
  return layout.map((t) => {
    const size = tensorSize(t.shape);
    const at = { offset, size };
    offset += size;
    return at;
  });
}

/**
 * Seeded initial weights, independent of the TF.js backend: Glorot-uniform kernels, zero biases,
 * ones for normalisation scales and variances. The coordinator's round 1 starts from these, so
 * every backend and every site starts from the same bytes.
 */
export function initialParameters(layout: ParameterLayout, seed: number): Float32Array {
  const out = new Float32Array(layoutSize(layout));
  const offsets = layoutOffsets(layout);
  layout.forEach((t, i) => {
    const { offset, size } = offsets[i]!;
    const leaf = t.name.split('/').pop() ?? t.name;
    if (/gamma|moving_variance/.test(leaf)) {
      out.fill(1, offset, offset + size);
      return;
    }
    if (t.shape.length < 2 || /bias|beta|moving_mean/.test(leaf)) return; // zeros
    const receptive = t.shape.slice(0, -2).reduce((a, b) => a * b, 1);
    const fanIn = t.shape[t.shape.length - 2]! * receptive;
    const fanOut = t.shape[t.shape.length - 1]! * receptive;
    const limit = Math.sqrt(6 / (fanIn + fanOut));
    const rng = Rng.from(seed, 'init', t.name);
    for (let j = 0; j < size; j++) out[offset + j] = (rng.uniform() * 2 - 1) * limit;
  });
  return out;
}
