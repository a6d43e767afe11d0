// The TF.js local trainer against core's reference of the client-side corrections: one
// softmax-regression step computed by hand in float64 must match what the worker does with
// tensors, for plain SGD, FedProx and SCAFFOLD. And a long-lived worker leaks no tensors.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { initialParameters } from '../../core/model/layout.ts';
import { builtInParameters } from '../../core/model/size.ts';
import { Rng } from '../../core/rng.ts';
import { proximalGradient, scaffoldControlUpdate, scaffoldCorrectedGradient } from '../../core/strategies/client-terms.ts';
import { selectBackend, tf } from '../../worker/backend.ts';
import type { Dataset } from '../../worker/data/dataset.ts';
import { buildModel } from '../../worker/model.ts';
import { exportLayersModel, SiteWorker } from '../../worker/site-worker.ts';
import { coarseColumns, coarseInputsWarning } from '../../core/data/moments.ts';
import { LocalTrainer } from '../../worker/trainer.ts';

const D = 3;
const K = 2;

function tinyData(n: number, seed: number): Dataset {
  const rng = Rng.from(seed, 'tiny');
  const x = new Float32Array(n * D);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < D; j++) x[i * D + j] = rng.normal();
    y[i] = x[i * D]! + 0.5 * x[i * D + 1]! > 0 ? 1 : 0;
  }
  return { x, y, n, sampleShape: [D] };
}

/** Mean softmax cross-entropy gradient of a logistic model; weights = [kernel D×K, bias K]. */
function referenceGradient(w: Float64Array, data: Dataset): Float64Array {
  const g = new Float64Array(w.length);
  for (let i = 0; i < data.n; i++) {
    const logits = [0, 0].map((_, k) => {
      let z = w[D * K + k]!;
      for (let j = 0; j < D; j++) z += data.x[i * D + j]! * w[j * K + k]!;
      return z;
    });
    const m = Math.max(...logits);
    const e = logits.map((z) => Math.exp(z - m));
    const s = e[0]! + e[1]!;
    for (let k = 0; k < K; k++) {
      const r = e[k]! / s - (data.y[i] === k ? 1 : 0);
      for (let j = 0; j < D; j++) g[j * K + k]! += (data.x[i * D + j]! * r) / data.n;
      g[D * K + k]! += r / data.n;
    }
  }
  return g;
}

const f32 = (a: Float64Array) => Float32Array.from(a);

