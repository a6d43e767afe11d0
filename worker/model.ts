// Builds the job's model with TF.js layers. Weights are never initialised here: they arrive as
// the global model (round 1: core's seeded initialParameters), so the builder's own random
// initialisers never decide anything.
import { readFileSync } from 'node:fs';
import { totalmem } from 'node:os';
import { dirname, resolve } from 'node:path';
import type { ModelSpec } from '../core/job/federated-job.ts';
import type { ParameterLayout } from '../core/model/layout.ts';
import { builtInParameters, gigabytes, trainingBytes } from '../core/model/size.ts';
import { WeightsError, WeightsManifest, weightsInLayout } from '../core/model/tfjs-weights.ts';
import { tf } from './backend.ts';
import { WorkerError } from './errors.ts';

export interface BuiltModel {
  model: tf.LayersModel;
  layout: ParameterLayout;
  /** True when the last layer already applies softmax (user Layers models); ours emit logits. */
  outputsProbabilities: boolean;
  /** Has convolutional layers (the backend choice: WebAssembly lacks their gradients). */
  convolutional: boolean;
  /** A user's model.json with weights: those weights in the layout's order, round 1's global model. */
  initial?: Float32Array;
}

/** A Layers model file, read once: where it is, and its JSON. */
interface LayersFile {
  path: string;
  json: unknown;
}

/** The Layers model file a spec names, relative to `baseDir`, parsed (CONSORT_W_MODEL when it cannot be read). */
function readLayersFile(spec: Extract<ModelSpec, { type: 'layers' }>, baseDir: string): LayersFile {
  const path = resolve(baseDir, spec.path);
  try {
    return { path, json: JSON.parse(readFileSync(path, 'utf8')) };
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
    throw new WorkerError('CONSORT_W_MODEL', `cannot read the model file ${path}: ${why}`, { file: path, cause: err });
  }
}

/**
 * The Keras topology a model file holds: a TF.js model.json's modelTopology, or a bare Keras
 * topology (its class_name or model_config); undefined when the JSON is neither.
 */
export function layersTopology(json: unknown): object | undefined {
  if (typeof json !== 'object' || json === null) return undefined;
  const topology = (json as { modelTopology?: unknown }).modelTopology;
  if (typeof topology === 'object' && topology !== null) return topology;
  return 'class_name' in json || 'model_config' in json ? json : undefined;
}

/**
 * The job's model on the current backend. `weights: false` leaves a Layers file's weights unread
 * (a probe of the model's size and layers, disposed at once: the weights files may be large).
 */
