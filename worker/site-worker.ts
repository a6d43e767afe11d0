// One site's work, behind a small request/response surface: describe the data, train on the
// global model (fit), score a model (evaluate). The same object serves a single site in a
// worker Pod or many sites in a thread of the local runner's pool, where one TF.js model is
// reused for every site the thread serves (a 1000-site simulation is not 1000 models).
import type { FederatedJobSpec } from '../core/job/federated-job.ts';
import type { ParameterLayout } from '../core/model/layout.ts';
import { evaluateProbabilities } from '../core/metrics/classification.ts';
import { Rng } from '../core/rng.ts';
import type { DataQuality } from '../core/data/quality.ts';
import { coarseColumns, type FeatureMoments, type InputScaler } from '../core/data/moments.ts';
import { type BackendChoice, type BackendPreference, selectBackend, tf } from './backend.ts';
import { concatDatasets, type Dataset, type SiteData } from './data/dataset.ts';
import { loadSiteData } from './data/load.ts';
import { WorkerError } from './errors.ts';
import { buildModel, isConvolutional } from './model.ts';
import { LocalTrainer } from './trainer.ts';
import { MAX_ABS_UPDATE_VALUE } from '../core/protocol/ingestion.ts';

export interface SiteWorkerConfig {
  spec: FederatedJobSpec;
  /** Folder that relative data paths resolve against (the job file's). */
  baseDir: string;
  backend: BackendPreference;
}

export interface SiteDescription {
  site: string;
  /** Labels seen at this site (counts stay in quality). */
  labels: string[];
  sampleShape: number[];
  /** The names of the input's features, in the model's order, where the data has them (tabular data). */
  features?: string[];
  quality: DataQuality;
  /** Tabular data: the first moments of the train split's columns (no values), which the federation pools into its scaling. */
  moments?: FeatureMoments;
}

export interface PreparedModel {
  layout: ParameterLayout;
  backend: BackendChoice;
  convolutional: boolean;
  /** The weights the model file carries (a user's pre-trained model): round 1's global model. */
  initial?: Float32Array;
}

export interface FitTask {
  round: number;
  siteIndex: number;
  global: Float32Array;
  proximalMu: number;
  serverControl?: Float32Array;
  /**
   * A round of this site's whose update was left out (past its deadline, or refused): the c_i
   * its fit moved is put back first, if it was this site's last fit (the local runner's word for
   * a refusal a site over NATS reads in its acknowledgement).
   */
  forget?: number;
}

export interface FitReply {
  site: string;
  samples: number;
  delta: Float32Array;
  controlDelta?: Float32Array;
  trainLoss: number;
  steps: number;
}

export interface EvaluateTask {
  siteIndex: number;
  global: Float32Array;
  trainLoss: boolean;
}

export interface EvaluateReply {
  site: string;
  samples: number;
  loss: number;
  accuracy: number;
  auc?: number;
  trainLoss?: number;
  trainSamples?: number;
}

/** Whether a site keeps state between rounds (SCAFFOLD's c_i), so that it must always be served by the same SiteWorker. */
export function keepsSiteState(spec: FederatedJobSpec): boolean {
  return spec.strategy.name === 'scaffold';
}

export class SiteWorker {
  private readonly cfg: SiteWorkerConfig;
  private classes: string[] | undefined;
  /** The federation's input scaling (core/data/moments.ts), once known, and its JSON (a task's is compared with it). */
  private scaler: InputScaler | undefined;
  private scalerJson = '';
  /** The model file carries weights: its inputs are the columns as they are, unless a scaler is given. */
  private pretrained = false;
  private readonly data = new Map<number, SiteData>();
  private trainer: LocalTrainer | undefined;
  /** SCAFFOLD's client control variates c_i: site state that never leaves the site. */
  private readonly controls = new Map<number, Float32Array>();
  /** Per site, the round of its last fit and its c_i before it: put back when that round's update is left out (`forget`). */
  private readonly controlsBefore = new Map<number, { round: number; control: Float32Array | undefined }>();

  constructor(cfg: SiteWorkerConfig) {
    this.cfg = cfg;
    this.classes = cfg.spec.classes;
  }

