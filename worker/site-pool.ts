// A fixed pool of threads, each running a SiteWorker, for running many sites in one process.
// Sites stick to a thread (site i -> thread i mod P): their data stays cached there and
// SCAFFOLD's client state never moves. Results do not depend on the pool size: every random
// stream is keyed by (seed, round, site), and aggregation is exact.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { WorkerError, type WorkerErrorCode, WorkerErrorCodes } from './errors.ts';
import type { SiteOp, SiteRequest, SiteResponse } from './site-thread.ts';
import type { EvaluateReply, EvaluateTask, ExportedModel, FitReply, FitTask, PreparedModel, SiteDescription, SiteWorkerConfig } from './site-worker.ts';

// Run from source (.ts, type stripping) or from the dist/ build (.js).
const THREAD_ENTRY = new URL(`./site-thread.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url);

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

class PoolThread {
  readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failed: Error | undefined;

  constructor(cfg: SiteWorkerConfig) {
    this.worker = new Worker(THREAD_ENTRY, { workerData: cfg });
    this.worker.on('message', (res: SiteResponse) => {
      const p = this.pending.get(res.id);
      if (!p) return;
      this.pending.delete(res.id);
      if (res.ok) p.resolve(res.result);
      else p.reject(reviveError(res.error));
    });
    const fail = (err: Error) => {
      this.failed = err;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code) => {
      if (this.pending.size > 0) fail(new Error(`site thread exited with code ${code}`));
    });
  }

  call<T>(op: SiteOp, args: unknown[]): Promise<T> {
    if (this.failed) return Promise.reject(this.failed);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ id, op, args } satisfies SiteRequest);
    });
  }
}

function reviveError(e: { name: string; message: string; code?: string; file?: string; line?: number; stack?: string }): Error {
  if (e.code && e.code in WorkerErrorCodes) {
    return new WorkerError(e.code as WorkerErrorCode, e.message, {
      ...(e.file ? { file: e.file } : {}),
      ...(e.line ? { line: e.line } : {}),
    });
  }
  const err = new Error(e.message);
  if (e.stack) err.stack = e.stack;
  return err;
}

/** The global model in shared memory: sent to every thread of a round without copies. */
function shared(values: Float32Array): Float32Array {
  if (values.buffer instanceof SharedArrayBuffer) return values;
  const out = new Float32Array(new SharedArrayBuffer(values.byteLength));
  out.set(values);
  return out;
}

export class SitePool {
  private readonly threads: PoolThread[];
  private sharedFor = new WeakMap<Float32Array, Float32Array>();

  private constructor(threads: PoolThread[]) {
    this.threads = threads;
  }

  /** A pool sized to the machine (never more threads than sites). */
  static start(cfg: SiteWorkerConfig, threads?: number): SitePool {
    const n = Math.max(1, Math.min(threads ?? availableParallelism(), cfg.spec.sites.length));
    return new SitePool(Array.from({ length: n }, () => new PoolThread(cfg)));
  }

  get size(): number {
    return this.threads.length;
  }

  private thread(siteIndex: number): PoolThread {
    return this.threads[siteIndex % this.threads.length]!;
  }

  private share(global: Float32Array): Float32Array {
    let s = this.sharedFor.get(global);
    if (!s) {
      s = shared(global);
      this.sharedFor.set(global, s);
    }
    return s;
  }

  describe(siteIndex: number): Promise<SiteDescription> {
    return this.thread(siteIndex).call('describe', [siteIndex]);
  }

  /** Prepares every thread; returns what thread 0 reports (all threads agree). */
  async prepare(classes: string[], sampleShape: number[]): Promise<PreparedModel> {
    const all = await Promise.all(this.threads.map((t) => t.call<PreparedModel>('prepare', [classes, sampleShape])));
    return all[0]!;
  }

  fit(task: FitTask): Promise<FitReply> {
    return this.thread(task.siteIndex).call('fit', [{ ...task, global: this.share(task.global) }]);
  }

  evaluate(task: EvaluateTask): Promise<EvaluateReply> {
    return this.thread(task.siteIndex).call('evaluate', [{ ...task, global: this.share(task.global) }]);
  }

  /** Trains a model on the sites' data together in one thread (baselines only). */
  trainCentral(siteIndices: number[], initial: Float32Array, epochs: number, thread = 0): Promise<EvaluateReply[]> {
    return this.threads[thread % this.threads.length]!.call('trainCentral', [siteIndices, initial, epochs]);
  }

  exportModel(global: Float32Array): Promise<ExportedModel> {
    return this.threads[0]!.call('exportModel', [global]);
  }

  numTensors(): Promise<number[]> {
    return Promise.all(this.threads.map((t) => t.call<number>('numTensors', [])));
  }

  async close(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.worker.terminate()));
  }
}