export async function buildModel(spec: ModelSpec, inputShape: number[], classes: number, baseDir: string, o: { weights?: boolean } = {}): Promise<BuiltModel> {
  // A Layers file is read once, for its topology and its weights alike.
  const file = spec.type === 'layers' ? readLayersFile(spec, baseDir) : undefined;
  // A model no machine here can hold is refused with its size (TF.js met it with a RangeError).
  const parameters = builtInParameters(spec, inputShape, classes);
  if (parameters !== undefined && trainingBytes(parameters) > totalmem()) {
    throw new WorkerError(
      'CONSORT_W_MODEL',
      `spec.model: the ${spec.type} model has ${parameters.toLocaleString('en-US')} parameters for ${inputShape.join('x')} inputs and ${classes} classes (${gigabytes(4 * parameters)} of weights); training it needs about ${gigabytes(trainingBytes(parameters))}, more than this machine's ${gigabytes(totalmem())}: make the model smaller${spec.type === 'mlp' ? ' (spec.model.hidden)' : ''}`,
    );
  }
  let model: tf.LayersModel;
  try {
    model = await buildLayers(spec, inputShape, classes, file);
  } catch (err) {
    if (err instanceof RangeError && /allocation failed|Invalid typed array length|Array buffer/i.test(err.message)) {
      throw new WorkerError(
        'CONSORT_W_MODEL',
        `spec.model: out of memory building the model${parameters !== undefined ? ` (${parameters.toLocaleString('en-US')} parameters, ${gigabytes(4 * parameters)} of weights)` : ''}: make it smaller`,
        { cause: err },
      );
    }
    throw err;
  }
  const layout = model.weights.map((w) => ({ name: w.originalName ?? w.name, shape: w.shape.map((d) => d ?? 1) }));
  // One input and one output: a site's examples are one tensor, its labels one class each.
  if (model.inputs.length !== 1 || model.outputs.length !== 1) {
    throw new WorkerError(
      'CONSORT_W_MODEL',
      `the model has ${model.inputs.length} inputs and ${model.outputs.length} outputs; a Consort model takes one input (the examples) and gives one output (the classes)`,
    );
  }
  // A functional model's output layer need not be the last one listed.
  const last = model.outputLayers[0] ?? model.layers[model.layers.length - 1];
  const activation = (last?.getConfig() as { activation?: string } | undefined)?.activation;
  // A last Softmax layer gives probabilities as an activation does (taking it for logits would apply softmax twice).
  const outputsProbabilities = activation === 'softmax' || last?.getClassName() === 'Softmax';
  // A user's Layers model fixes its input shape; the data's must fit it (null takes any size).
  const expected = model.inputs[0]?.shape.slice(1) ?? [];
  if (expected.length !== inputShape.length || expected.some((d, i) => d !== null && d !== inputShape[i])) {
    const shown = expected.map((d) => d ?? 'any').join(', ');
    const from = spec.type === 'layers' ? `the model in ${resolve(baseDir, spec.path)} (spec.model.path)` : `the ${spec.type} model`;
    throw new WorkerError('CONSORT_W_MODEL', `${from} takes inputs of shape [${shown}], but the data's examples have shape [${inputShape.join(', ')}]`);
  }
  const outputShape = model.outputs[0]?.shape ?? [];
  if (outputShape[outputShape.length - 1] !== classes) {
    const from = spec.type === 'layers' ? `the model in ${resolve(baseDir, spec.path)} (spec.model.path)` : `the ${spec.type} model`;
    throw new WorkerError(
      'CONSORT_W_MODEL',
      `${from} gives ${outputShape[outputShape.length - 1]} outputs, but the job has ${classes} classes: its last layer needs ${classes} units`,
    );
  }
  const initial = file && o.weights !== false ? layersWeights(file, layout) : undefined;
  return {
    model,
    layout,
    outputsProbabilities,
    convolutional: model.layers.some((l) => /^(Conv|SeparableConv|DepthwiseConv)/.test(l.getClassName())),
    ...(initial ? { initial } : {}),
  };
}

/**
 * The weights a model.json's weightsManifest names (files beside it), in the layout's order;
 * undefined when it names none (the topology alone: a seeded start).
 */
function layersWeights({ path, json }: LayersFile, layout: ParameterLayout): Float32Array | undefined {
  const raw = (json as { weightsManifest?: unknown }).weightsManifest;
  // No manifest, or an empty one: the topology alone.
  if (raw === undefined || (Array.isArray(raw) && raw.length === 0)) return undefined;
  const manifest = WeightsManifest.safeParse(raw);
  if (!manifest.success) {
    const issue = manifest.error.issues[0];
    throw new WorkerError('CONSORT_W_MODEL', `${path}: weightsManifest.${issue?.path.join('.')}: ${issue?.message}`, { file: path });
  }
  const groups = manifest.data.map((group) =>
    Buffer.concat(
      group.paths.map((p) => {
        const file = resolve(dirname(path), p);
        try {
          return readFileSync(file);
        } catch (err) {
          const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
          throw new WorkerError('CONSORT_W_MODEL', `cannot read the weights file ${file} that ${path} names: ${why}`, { file, cause: err });
        }
      }),
    ),
  );
  try {
    return weightsInLayout(manifest.data, groups, layout);
  } catch (err) {
    if (err instanceof WeightsError) throw new WorkerError('CONSORT_W_MODEL', `${path}: ${err.message}`, { file: path, cause: err });
    throw err;
  }
}

