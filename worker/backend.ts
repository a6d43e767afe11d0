// TF.js backend selection. Production images carry tfjs-node-gpu; laptops and CI have the
// native CPU build (tfjs-node) or nothing native at all. We try, in order of preference for the
// model at hand, and always say which backend runs and why: results differ across backends in
// the last bits, so the report records it.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { WorkerError } from './errors.ts';
import { applyNativeDefaults } from './native-env.ts';

export type BackendName = 'tensorflow-gpu' | 'tensorflow' | 'wasm' | 'cpu';
export type BackendPreference = 'auto' | BackendName;

export interface BackendChoice {
  name: BackendName;
  reason: string;
  /** What was tried before and why it was passed over. */
  skipped: string[];
}

/**
 * Below this many parameters a dense model is dominated by per-op overhead, where wasm beats
 * the native binding (make bench, 2 cores, batch 32: the 978-parameter hospital MLP 3.2x faster
 * on wasm; a 104k-parameter MLP 4.3x faster on native, a small CNN ~35x).
 */
export const SMALL_MODEL_PARAMETERS = 20_000;

const require = createRequire(import.meta.url);
// Read when libtensorflow loads, so set before the native import (effective in a main thread
// only: SitePool sets them for its threads).
applyNativeDefaults();
// PROD silences tf-core's console advice (e.g. "install our node backend") that would otherwise
// land in the middle of the progress bars; the backend choice is logged by us instead.
tf.env().set('PROD', true);

async function tryNative(pkg: '@tensorflow/tfjs-node-gpu' | '@tensorflow/tfjs-node'): Promise<string | undefined> {
  try {
    await import(pkg);
    return undefined;
  } catch (err) {
    const msg = err instanceof Error ? err.message.split('\n')[0] : String(err);
    return `${pkg} unavailable (${msg})`;
  }
}

async function tryWasm(): Promise<string | undefined> {
  try {
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    const dist = join(dirname(require.resolve('@tensorflow/tfjs-backend-wasm')), '/');
    wasm.setWasmPaths(dist.endsWith('/dist/') ? dist : join(dist, '../dist/'));
    // Multi-threaded wasm spawns its own workers; sites already run one per core.
    wasm.setThreadsCount?.(1);
    return undefined;
  } catch (err) {
    return `wasm unavailable (${err instanceof Error ? err.message : String(err)})`;
  }
}

async function activate(name: BackendName): Promise<string | undefined> {
  const tfName = name === 'tensorflow-gpu' ? 'tensorflow' : name;
  let problem: string | undefined;
  if (name === 'tensorflow-gpu') problem = await tryNative('@tensorflow/tfjs-node-gpu');
  else if (name === 'tensorflow') problem = await tryNative('@tensorflow/tfjs-node');
  else if (name === 'wasm') problem = await tryWasm();
  if (problem) return problem;
  try {
    const ok = await tf.setBackend(tfName);
    if (!ok) return `${name} failed to initialise`;
    await tf.ready();
    return undefined;
  } catch (err) {
    return `${name} failed to initialise (${err instanceof Error ? err.message : String(err)})`;
  }
}

/** The order to try backends in, for a model of this size and kind. */
export function backendOrder(pref: BackendPreference, parameters: number, convolutional: boolean): { order: BackendName[]; why: string } {
  if (pref !== 'auto') return { order: [pref], why: `requested by the job or --backend` };
  const hasGpu = process.env.CONSORT_GPU === '1' || (process.env.CONSORT_GPU !== '0' && (process.env.NVIDIA_VISIBLE_DEVICES ?? '') !== '');
  const native: BackendName[] = hasGpu ? ['tensorflow-gpu', 'tensorflow'] : ['tensorflow'];
  if (!convolutional && parameters < SMALL_MODEL_PARAMETERS) {
    return {
      order: ['wasm', ...native, 'cpu'],
      why: `small dense model (${parameters} parameters < ${SMALL_MODEL_PARAMETERS}): per-op overhead dominates, wasm is fastest`,
    };
  }
  if (convolutional) {
    // tfjs-backend-wasm 4.22 has no Conv2DBackpropFilter kernel: it cannot train a CNN.
    return {
      order: [...native, 'cpu'],
      why: `convolutional model of ${parameters} parameters: native kernels are fastest (~35x the JS cpu backend)${hasGpu ? ' (GPU visible)' : ''}`,
    };
  }
  return {
    order: [...native, 'wasm', 'cpu'],
    why: `${convolutional ? 'convolutional' : 'dense'} model of ${parameters} parameters: native kernels are fastest${hasGpu ? ' (GPU visible)' : ''}`,
  };
}

export async function selectBackend(pref: BackendPreference, parameters: number, convolutional: boolean): Promise<BackendChoice> {
  const { order, why } = backendOrder(pref, parameters, convolutional);
  const skipped: string[] = [];
  for (const name of order) {
    const problem = await activate(name);
    if (problem === undefined) {
      const reason = skipped.length === 0 ? why : `${why}; fell back past: ${skipped.join('; ')}`;
      return { name, reason, skipped };
    }
    skipped.push(problem);
  }
  throw new WorkerError('CONSORT_W_BACKEND', `no TF.js backend could be initialised: ${skipped.join('; ')}`);
}

export { tf };
