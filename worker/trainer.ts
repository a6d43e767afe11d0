// Local training of one site's copy of the model: E epochs of minibatch SGD-family steps, with
// FedProx's proximal term or SCAFFOLD's control-variate correction added to each gradient.
// Weights move in and out as flat Float32Arrays at the task boundary only; everything per
// batch happens inside tf.tidy so that a 200-round job leaks no tensors.
import type { TrainingSpec } from '../core/job/federated-job.ts';
import { layoutOffsets } from '../core/model/layout.ts';
import type { Rng } from '../core/rng.ts';
import { tf } from './backend.ts';
import type { Dataset } from './data/dataset.ts';
import type { BuiltModel } from './model.ts';

export interface LocalFitOptions {
  epochs: number;
  batchSize: number;
  optimizer: TrainingSpec['optimizer'];
  learningRate: number;
  /** Keys of the batch-order stream: (jobSeed, 'batches', round, site, ...). */
  shuffle: Rng;
  /** FedProx mu; 0 turns the proximal term off. */
  proximalMu: number;
  /** SCAFFOLD: c - c_i over the flat layout, added to every gradient. */
  correction?: Float32Array;
  /** SCAFFOLD under momentum or Adam: also return the mean of the loss's own gradients over the steps. */
  meanGradient?: boolean;
}

export interface LocalFitResult {
  /** Mean loss over the last epoch's examples. */
  trainLoss: number;
  /** Optimizer steps taken (SCAFFOLD's K). */
  steps: number;
  /**
   * When asked: (1/K) Sum_k of the loss's gradients at the K local iterates (neither FedProx's
   * term nor SCAFFOLD's correction in it), over the flat layout; 0 where a weight is not trainable.
   */
  meanGradient?: Float32Array;
}

export class LocalTrainer {
  readonly built: BuiltModel;
  private readonly offsets: Array<{ offset: number; size: number }>;
  /** For each trainable variable: its index in the layout. */
  private readonly trainableIndex: number[];

  constructor(built: BuiltModel) {
    this.built = built;
    this.offsets = layoutOffsets(built.layout);
    const all = built.model.weights;
    this.trainableIndex = built.model.trainableWeights.map((w) => all.indexOf(w));
  }

  get size(): number {
    const last = this.offsets[this.offsets.length - 1];
    return last ? last.offset + last.size : 0;
  }

  setWeights(flat: Float32Array): void {
    // Another model's weights would fill this one's tensors from their first values, silently.
    if (flat.length !== this.size) throw new RangeError(`setWeights: ${flat.length} weights for a model of ${this.size}`);
    const tensors = this.built.layout.map((t, i) => {
      const { offset, size } = this.offsets[i]!;
      return tf.tensor(flat.subarray(offset, offset + size), t.shape, 'float32');
    });
    this.built.model.setWeights(tensors);
    for (const t of tensors) t.dispose();
  }

  getWeights(): Float32Array {
    const out = new Float32Array(this.size);
    // getWeights returns the variables themselves: read, never dispose.
    this.built.model.getWeights().forEach((t, i) => out.set(t.dataSync() as Float32Array, this.offsets[i]!.offset));
    return out;
  }