  /** A site's SCAFFOLD control variate c_i after its last fit (undefined before its first), to keep across restarts. */
  controlOf(siteIndex: number): Float32Array | undefined {
    return this.controls.get(siteIndex);
  }

  /** Puts back a kept control variate (or none: the site starts from c_i = 0, as at its first round). */
  restoreControl(siteIndex: number, control: Float32Array | undefined): void {
    this.controlsBefore.delete(siteIndex);
    if (control) this.controls.set(siteIndex, control);
    else this.controls.delete(siteIndex);
  }

  private site(siteIndex: number) {
    const site = this.cfg.spec.sites[siteIndex];
    if (!site) throw new RangeError(`no site #${siteIndex}`);
    return site;
  }

  private async load(siteIndex: number): Promise<SiteData> {
    let d = this.data.get(siteIndex);
    if (!d) {
      const site = this.site(siteIndex);
      d = await loadSiteData(site.data, {
        site: site.name,
        jobSeed: this.cfg.spec.seed,
        baseDir: this.cfg.baseDir,
        ...(this.classes ? { classes: this.classes } : {}),
        ...(this.scaler ? { scaler: this.scaler } : this.pretrained ? { raw: true } : {}),
      });
      if (d.train.n === 0) {
        throw new WorkerError('CONSORT_W_DATA_EMPTY', `site "${site.name}" has no training examples`);
      }
      this.data.set(siteIndex, d);
    }
    return d;
  }

  /** Reads the site's data without knowing the job's classes yet. */
  async describe(siteIndex: number): Promise<SiteDescription> {
    const d = await this.load(siteIndex);
    if (this.classes === undefined) this.data.delete(siteIndex); // reload with the job's classes
    return {
      site: this.site(siteIndex).name,
      labels: d.classes,
      sampleShape: d.train.sampleShape,
      ...(d.featureNames ? { features: d.featureNames } : {}),
      quality: d.quality,
      ...(d.moments ? { moments: d.moments } : {}),
    };
  }

  /**
   * Scales tabular inputs with the federation's mean and std from now on (data scaled otherwise
   * is read again). The same scaler again changes nothing.
   */
  useScaler(scaler: InputScaler): void {
    const json = JSON.stringify(scaler);
    if (json === this.scalerJson) return;
    this.scaler = scaler;
    this.scalerJson = json;
    this.data.clear();
  }

  /** Fixes the classes and input shape, picks the backend and builds the model. */
  /**
   * Picking a backend switches TF.js's engine for the whole thread: SiteWorkers sharing a thread
   * (tests, benchmarks) prepare one at a time, or one would build on a backend another is
   * still initialising.
   */
  private static preparing: Promise<unknown> = Promise.resolve();

  prepare(classes: string[], sampleShape: number[], scaler?: InputScaler): Promise<PreparedModel> {
    if (scaler) this.useScaler(scaler);
    const next = SiteWorker.preparing.then(() => this.prepareNow(classes, sampleShape));
    SiteWorker.preparing = next.catch(() => {});
    return next;
  }

  private async prepareNow(classes: string[], sampleShape: number[]): Promise<PreparedModel> {
    this.classes = classes;
    this.data.clear();
    const { spec, baseDir } = this.cfg;
    // Count parameters on the default backend first: the backend choice depends on model size, and
    // on its layers (a user's Layers model may be convolutional too).
    const probe = await buildModel(spec.model, sampleShape, classes.length, baseDir, { weights: false });
    const parameters = probe.model.countParams();
    const convolutional = isConvolutional(spec.model) || probe.convolutional;
    probe.model.dispose();
    const backend = await selectBackend(this.cfg.backend === 'auto' ? spec.training.backend : this.cfg.backend, parameters, convolutional);
    this.trainer?.built.model.dispose();
    this.trainer = new LocalTrainer(await buildModel(spec.model, sampleShape, classes.length, baseDir));
    const { initial } = this.trainer.built;
    this.pretrained = initial !== undefined;
    return { layout: this.trainer.built.layout, backend, convolutional, ...(initial ? { initial } : {}) };
  }