describe('LocalTrainer (native TF.js backend)', () => {
  let trainer: LocalTrainer;
  beforeAll(async () => {
    const choice = await selectBackend('tensorflow', 0, false);
    expect(choice.name).toBe('tensorflow');
    trainer = new LocalTrainer(await buildModel({ type: 'logistic' }, [D], K, '.'));
  });

  const data = tinyData(16, 1);
  const start = Float32Array.from([0.2, -0.1, 0.05, 0.3, -0.4, 0.1, 0.01, -0.02]);
  const lr = 0.5;

  /** Two full-batch SGD steps by hand, with an optional gradient adjustment. */
  function byHand(adjust: (grad: Float32Array, w: Float32Array) => Float32Array): Float32Array {
    let w = Float64Array.from(start);
    for (let step = 0; step < 2; step++) {
      const g = adjust(f32(referenceGradient(w, data)), f32(w));
      w = w.map((v, i) => v - lr * g[i]!);
    }
    return f32(w);
  }

  async function byTrainer(proximalMu: number, correction?: Float32Array): Promise<Float32Array> {
    trainer.setWeights(start);
    await trainer.fit(data, K, {
      epochs: 2,
      batchSize: data.n,
      optimizer: 'sgd',
      learningRate: lr,
      shuffle: Rng.from(0, 'test'),
      proximalMu,
      ...(correction ? { correction } : {}),
    });
    return trainer.getWeights();
  }

  it('plain SGD matches the hand-computed steps', async () => {
    const got = await byTrainer(0);
    const want = byHand((g) => g);
    got.forEach((v, i) => expect(v).toBeCloseTo(want[i]!, 5));
  });

  it('FedProx adds mu (w - w_global) to every gradient', async () => {
    const mu = 0.7;
    const got = await byTrainer(mu);
    const want = byHand((g, w) => proximalGradient(g, w, start, mu));
    got.forEach((v, i) => expect(v).toBeCloseTo(want[i]!, 5));
    // The proximal term changes the result (it is not zero after the first step).
    const plain = byHand((g) => g);
    expect(Math.max(...got.map((v, i) => Math.abs(v - plain[i]!)))).toBeGreaterThan(1e-3);
  });

  it('SCAFFOLD adds c - c_i to every gradient', async () => {
    const cLocal = Float32Array.from([0.1, 0, -0.2, 0.05, 0, 0.3, -0.1, 0.2]);
    const cServer = Float32Array.from([-0.05, 0.1, 0, 0.2, 0.1, -0.1, 0, 0.05]);
    const correction = cServer.map((c, i) => c - cLocal[i]!);
    const got = await byTrainer(0, correction);
    const want = byHand((g) => scaffoldCorrectedGradient(g, cLocal, cServer));
    got.forEach((v, i) => expect(v).toBeCloseTo(want[i]!, 5));
  });

  it("SCAFFOLD under momentum: the mean of the loss's own gradients at the local iterates (option II's c_i+)", async () => {
    const correction = Float32Array.from([0.05, -0.1, 0.2, 0, 0.1, -0.05, 0.02, 0]);
    trainer.setWeights(start);
    const { steps, meanGradient } = await trainer.fit(data, K, {
      epochs: 2,
      batchSize: data.n,
      optimizer: 'momentum',
      learningRate: lr,
      shuffle: Rng.from(0, 'test'),
      proximalMu: 0,
      correction,
      meanGradient: true,
    });
    expect(steps).toBe(2);
    // By hand: TF.js's momentum 0.9 keeps a <- 0.9 a + g and steps w <- w - lr a, g corrected.
    let w = Float64Array.from(start);
    let a = new Float64Array(w.length);
    const sum = new Float64Array(w.length);
    for (let step = 0; step < 2; step++) {
      const g = referenceGradient(w, data);
      g.forEach((v, i) => (sum[i]! += v));
      a = a.map((v, i) => 0.9 * v + g[i]! + correction[i]!);
      w = w.map((v, i) => v - lr * a[i]!);
    }
    meanGradient!.forEach((v, i) => expect(v).toBeCloseTo(sum[i]! / 2, 5));
    // What (x - y) / (K lr) - (c - c_i) reads off the weights is another thing under momentum.
    const shortcut = w.map((v, i) => (start[i]! - v) / (2 * lr) - correction[i]!);
    expect(Math.max(...shortcut.map((v, i) => Math.abs(v - sum[i]! / 2)))).toBeGreaterThan(1e-2);
  });

  it('under momentum, a task leaves no tensor behind (TF.js momentum optimizer kept its learning-rate scalar, one a task)', async () => {
    const task = () =>
      trainer.fit(data, K, { epochs: 2, batchSize: data.n, optimizer: 'momentum', learningRate: lr, shuffle: Rng.from(0, 'test'), proximalMu: 0 });
    await task();
    const alive = tf.memory().numTensors;
    for (let round = 0; round < 3; round++) await task();
    expect(tf.memory().numTensors).toBe(alive);
  });
});

