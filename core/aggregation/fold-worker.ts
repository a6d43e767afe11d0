// A helper thread of FoldPool (fold-pool.ts): attaches to each shared shard it is sent (once),
// folds or unfolds its run of blocks, posts the outcome on its port and raises its flag.
import { parentPort, workerData } from 'node:worker_threads';
import { type BlockFoldOutcome, foldBlocks, unfoldBlocks } from './block-folds.ts';
import { Shard } from './exact-kernel.ts';
import type { HelperData, HelperForget, HelperReply, HelperRequest } from './fold-pool.ts';

/** Shards attached to, by key; the last few only (a sum's memory is freed once no thread holds it). */
const attached = new Map<number, Shard>();
const KEEP = 2;
const { port } = workerData as HelperData;

parentPort?.on('message', (r: HelperRequest | HelperForget) => {
  if (r.op === 'forget') {
    for (const key of r.keys) attached.delete(key);
    return;
  }
  let reply: HelperReply;
  let folded = 0;
  try {
    let shard = attached.get(r.key);
    if (!shard) {
      shard = Shard.attach(r.handle, r.thread);
      attached.set(r.key, shard);
      for (const k of attached.keys()) if (attached.size > KEEP) attached.delete(k);
    }
    const job = {
      inputs: r.inputs.map((v) => new Float32Array(v.buffer, v.byteOffset, v.length)),
      weights: r.weights,
      limits: r.limits,
      bounds: r.bounds,
      from: r.from,
      to: r.to,
      ...(r.pointers ? { pointers: r.pointers } : {}),
    };
    let outcome: BlockFoldOutcome;
    if (r.op === 'fold') outcome = foldBlocks(shard, job);
    else {
      unfoldBlocks(shard, job, r.folded);
      outcome = { maxAbs: [], folded: 0 };
    }
    folded = outcome.folded;
    reply = { ok: true, outcome };
  } catch (err) {
    reply = { ok: false, error: (err as Error).message, folded };
  }
  port.postMessage(reply);
  Atomics.store(r.flag, 0, 1);
  Atomics.notify(r.flag, 0);
});
