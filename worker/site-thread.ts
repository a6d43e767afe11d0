// Entry of a pool thread: a SiteWorker answering requests from the local runner, one at a time
// (the thread's single TF.js model is shared by the sites it serves).
import { parentPort, workerData } from 'node:worker_threads';
import { tf } from './backend.ts';
import { SiteWorker, type SiteWorkerConfig } from './site-worker.ts';
import type { WorkerError } from './errors.ts';

/** What a pool thread is started with: the sites' config, and the pool's lock on the native backend. */
export interface SiteThreadData extends SiteWorkerConfig {
  /** 0 free, 1 held: one pool thread at a time runs the native (libtensorflow) backend. */
  nativeLock: Int32Array;
}

export type SiteOp = 'describe' | 'prepare' | 'fit' | 'evaluate' | 'trainCentral' | 'exportModel' | 'numTensors';
export interface SiteRequest {
  id: number;
  op: SiteOp;
  args: unknown[];
}
export type SiteResponse =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: { name: string; message: string; code?: string; file?: string; line?: number; stack?: string } };

const port = parentPort;
if (!port) throw new Error('site-thread.ts must run in a worker thread');
const { nativeLock, ...config } = workerData as SiteThreadData;
const worker = new SiteWorker(config);

/**
 * libtensorflow's binding shares its state between the threads of a process: two threads running
 * ops at once corrupted it (an op built without its attributes, then a heap corruption, seen with
 * a convolutional model on two threads). Its kernels use every core by themselves, so the pool's
 * threads take turns on it (a task at a time) and lose little; the other backends need no turn.
 * prepare takes a turn too: it may switch this thread to the native backend and build on it.
 */
async function inTurn<T>(op: SiteOp, fn: () => Promise<T>): Promise<T> {
  if (op !== 'prepare' && tf.getBackend() !== 'tensorflow') return fn();
  while (Atomics.compareExchange(nativeLock, 0, 0, 1) !== 0) await Atomics.waitAsync(nativeLock, 0, 1).value;
  try {
    return await fn();
  } finally {
    Atomics.store(nativeLock, 0, 0);
    Atomics.notify(nativeLock, 0, 1);
  }
}

/** Typed arrays in a result go back by transfer, not copy. */
function transferables(value: unknown, out: ArrayBuffer[] = []): ArrayBuffer[] {
  if (ArrayBuffer.isView(value) && value.buffer instanceof ArrayBuffer) {
    if (!out.includes(value.buffer)) out.push(value.buffer);
  } else if (Array.isArray(value)) {
    for (const v of value) transferables(v, out);
  } else if (value && typeof value === 'object') {
    for (const v of Object.values(value)) transferables(v, out);
  }
  return out;
}

let queue: Promise<void> = Promise.resolve();
port.on('message', (req: SiteRequest) => {
  queue = queue.then(async () => {
    try {
      const fn = (worker as unknown as Record<string, (...a: unknown[]) => unknown>)[req.op];
      if (typeof fn !== 'function') throw new Error(`unknown op ${req.op}`);
      const result = await inTurn(req.op, async () => fn.apply(worker, req.args));
      port.postMessage({ id: req.id, ok: true, result } satisfies SiteResponse, transferables(result));
    } catch (err) {
      const e = err as Error & Partial<WorkerError>;
      port.postMessage({
        id: req.id,
        ok: false,
        error: {
          name: e.name ?? 'Error',
          message: e.message ?? String(err),
          ...(e.code ? { code: e.code } : {}),
          ...(e.file ? { file: e.file } : {}),
          ...(e.line ? { line: e.line } : {}),
          ...(e.stack ? { stack: e.stack } : {}),
        },
      } satisfies SiteResponse);
    }
  });
});
