// Local training throughput (examples per second) of each TF.js backend, through the real
// LocalTrainer, on the models sites train: the hospital example's MLP, a small CNN, the FedProx
// benchmark's logistic model and the 1000-site simulation's MLP. Each backend runs in a process
// of its own (libtensorflow reads TF_ENABLE_ONEDNN_OPTS when it loads; tfjs-node and
// tfjs-node-gpu cannot share one).
import { SyntheticData } from '../../core/job/federated-job.ts';
import type { ModelSpec } from '../../core/job/federated-job.ts';
import { initialParameters } from '../../core/model/layout.ts';
import { Rng } from '../../core/rng.ts';
import { type BackendName, backendOrder, selectBackend } from '../../worker/backend.ts';
import type { Dataset } from '../../worker/data/dataset.ts';
import { hospitalSiteData } from '../../worker/data/synthetic/hospital.ts';
import { buildModel, isConvolutional } from '../../worker/model.ts';
import { LocalTrainer } from '../../worker/trainer.ts';
import { inChild } from './child.ts';
import { fixed, grouped, printTable } from './table.ts';

export interface ThroughputArgs {
  quick: boolean;
}

interface Workload {
  name: string;
  model: ModelSpec;
  /** The hospital generator's patients (2 classes), or random 28x28x1 images / 60 features (10 classes). */
  data: 'hospital' | 'images' | 'features';
  batchSize: number;
  learningRate: number;
  /** Examples in the timed data set (an epoch of it is one fit call). */
  examples: { quick: number; full: number };
}

const WORKLOADS: Workload[] = [
  {
    name: 'hospital mlp [32,16], 12 features',
    model: { type: 'mlp', hidden: [32, 16], activation: 'relu', dropout: 0 },
    data: 'hospital',
    batchSize: 32,
    learningRate: 0.1,
    examples: { quick: 2000, full: 4000 },
  },
  {
    name: 'cnn 28x28x1, filters [8], dense 32',
    model: { type: 'cnn', filters: [8], kernelSize: 3, dense: 32 },
    data: 'images',
    batchSize: 32,
    learningRate: 0.05,
    examples: { quick: 128, full: 320 },
  },
  {
    name: 'fedprox logistic, 60 features',
    model: { type: 'logistic' },
    data: 'features',
    batchSize: 10,
    learningRate: 0.01,
    examples: { quick: 1000, full: 2000 },
  },
  // The 1000-site simulation's model at an ordinary batch size: the parameter count alone does
  // not decide the backend (5 examples a step: wasm is faster; 32: native is).
  {
    name: 'mlp [1024,40], 60 features',
    model: { type: 'mlp', hidden: [1024, 40], activation: 'relu', dropout: 0 },
    data: 'features',
    batchSize: 32,
    learningRate: 0.05,
    examples: { quick: 640, full: 1280 },
  },
];

interface BackendConfig {
  label: string;
  backend: BackendName;
  env?: Record<string, string>;
}

const CONFIGS: BackendConfig[] = [
  { label: 'tensorflow-gpu', backend: 'tensorflow-gpu' },
  // worker/native-env.ts turns oneDNN's rewrites off unless the environment says otherwise.
  { label: 'tensorflow (oneDNN off)', backend: 'tensorflow', env: { TF_ENABLE_ONEDNN_OPTS: '0' } },
  { label: 'tensorflow, oneDNN on', backend: 'tensorflow', env: { TF_ENABLE_ONEDNN_OPTS: '1' } },
  { label: 'wasm', backend: 'wasm' },
  { label: 'cpu', backend: 'cpu' },
];

type Measurement = { examplesPerSecond: number; parameters: number; seconds: number; examples: number } | { unavailable: string };

function workloadData(w: Workload, n: number): Dataset {
  if (w.data === 'hospital') {
    const spec = SyntheticData.parse({ type: 'synthetic', generator: 'hospital', samples: Math.ceil(n / 0.75) + 1, testFraction: 0.25 });
    if (spec.generator !== 'hospital') throw new Error('unreachable');
    return firstExamples(hospitalSiteData(spec, { site: 'bench', jobSeed: 0, baseDir: '.' }).train, n);
  }
  const sampleShape = w.data === 'images' ? [28, 28, 1] : [60];
  const size = sampleShape.reduce((a, b) => a * b, 1);
  const rng = Rng.from(0, 'bench-throughput', w.name);
  const x = new Float32Array(n * size);
  for (let i = 0; i < x.length; i++) x[i] = rng.normal();
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) y[i] = rng.int(10);
  return { x, y, n, sampleShape };
}

function firstExamples(d: Dataset, n: number): Dataset {
  const m = Math.min(n, d.n);
  const size = d.sampleShape.reduce((a, b) => a * b, 1);
  return { x: d.x.subarray(0, m * size), y: d.y.subarray(0, m), n: m, sampleShape: d.sampleShape };
}

