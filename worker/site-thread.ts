// Entry of a pool thread: a SiteWorker answering requests from the local runner, one at a time
// (the thread's single TF.js model is shared by the sites it serves).
import { parentPort, workerData } from 'node:worker_threads';
import { SiteWorker, type SiteWorkerConfig } from './site-worker.ts';
import type { WorkerError } from './errors.ts';

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
const worker = new SiteWorker(workerData as SiteWorkerConfig);

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
      const result = await fn.apply(worker, req.args);
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