describe('SiteWorker', () => {
  const spec = FederatedJobSpec.parse({
    model: { type: 'mlp', hidden: [8] },
    sites: [{ name: 'a', data: { type: 'synthetic', generator: 'hospital', samples: 120 } }],
    training: { epochs: 2, batchSize: 16, learningRate: 0.05, backend: 'tensorflow' },
    strategy: { name: 'scaffold' },
    seed: 3,
  });

  it("computes SCAFFOLD's client variate as core's option II", async () => {
    const worker = new SiteWorker({ spec, baseDir: '.', backend: 'tensorflow' });
    const d = await worker.describe(0);
    const prepared = await worker.prepare(['no', 'yes'], d.sampleShape);
    const global = initialParameters(prepared.layout, spec.seed);
    const serverControl = Float32Array.from({ length: global.length }, (_, i) => ((i % 7) - 3) * 1e-3);
    const first = await worker.fit({ round: 1, siteIndex: 0, global, proximalMu: 0, serverControl });
    const trained = global.map((v, i) => v + first.delta[i]!);
    const want = scaffoldControlUpdate(new Float32Array(global.length), serverControl, global, trained, first.steps, spec.training.learningRate);
    first.controlDelta!.forEach((v, i) => expect(v).toBeCloseTo(want[i]!, 4));
    // The variate persists on the site: the next round's delta of c is measured from it.
    const second = await worker.fit({ round: 2, siteIndex: 0, global: trained, proximalMu: 0, serverControl });
    const trained2 = trained.map((v, i) => v + second.delta[i]!);
    const want2 = scaffoldControlUpdate(want, serverControl, trained, trained2, second.steps, spec.training.learningRate);
    second.controlDelta!.forEach((v, i) => expect(v).toBeCloseTo(want2[i]! - want[i]!, 4));
    worker.dispose();
  });

  it("forgets the c_i a left-out round moved before its next fit, and only that round's (the local runner's dropped update)", async () => {
    const started = async () => {
      const w = new SiteWorker({ spec, baseDir: '.', backend: 'tensorflow' });
      const d = await w.describe(0);
      return { w, layout: (await w.prepare(['no', 'yes'], d.sampleShape)).layout };
    };
    const { w: worker, layout } = await started();
    const { w: fresh } = await started();
    const global = initialParameters(layout, spec.seed);
    const serverControl = Float32Array.from({ length: global.length }, (_, i) => ((i % 5) - 2) * 1e-3);
    const task = (round: number, forget?: number) => ({ round, siteIndex: 0, global, proximalMu: 0, serverControl, ...(forget ? { forget } : {}) });
    await worker.fit(task(1));
    // Round 1's update was left out: round 2 trains as from a site that never fitted round 1.
    const again = await worker.fit(task(2, 1));
    const want = await fresh.fit(task(2));
    expect(again.delta).toEqual(want.delta);
    expect(again.controlDelta).toEqual(want.controlDelta);
    // A round that is not its last fit's is not forgotten: c_i stays as round 2 left it.
    const third = await worker.fit(task(3, 1));
    const wantThird = await fresh.fit(task(3));
    expect(third.controlDelta).toEqual(wantThird.controlDelta);
    worker.dispose();
    fresh.dispose();
  });

  it('leaks no tensors: as many alive after round 10 as after round 1', async () => {
    const worker = new SiteWorker({ spec: { ...spec, strategy: { name: 'fedprox', mu: 0.1, serverLearningRate: 1 } }, baseDir: '.', backend: 'tensorflow' });
    const d = await worker.describe(0);
    const prepared = await worker.prepare(['no', 'yes'], d.sampleShape);
    let global = initialParameters(prepared.layout, spec.seed);
    const alive: number[] = [];
    for (let round = 1; round <= 10; round++) {
      const r = await worker.fit({ round, siteIndex: 0, global, proximalMu: 0.1 });
      global = global.map((v, i) => v + r.delta[i]!);
      await worker.evaluate({ siteIndex: 0, global, trainLoss: true });
      await worker.exportModel(global);
      alive.push(worker.numTensors());
    }
    expect(alive[9]).toBe(alive[0]);
    expect(tf.memory().numTensors).toBe(alive[9]);
    worker.dispose();
  });
});