/** In the child process: every workload on one backend. */
export async function measureBackend(args: { backend: BackendName; quick: boolean }): Promise<Record<string, Measurement>> {
  const out: Record<string, Measurement> = {};
  try {
    await selectBackend(args.backend, 0, false);
  } catch (err) {
    const why = (err as Error).message.replace(/^no TF\.js backend could be initialised: /, '');
    for (const w of WORKLOADS) out[w.name] = { unavailable: why };
    return out;
  }
  const budgetMs = args.quick ? 1500 : 5000;
  for (const w of WORKLOADS) {
    try {
      const data = workloadData(w, args.quick ? w.examples.quick : w.examples.full);
      const classes = w.data === 'hospital' ? 2 : 10;
      const built = await buildModel(w.model, data.sampleShape, classes, '.');
      const trainer = new LocalTrainer(built);
      const initial = initialParameters(built.layout, 0);
      const opts = { epochs: 1, batchSize: w.batchSize, optimizer: 'sgd' as const, learningRate: w.learningRate, proximalMu: 0 };
      try {
        trainer.setWeights(initial);
        // Warm-up: kernels initialise (and native ones pick algorithms) on first use.
        await trainer.fit(firstExamples(data, 4 * w.batchSize), classes, { ...opts, shuffle: Rng.from(0, 'warm-up') });
        let examples = 0;
        const t0 = performance.now();
        for (let epoch = 0; performance.now() - t0 < budgetMs; epoch++) {
          trainer.setWeights(initial);
          await trainer.fit(data, classes, { ...opts, shuffle: Rng.from(0, 'epoch', epoch) });
          examples += data.n;
        }
        const seconds = (performance.now() - t0) / 1000;
        out[w.name] = { examplesPerSecond: examples / seconds, parameters: built.model.countParams(), seconds, examples };
      } finally {
        built.model.dispose();
      }
    } catch (err) {
      out[w.name] = { unavailable: (err as Error).message.split('\n')[0]! };
    }
  }
  return out;
}

/** A short reason for the table; the full message goes to bench.json. */
function explain(backend: BackendName, workload: Workload, m: { unavailable: string }): string {
  if (backend === 'wasm' && workload.model.type === 'cnn' && /Conv2DBackpropFilter/.test(m.unavailable)) {
    return 'n/a (tfjs-backend-wasm has no Conv2DBackpropFilter kernel: it cannot train a CNN)';
  }
  if (/tfjs_binding\.node\) can not be found/.test(m.unavailable)) return 'n/a (native addon not built on this machine: no GPU build of libtensorflow here)';
  return `n/a (${m.unavailable.length > 100 ? `${m.unavailable.slice(0, 100)}...` : m.unavailable})`;
}

export async function run(args: ThroughputArgs): Promise<unknown> {
  const results: Record<string, Record<string, Measurement>> = {};
  for (const c of CONFIGS) {
    results[c.label] = await inChild<Record<string, Measurement>>(
      'throughput.ts',
      'measureBackend',
      { backend: c.backend, quick: args.quick },
      c.env ? { env: c.env } : {},
    );
  }
  const summary = WORKLOADS.map((w) => {
    const cpu = results.cpu?.[w.name];
    const cpuRate = cpu && 'examplesPerSecond' in cpu ? cpu.examplesPerSecond : Number.NaN;
    const parameters = Object.values(results)
      .map((r) => r[w.name])
      .find((m): m is Extract<Measurement, { parameters: number }> => m !== undefined && 'parameters' in m)?.parameters;
    const auto = backendOrder('auto', parameters ?? 0, isConvolutional(w.model)).order;
    const rows = CONFIGS.map((c) => {
      const m = results[c.label]![w.name]!;
      if ('unavailable' in m) return { backend: c.label, examplesPerSecond: undefined, vsCpu: undefined, note: explain(c.backend, w, m) };
      return { backend: c.label, examplesPerSecond: m.examplesPerSecond, vsCpu: m.examplesPerSecond / cpuRate };
    });
    printTable(
      `Local training throughput: ${w.name}, batch ${w.batchSize}${parameters !== undefined ? `, ${grouped(parameters)} parameters` : ''} (LocalTrainer.fit, SGD)`,
      ['backend', 'examples/s', 'vs cpu'],
      rows.map((r) => [
        r.backend,
        r.examplesPerSecond === undefined ? r.note : grouped(r.examplesPerSecond),
        r.vsCpu === undefined ? '' : `${fixed(r.vsCpu, 2)}x`,
      ]),
      [`auto (no GPU visible) tries: ${auto.join(', ')}`],
    );
    return { workload: w.name, model: w.model, batchSize: w.batchSize, parameters, autoOrder: auto, rows };
  });
  return { budgetSeconds: args.quick ? 1.5 : 5, workloads: summary, raw: results };
}
