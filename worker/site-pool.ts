// A fixed pool of threads, each running a SiteWorker, for running many sites in one process.
// A site's home is thread i mod P, where its data is cached first. Site sizes are heavy-tailed
// (FedProx's devices hold 50 to thousands of examples), so a round's tasks go to the thread with
// the least work queued, home on ties: a round then lasts about its total work / P instead of
// its busiest home thread's share (the FedProx benchmark's rounds run ~20% shorter on two
// threads). A site that moves loads its data on the other thread too. Jobs whose sites keep
// state between rounds (SCAFFOLD's control variates) stay home. Results depend neither on the
// pool size nor on which thread serves a site: every random stream is keyed by (seed, round,
// site), each thread builds the same model, and aggregation is exact.
import type { InputScaler } from '../core/data/moments.ts';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { WorkerError, type WorkerErrorCode, WorkerErrorCodes } from './errors.ts';
import { applyNativeDefaults } from './native-env.ts';
import type { SiteOp, SiteRequest, SiteResponse, SiteThreadData } from './site-thread.ts';
import {
  type EvaluateReply,
  type EvaluateTask,
  type ExportedModel,
  type FitReply,
  type FitTask,
  keepsSiteState,
  type PreparedModel,
  type SiteDescription,
  type SiteWorkerConfig,
} from './site-worker.ts';

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

  constructor(cfg: SiteWorkerConfig, nativeLock: Int32Array) {
    this.worker = new Worker(THREAD_ENTRY, { workerData: { ...cfg, nativeLock } satisfies SiteThreadData });
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
  /** Sites never leave their home thread (they keep state there between rounds). */
  private readonly stayHome: boolean;
  /** Per site: its training examples, the estimate of a task's cost (1 until known). */
  private readonly cost: number[] = [];
  /** Per thread: the estimated cost of the tasks sent to it and not yet answered. */
  private readonly queued: number[];
  /** Per site with a task in a thread: that thread, and how many of its tasks are there. */
  private readonly busy = new Map<number, { thread: number; tasks: number }>();

  private constructor(threads: PoolThread[], stayHome: boolean) {
    this.threads = threads;
    this.stayHome = stayHome;
    this.queued = threads.map(() => 0);
  }

  /** A pool sized to the machine (never more threads than sites). */
  static start(cfg: SiteWorkerConfig, threads?: number): SitePool {
    applyNativeDefaults(); // before the threads start: their own process.env cannot reach libtensorflow
    const n = Math.max(1, Math.min(threads ?? availableParallelism(), cfg.spec.sites.length));
    // One lock for the pool's threads: the native backend is not safe to use from two at once.
    const nativeLock = new Int32Array(new SharedArrayBuffer(4));
    return new SitePool(
      Array.from({ length: n }, () => new PoolThread(cfg, nativeLock)),
      keepsSiteState(cfg.spec),
    );
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

  /** The thread with the least work queued; the site's home thread on ties. */
  private route(siteIndex: number): number {
    const home = siteIndex % this.threads.length;
    if (this.stayHome) return home;
    let best = home;
    for (let t = 0; t < this.threads.length; t++) if (this.queued[t]! < this.queued[best]!) best = t;
    return best;
  }

  private dispatch<T>(siteIndex: number, op: 'fit' | 'evaluate', task: FitTask | EvaluateTask): Promise<T> {
    // A site still busy with an earlier task (one its round's deadline gave up on) queues behind
    // it, as a site process would, rather than on the idle thread where an on-time site would
    // then wait for it and miss its deadline too.
    const busy = this.busy.get(siteIndex);
    const t = busy ? busy.thread : this.route(siteIndex);
    const cost = this.cost[siteIndex] ?? 1;
    this.queued[t]! += cost;
    this.busy.set(siteIndex, { thread: t, tasks: (busy?.tasks ?? 0) + 1 });
    return this.threads[t]!.call<T>(op, [{ ...task, global: this.share(task.global) }]).finally(() => {
      this.queued[t]! -= cost;
      const b = this.busy.get(siteIndex)!;
      if (--b.tasks === 0) this.busy.delete(siteIndex);
    });
  }

  async describe(siteIndex: number): Promise<SiteDescription> {
    const d = await this.thread(siteIndex).call<SiteDescription>('describe', [siteIndex]);
    this.cost[siteIndex] = Math.max(1, d.quality.trainSamples);
    return d;
  }

  /** Prepares every thread; returns what thread 0 reports (all threads agree). */
  async prepare(classes: string[], sampleShape: number[], scaler?: InputScaler): Promise<PreparedModel> {
    const all = await Promise.all(this.threads.map((t) => t.call<PreparedModel>('prepare', [classes, sampleShape, ...(scaler ? [scaler] : [])])));
    return all[0]!;
  }

  fit(task: FitTask): Promise<FitReply> {
    return this.dispatch(task.siteIndex, 'fit', task);
  }

  evaluate(task: EvaluateTask): Promise<EvaluateReply> {
    return this.dispatch(task.siteIndex, 'evaluate', task);
  }

  /** Trains a model on the sites' data together in one thread (baselines only). */
  trainCentral(siteIndices: number[], initial: Float32Array, epochs: number, thread = 0): Promise<EvaluateReply[]> {
    return this.threads[thread % this.threads.length]!.call('trainCentral', [siteIndices, initial, epochs]);
  }

  /**
   * On the thread with the least work queued (thread 0 on ties): at a run's end a thread may still
   * be training a task a deadline gave up on, and the export, which every prepared thread gives
   * alike, used to wait for it (a minute after the last round, behind a slow site).
   */
  exportModel(global: Float32Array): Promise<ExportedModel> {
    let t = 0;
    for (let i = 1; i < this.threads.length; i++) if (this.queued[i]! < this.queued[t]!) t = i;
    return this.threads[t]!.call('exportModel', [global]);
  }

  numTensors(): Promise<number[]> {
    return Promise.all(this.threads.map((t) => t.call<number>('numTensors', [])));
  }

  async close(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.worker.terminate()));
  }
}