  private ready(): { trainer: LocalTrainer; classes: string[] } {
    if (!this.trainer || !this.classes) throw new Error('SiteWorker.prepare must run before fit/evaluate');
    return { trainer: this.trainer, classes: this.classes };
  }

  async fit(task: FitTask): Promise<FitReply> {
    const { trainer, classes } = this.ready();
    const data = await this.load(task.siteIndex);
    const { spec } = this.cfg;
    const site = this.site(task.siteIndex).name;
    if (task.forget !== undefined && this.controlsBefore.get(task.siteIndex)?.round === task.forget) {
      this.restoreControl(task.siteIndex, this.controlsBefore.get(task.siteIndex)!.control);
    }
    let correction: Float32Array | undefined;
    let cLocal: Float32Array | undefined;
    if (task.serverControl) {
      cLocal = this.controls.get(task.siteIndex) ?? new Float32Array(task.global.length);
      correction = new Float32Array(task.global.length);
      for (let i = 0; i < correction.length; i++) correction[i] = task.serverControl[i]! - cLocal[i]!;
    }
    trainer.setWeights(task.global);
    // SCAFFOLD's option II takes c_i+ as the mean of the local gradients. With plain SGD that is
    // c_i - c + (x - y) / (K lr), read off the weights; a momentum or Adam step is not lr times
    // its gradient, and that formula then made c_i some multiple of the gradients (10x under
    // momentum 0.9): the correction outgrew them and training diverged. Under those, the trainer
    // sums the gradients themselves.
    const sgd = spec.training.optimizer === 'sgd';
    const { trainLoss, steps, meanGradient } = await trainer.fit(data.train, classes.length, {
      epochs: spec.training.epochs,
      batchSize: spec.training.batchSize,
      optimizer: spec.training.optimizer,
      learningRate: spec.training.learningRate,
      shuffle: Rng.from(spec.seed, 'batches', task.round, site),
      proximalMu: task.proximalMu,
      ...(correction ? { correction, meanGradient: !sgd } : {}),
    });
    // FedProx's term pulls the weights back by learningRate x mu of their distance a step: at 1
    // and more it overshoots the global model, past 2 further each step, whatever the data.
    const diverged = (what: string) => {
      const mu = task.proximalMu;
      const pull = mu * spec.training.learningRate;
      const hint =
        pull >= 1
          ? `lower strategy.mu (${mu}): with training.learningRate ${spec.training.learningRate}, each step pulls the weights back by learningRate x mu = ${pull} times their distance from the global model, which must stay well below 1`
          : 'lower training.learningRate';
      return new WorkerError('CONSORT_W_TRAIN', `site "${site}" diverged in round ${task.round} (${what}); ${hint}`);
    };
    if (!Number.isFinite(trainLoss)) throw diverged(`training loss ${trainLoss}`);
    // The trained weights become the delta in place: one model-sized allocation per task, not two.
    const delta = trainer.getWeights();
    const global = task.global;
    let largest = 0;
    for (let i = 0; i < delta.length; i++) {
      delta[i] = delta[i]! - global[i]!;
      const a = Math.abs(delta[i]!);
      if (!(a <= largest)) largest = a;
    }
    // Finite but beyond what the aggregate takes: refused there as out of range, which named
    // neither the cause nor the setting to change.
    if (!(largest <= MAX_ABS_UPDATE_VALUE))
      throw diverged(`its update changes a weight by ${largest.toPrecision(3)}, beyond the ±${MAX_ABS_UPDATE_VALUE} an update may`);
    const reply: FitReply = { site, samples: data.train.n, delta, trainLoss, steps };
    if (task.serverControl && cLocal) {
      // SCAFFOLD option II: c_i+ = c_i - c + (x - y) / (K lr) under SGD, the mean gradient else.
      const scale = 1 / (steps * spec.training.learningRate);
      const next = meanGradient ?? new Float32Array(cLocal.length);
      const controlDelta = new Float32Array(cLocal.length);
      for (let i = 0; i < next.length; i++) {
        if (!meanGradient) next[i] = cLocal[i]! - task.serverControl[i]! - delta[i]! * scale;
        controlDelta[i] = next[i]! - cLocal[i]!;
      }
      this.controlsBefore.set(task.siteIndex, { round: task.round, control: this.controls.get(task.siteIndex) });
      this.controls.set(task.siteIndex, next);
      reply.controlDelta = controlDelta;
    }
    return reply;
  }