/** Whether the spec builds a convolutional model (for backend choice). */
export function isConvolutional(spec: ModelSpec): boolean {
  return spec.type === 'cnn';
}

async function buildLayers(spec: ModelSpec, inputShape: number[], classes: number, file: LayersFile | undefined): Promise<tf.LayersModel> {
  const zeros = 'zeros';
  switch (spec.type) {
    case 'logistic': {
      const m = tf.sequential({ name: 'logistic' });
      if (inputShape.length > 1) m.add(tf.layers.flatten({ inputShape, name: 'flatten' }));
      m.add(tf.layers.dense({ units: classes, kernelInitializer: zeros, name: 'logits', ...(inputShape.length > 1 ? {} : { inputShape }) }));
      return m;
    }
    case 'mlp': {
      const m = tf.sequential({ name: 'mlp' });
      if (inputShape.length > 1) m.add(tf.layers.flatten({ inputShape, name: 'flatten' }));
      spec.hidden.forEach((units, i) => {
        m.add(
          tf.layers.dense({
            units,
            activation: spec.activation,
            kernelInitializer: zeros,
            name: `hidden${i + 1}`,
            ...(i === 0 && inputShape.length === 1 ? { inputShape } : {}),
          }),
        );
        // A seeded dropout mask would repeat every step; dropout is off unless asked for.
        if (spec.dropout > 0) m.add(tf.layers.dropout({ rate: spec.dropout, name: `dropout${i + 1}` }));
      });
      m.add(tf.layers.dense({ units: classes, kernelInitializer: zeros, name: 'logits' }));
      return m;
    }
    case 'cnn': {
      if (inputShape.length !== 3) {
        throw new WorkerError('CONSORT_W_MODEL', `a cnn needs image data [height, width, channels]; the data has shape [${inputShape.join(', ')}]`);
      }
      // Each block halves the image (rounding down): past 1 pixel there is nothing left to see.
      const [height, width] = inputShape as [number, number, number];
      const left = Math.min(height, width) / 2 ** spec.filters.length;
      if (left < 1) {
        throw new WorkerError(
          'CONSORT_W_MODEL',
          `a cnn of ${spec.filters.length} blocks (model.filters) halves a ${height}x${width} image ${spec.filters.length} times, below one pixel; use at most ${Math.floor(Math.log2(Math.min(height, width)))} blocks, or larger images`,
        );
      }
      const m = tf.sequential({ name: 'cnn' });
      spec.filters.forEach((filters, i) => {
        m.add(
          tf.layers.conv2d({
            filters,
            kernelSize: spec.kernelSize,
            padding: 'same',
            activation: 'relu',
            kernelInitializer: zeros,
            name: `conv${i + 1}`,
            ...(i === 0 ? { inputShape } : {}),
          }),
        );
        m.add(tf.layers.maxPooling2d({ poolSize: 2, name: `pool${i + 1}` }));
      });
      m.add(tf.layers.flatten({ name: 'flatten' }));
      m.add(tf.layers.dense({ units: spec.dense, activation: 'relu', kernelInitializer: zeros, name: 'dense' }));
      m.add(tf.layers.dense({ units: classes, kernelInitializer: zeros, name: 'logits' }));
      return m;
    }
    case 'layers': {
      const { path, json } = file!;
      // A TF.js model.json ({modelTopology}) or a bare Keras topology; anything else is left to modelFromJSON to refuse.
      const topology = layersTopology(json) ?? json;
      try {
        const cfg = topology as { model_config?: unknown };
        return await tf.models.modelFromJSON((cfg.model_config ?? topology) as tf.serialization.ConfigDict);
      } catch (err) {
        throw new WorkerError('CONSORT_W_MODEL', `${path} is not a TF.js/Keras Layers model: ${(err as Error).message}`, { file: path, cause: err });
      }
    }
  }
}