describe('buildModel refuses a model that cannot take the data', () => {
  const modelError = async (p: Promise<unknown>): Promise<string> => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((err as { code?: string }).code).toBe('CONSORT_W_MODEL');
    return (err as Error).message;
  };

  it("a Layers model whose input shape is not the data's", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'consort-layers-'));
    try {
      const m = tf.sequential({ layers: [tf.layers.dense({ units: 2, inputShape: [3] })] });
      writeFileSync(join(dir, 'model.json'), JSON.stringify(m.toJSON(null, false)));
      expect(await modelError(buildModel({ type: 'layers', path: 'model.json' }, [2], 2, dir))).toBe(
        `the model in ${join(dir, 'model.json')} (spec.model.path) takes inputs of shape [3], but the data's examples have shape [2]`,
      );
      expect((await buildModel({ type: 'layers', path: 'model.json' }, [3], 2, dir)).layout).toHaveLength(2);
      expect(await modelError(buildModel({ type: 'layers', path: 'none.json' }, [3], 2, dir))).toMatch(
        /cannot read the model file .*none\.json: no such file$/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a user's Layers model: a last Softmax layer gives probabilities, and conv layers make it convolutional", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'consort-layers-'));
    try {
      const save = (name: string, m: tf.LayersModel) => writeFileSync(join(dir, name), JSON.stringify(m.toJSON(null, false)));
      save('softmax-layer.json', tf.sequential({ layers: [tf.layers.dense({ units: 2, inputShape: [3] }), tf.layers.softmax()] }));
      save('logits.json', tf.sequential({ layers: [tf.layers.dense({ units: 2, inputShape: [3] })] }));
      save(
        'conv.json',
        tf.sequential({ layers: [tf.layers.conv2d({ filters: 2, kernelSize: 3, inputShape: [8, 8, 1] }), tf.layers.flatten(), tf.layers.dense({ units: 2 })] }),
      );
      const built = async (path: string, shape: number[]) => buildModel({ type: 'layers', path }, shape, 2, dir);
      const softmax = await built('softmax-layer.json', [3]);
      expect([softmax.outputsProbabilities, softmax.convolutional]).toEqual([true, false]);
      const logits = await built('logits.json', [3]);
      expect(logits.outputsProbabilities).toBe(false);
      expect((await built('conv.json', [8, 8, 1])).convolutional).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('trains a model with dropout to the same bytes from the same seed, and other bytes from another; Math.random is left as it was', async () => {
    const built = await buildModel({ type: 'mlp', hidden: [16], activation: 'relu', dropout: 0.5 }, [D], K, '.');
    const dropout = new LocalTrainer(built);
    const data = tinyData(64, 3);
    const start = initialParameters(built.layout, 5);
    const random = Math.random;
    const train = async (seed: number) => {
      dropout.setWeights(start);
      await dropout.fit(data, K, { epochs: 2, batchSize: 8, optimizer: 'sgd', learningRate: 0.3, shuffle: Rng.from(seed, 'dropout'), proximalMu: 0 });
      return Buffer.from(dropout.getWeights().buffer);
    };
    const a = await train(1);
    expect((await train(1)).equals(a)).toBe(true);
    expect((await train(2)).equals(a)).toBe(false);
    expect(Math.random).toBe(random);
    built.model.dispose();
  });

  it("a user's functional model of logits exports with a softmax after its output; one of two outputs is refused", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'consort-functional-'));
    try {
      const input = tf.input({ shape: [3], name: 'features' });
      const hidden = tf.layers.dense({ units: 4, activation: 'relu', name: 'hidden' }).apply(input) as tf.SymbolicTensor;
      const logits = tf.layers.dense({ units: 2, name: 'logits' }).apply(hidden) as tf.SymbolicTensor;
      // Listed out of order: the output layer is not the last one (the topology is a graph).
      const side = tf.layers.dense({ units: 1, name: 'side' }).apply(hidden) as tf.SymbolicTensor;
      writeFileSync(join(dir, 'model.json'), JSON.stringify(tf.model({ inputs: input, outputs: logits }).toJSON(null, false)));
      writeFileSync(join(dir, 'two.json'), JSON.stringify(tf.model({ inputs: input, outputs: [logits, side] }).toJSON(null, false)));
      const built = await buildModel({ type: 'layers', path: 'model.json' }, [3], 2, dir);
      expect(built.outputsProbabilities).toBe(false);
      const trainer = new LocalTrainer(built);
      const weights = initialParameters(built.layout, 7);
      const exported = await exportLayersModel(trainer, weights);
      const loaded = await tf.loadLayersModel(
        tf.io.fromMemory({ modelTopology: exported.modelTopology, weightSpecs: exported.weightSpecs, weightData: exported.weightData }),
      );
      const x = tf.tensor2d([
        [1, -2, 0.5],
        [0.3, 0.1, -1],
      ]);
      trainer.setWeights(weights);
      const want = tf.softmax(built.model.predict(x) as tf.Tensor).arraySync() as number[][];
      const got = (loaded.predict(x) as tf.Tensor).arraySync() as number[][];
      for (let i = 0; i < 2; i++) for (let k = 0; k < 2; k++) expect(got[i]![k]).toBeCloseTo(want[i]![k]!, 6);
      expect(got[0]![0]! + got[0]![1]!).toBeCloseTo(1, 6);
      x.dispose();
      expect(await modelError(buildModel({ type: 'layers', path: 'two.json' }, [3], 2, dir))).toMatch(
        /has 1 inputs and 2 outputs; a Consort model takes one input/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('folds the scaling into the exported model where float32 holds the raw values finely, and not where it cannot (a timestamp of 3e7 varying by 2)', async () => {
    const built = await buildModel({ type: 'logistic' }, [2], 2, '.');
    const trainer = new LocalTrainer(built);
    const weights = initialParameters(built.layout, 3);
    const fine = { mean: [250, 37], std: [80, 0.7] };
    const coarse = { mean: [30_000_001.5, 37], std: [1.8, 0.7] };
    expect(coarseColumns(fine)).toEqual([]);
    expect(coarseColumns(coarse)).toEqual([0]);
    expect(coarseColumns({ mean: [1e6], std: [1] })).toEqual([0]);
    const load = async (e: { modelTopology: unknown; weightSpecs: unknown[]; weightData: ArrayBuffer }) =>
      tf.loadLayersModel(
        tf.io.fromMemory({ modelTopology: e.modelTopology as object, weightSpecs: e.weightSpecs as tf.io.WeightsManifestEntry[], weightData: e.weightData }),
      );
    const rows = (scaler: { mean: number[]; std: number[] }) => [
      [scaler.mean[0]! + scaler.std[0]!, scaler.mean[1]! - scaler.std[1]!],
      [scaler.mean[0]! - 2 * scaler.std[0]!, scaler.mean[1]!],
    ];
    const scaled = (scaler: { mean: number[]; std: number[] }) => rows(scaler).map((r) => r.map((v, j) => (v - scaler.mean[j]!) / scaler.std[j]!));
    trainer.setWeights(weights);
    for (const scaler of [fine, coarse]) {
      const exported = await exportLayersModel(trainer, weights, scaler);
      const loaded = await load(exported);
      const want = tf.tidy(() => tf.softmax(built.model.predict(tf.tensor2d(scaled(scaler))) as tf.Tensor).arraySync() as number[][]);
      // Folded: raw values in; else scaled values in, and the coarse column named.
      const input = scaler === fine ? rows(scaler) : scaled(scaler);
      const got = tf.tidy(() => (loaded.predict(tf.tensor2d(input)) as tf.Tensor).arraySync() as number[][]);
      for (let i = 0; i < 2; i++) for (let k = 0; k < 2; k++) expect(got[i]![k]).toBeCloseTo(want[i]![k]!, 5);
      expect(exported.takesRawInputs).toBe(scaler === fine ? true : undefined);
      expect(exported.coarseColumns).toEqual(scaler === fine ? undefined : [0]);
      loaded.dispose();
    }
    expect(coarseInputsWarning([0], coarse, ['stamp', 'temperature'])).toBe(
      `tfjs/model.json takes scaled values, not raw ones: float32, TF.js's number type, cannot hold the raw values of "stamp" (mean 30000001.5, std 1.8) finely enough to tell them apart; give it (x - mean) / std with report.json's model.inputScaler, computed in double precision`,
    );
    expect(coarseInputsWarning(undefined, fine)).toBeUndefined();
    built.model.dispose();
  });

  it('a cnn whose blocks would halve the image below one pixel', async () => {
    const cnn = { type: 'cnn' as const, filters: [8, 8, 8], kernelSize: 3, dense: 16 };
    expect(await modelError(buildModel(cnn, [6, 6, 1], 3, '.'))).toBe(
      'a cnn of 3 blocks (model.filters) halves a 6x6 image 3 times, below one pixel; use at most 2 blocks, or larger images',
    );
    expect((await buildModel(cnn, [8, 8, 1], 3, '.')).layout.length).toBeGreaterThan(0);
  });

  it('a model no machine here can hold, with its size (TF.js met it with a RangeError); the count is what TF.js builds', async () => {
    const huge = { type: 'mlp' as const, hidden: [100_000, 100_000], activation: 'relu' as const, dropout: 0 };
    expect(await modelError(buildModel(huge, [3], 3, '.'))).toMatch(
      /^spec\.model: the mlp model has 10,000,800,003 parameters for 3 inputs and 3 classes \(40\.0 GB of weights\); training it needs about 240\.0 GB, more than this machine's [\d.]+ GB: make the model smaller \(spec\.model\.hidden\)$/,
    );
    for (const [spec, shape, classes] of [
      [{ type: 'logistic' }, [7], 3],
      [{ type: 'logistic' }, [5, 4, 2], 4],
      [{ type: 'mlp', hidden: [16, 8], activation: 'relu', dropout: 0.1 }, [11], 2],
      [{ type: 'mlp', hidden: [5], activation: 'tanh', dropout: 0 }, [6, 6, 1], 5],
      [{ type: 'cnn', filters: [4, 8], kernelSize: 3, dense: 16 }, [9, 7, 3], 4],
      [{ type: 'cnn', filters: [2], kernelSize: 5, dense: 8 }, [8, 8, 1], 2],
    ] as const) {
      const built = await buildModel(spec as never, [...shape], classes, '.');
      expect(builtInParameters(spec as never, shape, classes), JSON.stringify(spec)).toBe(built.model.countParams());
      built.model.dispose();
    }
  });
});