  async evaluate(task: EvaluateTask): Promise<EvaluateReply> {
    const { trainer } = this.ready();
    const data = await this.load(task.siteIndex);
    trainer.setWeights(task.global);
    const reply: EvaluateReply = { site: this.site(task.siteIndex).name, ...this.score(data.test) };
    if (task.trainLoss) {
      reply.trainLoss = this.score(data.train).loss;
      reply.trainSamples = data.train.n;
    }
    return reply;
  }

  private score(ds: Dataset): { samples: number; loss: number; accuracy: number; auc?: number } {
    const { trainer, classes } = this.ready();
    if (ds.n === 0) return { samples: 0, loss: Number.NaN, accuracy: Number.NaN };
    const probs = trainer.predict(ds, classes.length);
    const m = evaluateProbabilities(probs, classes.length, ds.y);
    return { samples: ds.n, loss: m.loss, accuracy: m.accuracy, ...(m.auc !== undefined ? { auc: m.auc } : {}) };
  }

  /**
   * Baseline: a model trained on the given sites' data only (one site: "site alone"; all sites:
   * "pooled", what the law forbids), for the same number of local epochs as the federated run
   * spends in total, scored on each of those sites' test splits.
   */
  async trainCentral(siteIndices: number[], initial: Float32Array, epochs: number): Promise<EvaluateReply[]> {
    const { trainer, classes } = this.ready();
    const { spec } = this.cfg;
    const parts = await Promise.all(siteIndices.map((i) => this.load(i)));
    const train = concatDatasets(parts.map((p) => p.train));
    trainer.setWeights(initial);
    await trainer.fit(train, classes.length, {
      epochs,
      batchSize: spec.training.batchSize,
      optimizer: spec.training.optimizer,
      learningRate: spec.training.learningRate,
      shuffle: Rng.from(spec.seed, 'baseline', ...siteIndices),
      proximalMu: 0,
    });
    return siteIndices.map((i, k) => ({ site: this.site(i).name, ...this.score(parts[k]!.test) }));
  }

  /** The global model in TF.js format, for the job's outputs (taking raw inputs where the federation's scaling folds into it). */
  async exportModel(global: Float32Array): Promise<ExportedModel> {
    return exportLayersModel(this.ready().trainer, global, this.scaler);
  }

  /** Tensors alive in this thread's TF.js engine (leak checks). */
  numTensors(): number {
    return tf.memory().numTensors;
  }

  dispose(): void {
    this.trainer?.built.model.dispose();
    this.trainer = undefined;
  }
}

/** A trained model in TF.js's own format (model.json topology and weight manifest, one weights file). */
export interface ExportedModel {
  modelTopology: unknown;
  weightSpecs: unknown[];
  weightData: ArrayBuffer;
  /** The input scaling is folded into the first layer: the model takes raw values (foldScaler). */
  takesRawInputs?: boolean;
  /** Not folded because float32 cannot hold these columns' raw values finely enough (coarseColumns): their indices. */
  coarseColumns?: number[];
}

/**
 * The weights with the federation's input scaling folded into the first layer, where that layer
 * is a Dense one on the inputs (the built-in tabular models): x -> W((x - m) / s) + b is
 * x -> (W / s) x + (b - W (m / s)), so the exported model takes raw values. Undefined where it
 * cannot be folded (another first layer, or another input width).
 */
