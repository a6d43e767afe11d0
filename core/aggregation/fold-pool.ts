// Threads that fold blocks of a shared exact-sum shard beside the calling thread. The sum's state
// is one shared WebAssembly memory (exact-kernel.ts, Shard with threads > 1); each helper thread
// instantiates the same kernels over it, with a scratch area of its own, and folds a disjoint run
// of blocks (block-folds.ts) from updates held in SharedArrayBuffers, while the caller folds the
// first run. The sums are exact and order-free, so the bits are those of one thread.
//
// The call is synchronous (ExactWeightedSum's API is): the jobs go out by postMessage, the caller
// folds its own run, then waits on each helper's flag (Atomics.wait, which Node allows on the
// main thread) and takes its outcome off its port (receiveMessageOnPort), with no event loop turn.
// Helpers are unref'd: they never keep a process alive.
import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads';
import { type BlockFoldJob, type BlockFoldOutcome, foldBlocks, unfoldBlocks } from './block-folds.ts';
import type { Shard, ShardHandle } from './exact-kernel.ts';

/** An update's values as a helper receives them: a view of a SharedArrayBuffer. */
export interface SharedValues {
  buffer: SharedArrayBuffer;
  byteOffset: number;
  length: number;
}

/** What a helper is asked: fold its run, or take out the first `folded` folds of it. */
export interface HelperRequest {
  op: 'fold' | 'unfold';
  /** The shard (a key per shard: a helper attaches to each once). */
  key: number;
  handle: ShardHandle;
  thread: number;
  inputs: SharedValues[];
  weights: number[];
  limits: number[];
  bounds: number[];
  from: number;
  to: number;
  pointers?: number[];
  folded: number;
  /** Int32Array over a SharedArrayBuffer: set to 1, and notified, once the outcome is posted. */
  flag: Int32Array;
}

/** What a helper is started with: the port it posts its outcomes on. */
export interface HelperData {
  port: MessagePort;
}

/** Drop the views of these shards (their sum is done with): their memory is freed once no thread holds it. */
export interface HelperForget {
  op: 'forget';
  keys: number[];
}

export type HelperReply = { ok: true; outcome: BlockFoldOutcome } | { ok: false; error: string; folded: number };

/** How long a helper may take for one run before the sum gives up on it: far past any fold (a 4 GiB shard of ten updates takes seconds). */
const HELPER_TIMEOUT_MS = 300_000;

// Run from source (.ts, type stripping) or from a compiled build (.js).
const HELPER_ENTRY = new URL(`./fold-worker.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url);

interface Helper {
  worker: Worker;
  /** Ours: the helper posts its outcomes on the other end. */
  port: MessagePort;
  flag: Int32Array;
}

export class FoldPool {
  private readonly helpers: Helper[] = [];
  /** Blocks folded by helpers so far (tests: the helpers did fold). */
  helperBlocks = 0;

  private helper(i: number): Helper {
    while (this.helpers.length <= i) {
      const { port1, port2 } = new MessageChannel();
      const worker = new Worker(HELPER_ENTRY, { workerData: { port: port2 } satisfies HelperData, transferList: [port2] });
      worker.unref();
      port1.unref();
      this.helpers.push({ worker, port: port1, flag: new Int32Array(new SharedArrayBuffer(4)) });
    }
    return this.helpers[i]!;
  }

  /**
   * Runs jobs[0] on `local` (the caller's view of the shard) and jobs[i] on helper i - 1, all at
   * once; their outcomes, in order. `folded[i]`: unfold, how many folds of job i to take out.
   */
  run(op: 'fold' | 'unfold', local: Shard, key: number, jobs: readonly BlockFoldJob[], folded: readonly number[] = []): BlockFoldOutcome[] {
    const handle = local.handle;
    if (!handle) throw new RangeError('FoldPool.run: the shard is not shared');
    const sent: Helper[] = [];
    const inputs = jobs[0]!.inputs.map(sharedValues);
    for (let i = 1; i < jobs.length; i++) {
      const h = this.helper(i - 1);
      const job = jobs[i]!;
      Atomics.store(h.flag, 0, 0);
      const request: HelperRequest = {
        op,
        key,
        handle,
        thread: i,
        inputs,
        weights: [...job.weights],
        limits: [...job.limits],
        bounds: [...job.bounds],
        from: job.from,
        to: job.to,
        ...(job.pointers ? { pointers: [...job.pointers] } : {}),
        folded: folded[i] ?? 0,
        flag: h.flag,
      };
      h.worker.postMessage(request);
      sent.push(h);
    }
    const outcomes: BlockFoldOutcome[] = [];
    let failure: string | undefined;
    try {
      if (op === 'fold') outcomes.push(foldBlocks(local, jobs[0]!));
      else {
        unfoldBlocks(local, jobs[0]!, folded[0] ?? 0);
        outcomes.push({ maxAbs: [], folded: 0 });
      }
    } catch (err) {
      failure = (err as Error).message;
    }
    sent.forEach((h, i) => {
      const until = Date.now() + HELPER_TIMEOUT_MS;
      while (Atomics.load(h.flag, 0) === 0) {
        if (Atomics.wait(h.flag, 0, 0, Math.max(1, until - Date.now())) === 'timed-out' && Date.now() >= until) {
          throw new Error(`exact sum: helper thread ${i + 1} did not finish its blocks in ${HELPER_TIMEOUT_MS / 1000} s`);
        }
      }
      const reply = receiveMessageOnPort(h.port)?.message as HelperReply | undefined;
      if (!reply) throw new Error(`exact sum: helper thread ${i + 1} finished without an outcome`);
      if (!reply.ok) failure ??= `helper thread ${i + 1}: ${reply.error}`;
      else {
        outcomes.push(reply.outcome);
        if (op === 'fold') this.helperBlocks += jobs[i + 1]!.to - jobs[i + 1]!.from;
      }
    });
    if (failure !== undefined) throw new Error(`exact sum: a fold failed: ${failure}`);
    return outcomes;
  }

  /** Tells every helper to drop its views of these shards (no answer awaited). */
  forget(keys: readonly number[]): void {
    for (const h of this.helpers) h.worker.postMessage({ op: 'forget', keys: [...keys] } satisfies HelperForget);
  }
}

/** The values as a helper can see them; RangeError when they are not in a SharedArrayBuffer. */
function sharedValues(values: Float32Array): SharedValues {
  if (!(values.buffer instanceof SharedArrayBuffer)) throw new RangeError('FoldPool: an update not held in a SharedArrayBuffer');
  return { buffer: values.buffer, byteOffset: values.byteOffset, length: values.length };
}

let pool: FoldPool | undefined;

/** The process's pool (helpers are started on first use, and kept). */
export function foldPool(): FoldPool {
  pool ??= new FoldPool();
  return pool;
}

/** Whether every update's values are views of SharedArrayBuffers (what helper threads can read). */
export function allShared(values: readonly Float32Array[]): boolean {
  return values.every((v) => v.buffer instanceof SharedArrayBuffer);
}
