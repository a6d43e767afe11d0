// How many parameters a built-in model (logistic, mlp, cnn) has for a given input and class count,
// counted as TF.js builds them (a dense layer: (inputs + 1) x units; a 'same' convolution:
// (k x k x channels + 1) x filters; a 2x2 max-pool halves each side, rounding down). Known before
// anything is allocated, so that a model no machine can hold is refused with its size, not met
// by a RangeError from inside TF.js.
import type { ModelSpec } from '../job/federated-job.ts';

/** Parameters of the model `spec` builds for examples of `inputShape` and `classes` classes; undefined for a Layers file (known once read). */
export function builtInParameters(spec: ModelSpec, inputShape: readonly number[], classes: number): number | undefined {
  const inputs = inputShape.reduce((a, b) => a * b, 1);
  const dense = (from: number, units: number) => (from + 1) * units;
  switch (spec.type) {
    case 'logistic':
      return dense(inputs, classes);
    case 'mlp': {
      let n = 0;
      let from = inputs;
      for (const units of spec.hidden) {
        n += dense(from, units);
        from = units;
      }
      return n + dense(from, classes);
    }
    case 'cnn': {
      let [height = 1, width = 1, channels = 1] = inputShape;
      let n = 0;
      for (const filters of spec.filters) {
        n += (spec.kernelSize * spec.kernelSize * channels + 1) * filters;
        channels = filters;
        height = Math.floor(height / 2);
        width = Math.floor(width / 2);
      }
      return n + dense(height * width * channels, spec.dense) + dense(spec.dense, classes);
    }
    case 'layers':
      return undefined;
  }
}

/** The parameters between an mlp's hidden layers alone: a floor on its size whatever the data (what validate can know). */
export function hiddenParameters(spec: ModelSpec): number {
  if (spec.type !== 'mlp') return 0;
  let n = 0;
  for (let i = 1; i < spec.hidden.length; i++) n += (spec.hidden[i - 1]! + 1) * spec.hidden[i]!;
  return n;
}

/**
 * Bytes a site needs to train a model of `parameters` float32 weights, at the least: the weights,
 * their gradients, the optimizer's state (Adam keeps two slots), and the round's global model and
 * delta beside them.
 */
export function trainingBytes(parameters: number): number {
  return 4 * parameters * 6;
}

/** "1.2 GB" */
export function gigabytes(bytes: number): string {
  return `${(bytes / 1e9).toFixed(1)} GB`;
}