export function foldScaler(trainer: LocalTrainer, global: Float32Array, scaler: InputScaler): Float32Array | undefined {
  const model = trainer.built.model;
  const first = model.layers[0];
  const [kernel, bias] = model.weights;
  if (!first || !kernel || first.getClassName() !== 'Dense' || first.weights[0]?.name !== kernel.name) return undefined;
  const d = scaler.mean.length;
  const [rows, h] = kernel.shape as number[];
  if (kernel.shape.length !== 2 || rows !== d || h === undefined) return undefined;
  const hasBias = bias !== undefined && first.weights[1]?.name === bias.name && bias.shape.length === 1 && bias.shape[0] === h;
  const out = Float32Array.from(global);
  for (let k = 0; k < h; k++) {
    let shift = 0;
    for (let j = 0; j < d; j++) {
      const w = global[j * h + k]!;
      out[j * h + k] = w / scaler.std[j]!;
      shift += (w * scaler.mean[j]!) / scaler.std[j]!;
    }
    // Without a bias the shift has nowhere to go: nothing is folded.
    if (!hasBias) {
      if (shift !== 0) return undefined;
      continue;
    }
    out[d * h + k] = global[d * h + k]! - shift;
  }
  return out;
}

export async function exportLayersModel(trainer: LocalTrainer, global: Float32Array, scaler?: InputScaler): Promise<ExportedModel> {
  const coarse = scaler ? coarseColumns(scaler) : [];
  const folded = scaler && coarse.length === 0 ? foldScaler(trainer, global, scaler) : undefined;
  trainer.setWeights(folded ?? global);
  let captured: ExportedModel | undefined;
  await trainer.built.model.save(
    tf.io.withSaveHandler(async (a) => {
      const data = Array.isArray(a.weightData) ? tf.io.concatenateArrayBuffers(a.weightData) : a.weightData;
      captured = { modelTopology: a.modelTopology, weightSpecs: a.weightSpecs ?? [], weightData: data as ArrayBuffer };
      return { modelArtifactsInfo: { dateSaved: new Date(0), modelTopologyType: 'JSON' } };
    }),
  );
  if (folded) trainer.setWeights(global);
  if (!captured) throw new Error('TF.js did not hand over the model artifacts');
  if (!trainer.built.outputsProbabilities) captured.modelTopology = withSoftmax(captured.modelTopology);
  return { ...captured, ...(folded ? { takesRawInputs: true } : {}), ...(coarse.length > 0 ? { coarseColumns: coarse } : {}) };
}

/**
 * The topology of a model that trains on logits (the loss applies softmax itself), ending in a
 * softmax layer: what a user of the exported model expects `predict` to give is each class's
 * probability. The layer has no weights, so the weights file is unchanged. A Sequential model
 * gets it as its last layer; a functional one (Model, Keras 3's Functional) as a layer fed by its
 * one output, which it then replaces.
 */
export function withSoftmax(topology: ExportedModel['modelTopology']): ExportedModel['modelTopology'] {
  type Layer = { name?: string; config?: { name?: string } };
  const t = topology as { class_name?: string; config?: { layers?: Layer[]; output_layers?: unknown[] } } | undefined;
  const layers = t?.config?.layers;
  if (!t || !Array.isArray(layers)) throw new Error(`cannot add softmax to a ${t?.class_name ?? 'missing'} topology: it lists no layers`);
  const taken = new Set(layers.map((l) => l.name ?? l.config?.name));
  let name = 'probabilities';
  for (let i = 1; taken.has(name); i++) name = `probabilities_${i}`;
  const config = { name, trainable: true, dtype: 'float32', activation: 'softmax' };
  if (t.class_name === 'Sequential') {
    return { ...t, config: { ...t.config, layers: [...layers, { class_name: 'Activation', config }] } } as ExportedModel['modelTopology'];
  }
  const outputs = t.config?.output_layers;
  const output = Array.isArray(outputs) && outputs.length === 1 ? outputs[0] : undefined;
  if (!Array.isArray(output) || typeof output[0] !== 'string') {
    throw new Error(`cannot add softmax to a ${t.class_name ?? 'missing'} topology: it does not name one output layer`);
  }
  const [layer, node = 0, tensor = 0] = output as [string, number?, number?];
  const softmax = { name, class_name: 'Activation', config, inbound_nodes: [[[layer, node, tensor, {}]]] };
  return { ...t, config: { ...t.config, layers: [...layers, softmax], output_layers: [[name, 0, 0]] } } as ExportedModel['modelTopology'];
}