  async fit(data: Dataset, numClasses: number, opts: LocalFitOptions): Promise<LocalFitResult> {
    const { model, layout } = this.built;
    const vars = model.trainableWeights.map((w) => w.read() as tf.Variable);
    const n = data.n;
    const x = tf.tensor(data.x, [n, ...data.sampleShape], 'float32');
    const y = tf.tidy(() => tf.oneHot(tf.tensor1d(data.y, 'int32'), numClasses).toFloat());
    // Per-variable constants of this task: the global weights (FedProx anchor) and c - c_i.
    const anchors = opts.proximalMu > 0 ? vars.map((v) => v.clone()) : [];
    const corrections = opts.correction
      ? this.trainableIndex.map((li) => {
          const { offset, size } = this.offsets[li]!;
          return tf.tensor(opts.correction!.subarray(offset, offset + size), layout[li]!.shape, 'float32');
        })
      : [];
    // Summed in float32 on the backend, read once at the end.
    const gradientSums = opts.meanGradient ? vars.map((v) => tf.tidy(() => tf.variable(tf.zerosLike(v), false))) : [];
    const optimizer = makeOptimizer(opts.optimizer, opts.learningRate);
    const mu = tf.scalar(opts.proximalMu);
    const order = new Int32Array(n);
    let steps = 0;
    let lastEpochLoss: tf.Variable | undefined;
    // Dropout (and any layer that draws noise) seeds itself from Math.random: for the steps, a
    // stream of the task's seeded generator, so that a site's training is the same bytes every
    // run. Swapped back before the first await, so no other task on this thread ever sees it.
    const random = Math.random;
    Math.random = () => opts.shuffle.uniform();
    try {
      for (let epoch = 0; epoch < opts.epochs; epoch++) {
        for (let i = 0; i < n; i++) order[i] = i;
        opts.shuffle.shuffle(order);
        // Only the last epoch's loss is reported: summing it in earlier epochs would cost three
        // kernels a step for nothing (a tenth of a small model's step).
        const epochLoss = epoch === opts.epochs - 1 ? tf.tidy(() => tf.variable(tf.scalar(0), false)) : undefined;
        lastEpochLoss = epochLoss;
        for (let start = 0; start < n; start += opts.batchSize) {
          const idx = order.subarray(start, Math.min(n, start + opts.batchSize));
          tf.tidy(() => {
            const ix = tf.tensor1d(idx, 'int32');
            const xb = tf.gather(x, ix);
            const yb = tf.gather(y, ix);
            const { value, grads } = tf.variableGrads(() => this.loss(xb, yb, true), vars);
            const named: Record<string, tf.Tensor> = {};
            vars.forEach((v, i) => {
              let g = grads[v.name]!;
              if (gradientSums.length > 0) gradientSums[i]!.assign(gradientSums[i]!.add(g));
              if (anchors.length > 0) g = g.add(v.sub(anchors[i]!).mul(mu));
              if (corrections.length > 0) g = g.add(corrections[i]!);
              named[v.name] = g;
            });
            optimizer.applyGradients(named);
            if (epochLoss) epochLoss.assign(epochLoss.add(value.mul(idx.length)));
          });
          steps++;
        }
      }
      Math.random = random;
      const trainLoss = (await lastEpochLoss!.data())[0]! / Math.max(1, n);
      if (gradientSums.length === 0) return { trainLoss, steps };
      const meanGradient = new Float32Array(this.size);
      for (const [i, li] of this.trainableIndex.entries()) {
        const sum = (await gradientSums[i]!.data()) as Float32Array;
        const { offset } = this.offsets[li]!;
        for (let j = 0; j < sum.length; j++) meanGradient[offset + j] = sum[j]! / Math.max(1, steps);
      }
      return { trainLoss, steps, meanGradient };
    } finally {
      Math.random = random;
      lastEpochLoss?.dispose();
      optimizer.dispose();
      // TF.js's MomentumOptimizer.dispose() forgets its SGD part's learning-rate scalar: one
      // tensor a round, for the life of the process.
      if (opts.optimizer === 'momentum') (optimizer as unknown as { c?: tf.Tensor }).c?.dispose();
      mu.dispose();
      x.dispose();
      y.dispose();
      for (const t of anchors) t.dispose();
      for (const t of corrections) t.dispose();
      for (const t of gradientSums) t.dispose();
    }
  }

  /** Class probabilities for every example, in batches. */
  predict(data: Dataset, numClasses: number): Float32Array {
    const out = new Float32Array(data.n * numClasses);
    const per = data.sampleShape.reduce((a, b) => a * b, 1);
    const batch = 4096;
    for (let start = 0; start < data.n; start += batch) {
      const end = Math.min(data.n, start + batch);
      const probs = tf.tidy(() => {
        const xb = tf.tensor(data.x.subarray(start * per, end * per), [end - start, ...data.sampleShape], 'float32');
        const outT = this.built.model.predict(xb) as tf.Tensor;
        return this.built.outputsProbabilities ? outT : tf.softmax(outT);
      });
      out.set(probs.dataSync() as Float32Array, start * numClasses);
      probs.dispose();
    }
    return out;
  }

  private loss(xb: tf.Tensor, yb: tf.Tensor, training: boolean): tf.Scalar {
    const out = this.built.model.apply(xb, { training }) as tf.Tensor;
    return this.built.outputsProbabilities
      ? (tf.neg(tf.sum(yb.mul(tf.log(out.clipByValue(1e-7, 1 - 1e-7))), -1)).mean() as tf.Scalar)
      : (tf.losses.softmaxCrossEntropy(yb, out) as tf.Scalar);
  }
}

function makeOptimizer(kind: TrainingSpec['optimizer'], lr: number): tf.Optimizer {
  switch (kind) {
    case 'sgd':
      return tf.train.sgd(lr);
    case 'momentum':
      return tf.train.momentum(lr, 0.9);
    case 'adam':
      return tf.train.adam(lr);
  }
}
