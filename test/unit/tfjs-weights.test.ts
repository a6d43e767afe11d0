// A model.json's weightsManifest read into a layout's order: by name, by order when a Keras
// export names the same weights otherwise, and a clear refusal of what cannot be the model's.
import { describe, expect, it } from 'vitest';
import { type WeightsManifest, weightsInLayout } from '../../core/model/tfjs-weights.ts';

const layout = [
  { name: 'd/kernel', shape: [2, 2] },
  { name: 'd/bias', shape: [2] },
];
const bytes = (...v: number[]) => new Uint8Array(Float32Array.from(v).buffer);

describe('weightsInLayout', () => {
  it('puts the weights in the layout order by name, across groups and files', () => {
    const manifest: WeightsManifest = [
      { paths: ['a.bin'], weights: [{ name: 'd/bias', shape: [2], dtype: 'float32' }] },
      { paths: ['b1.bin', 'b2.bin'], weights: [{ name: 'd/kernel', shape: [2, 2], dtype: 'float32' }] },
    ];
    expect([...weightsInLayout(manifest, [bytes(9, 8), bytes(1, 2, 3, 4)], layout)]).toEqual([1, 2, 3, 4, 9, 8]);
  });

  it('falls back to the order when the names differ but every shape agrees', () => {
    const manifest: WeightsManifest = [
      {
        paths: ['w.bin'],
        weights: [
          { name: 'dense/kernel', shape: [2, 2], dtype: 'float32' },
          { name: 'dense/bias', shape: [2], dtype: 'float32' },
        ],
      },
    ];
    expect([...weightsInLayout(manifest, [bytes(1, 2, 3, 4, 5, 6)], layout)]).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('refuses quantized, non-float, short, long, misnamed and non-finite weights, saying which', () => {
    const one = (w: WeightsManifest[number]['weights'], b: Uint8Array) => () => weightsInLayout([{ paths: ['w.bin'], weights: w }], [b], layout);
    const both = (dtype = 'float32', extra: Record<string, unknown> = {}) => [
      { name: 'd/kernel', shape: [2, 2], dtype, ...extra },
      { name: 'd/bias', shape: [2], dtype },
    ];
    expect(one(both('float32', { quantization: { dtype: 'uint8', scale: 1, min: 0 } }), bytes(1, 2, 3, 4, 5, 6))).toThrow(
      'weight "d/kernel" is quantized; save the model without weight quantization (float32)',
    );
    expect(one(both('int32'), bytes(1, 2, 3, 4, 5, 6))).toThrow('weight "d/kernel" is int32; a trained model\'s weights must be float32');
    expect(one(both(), bytes(1, 2, 3, 4, 5))).toThrow('w.bin: 20 bytes, too few for weight "d/bias" (shape [2]) at byte 16');
    expect(one(both(), bytes(1, 2, 3, 4, 5, 6, 7))).toThrow('w.bin: 28 bytes, but its weights take 24');
    expect(one([{ name: 'x/kernel', shape: [3, 2], dtype: 'float32' }], bytes(1, 2, 3, 4, 5, 6))).toThrow(
      'the weights file has no weight named "d/kernel", "d/bias" (it has "x/kernel"), and its weights in order do not have the model\'s shapes',
    );
    expect(
      one(
        [
          { name: 'd/kernel', shape: [4], dtype: 'float32' },
          { name: 'd/bias', shape: [2], dtype: 'float32' },
        ],
        bytes(1, 2, 3, 4, 5, 6),
      ),
    ).toThrow('weight "d/kernel" has shape [4] in the weights file, [2, 2] in the model');
    expect(one(both(), bytes(1, Number.NaN, 3, 4, 5, 6))).toThrow('the weights file holds a NaN (element 1 of "d/kernel")');
    // Finite but no trained model's: training from them diverged, blamed on the learning rate.
    expect(one(both(), bytes(1, 2, 3, 4, 5, 1e30))).toThrow(
      'the weights file holds 1.0000000150474662e+30 (element 1 of "d/bias"), beyond ±1048576: no model trains from such weights (is the file another model\'s, or not float32?)',
    );
    expect(one(both(), bytes(1, 2, 3, 4, 5, -1048576))()).toHaveLength(6);
  });
});
