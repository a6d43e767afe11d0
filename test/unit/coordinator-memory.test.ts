// The coordinator's memory discipline: checkpoints written as pieces that are views of the model
// (no copy of a large model), and the round's queue telling the transport when an update's buffer
// may be used again.
import { describe, expect, it } from 'vitest';
import { Channel } from '../../operator/coordinator/channel.ts';
import { type Checkpoint, checkpointParts, decodeCheckpoint, encodeCheckpoint } from '../../operator/coordinator/checkpoint.ts';

function checkpoint(n: number): Checkpoint {
  return {
    job: 'default_j',
    round: 3,
    global: Float32Array.from({ length: n }, (_, i) => Math.sin(i) / (i + 1)),
    strategy: { name: 'fedadam', step: 3, buffers: { v: Float64Array.from({ length: n }, (_, i) => i * 1e-300), m: new Float64Array(n).fill(-0.5) } },
    records: [],
    best: 0.5,
    sinceBest: 1,
    stoppedBy: 'rounds',
    transport: { layout: [{ name: 'w', shape: [n] }] },
  };
}

describe('checkpoint pieces', () => {
  it('are the bytes of encodeCheckpoint, the model and buffers as views, and decode back exactly', () => {
    for (const n of [0, 1, 7, 1000]) {
      const c = checkpoint(n);
      const parts = checkpointParts(c);
      const bytes = encodeCheckpoint(c);
      expect(Buffer.concat(parts).equals(Buffer.from(bytes))).toBe(true);
      expect(parts[1]!.buffer).toBe(c.global.buffer);
      const back = decodeCheckpoint(bytes);
      expect(Buffer.from(back.global.buffer).equals(Buffer.from(c.global.buffer))).toBe(true);
      for (const k of ['m', 'v']) {
        expect(Buffer.from(back.strategy.buffers[k]!.buffer).equals(Buffer.from(c.strategy.buffers[k]!.buffer))).toBe(true);
      }
      expect(back.transport).toEqual(c.transport);
      // Decoded arrays are the checkpoint's own, not views of the bytes.
      expect(back.global.buffer).not.toBe(bytes.buffer);
    }
  });
});

describe('Channel', () => {
  it("runs an item's callback once the consumer asks for the next one, stops, or the channel is closed first", async () => {
    const ch = new Channel<number>();
    const consumed: number[] = [];
    ch.push(1, () => consumed.push(1));
    ch.push(2, () => consumed.push(2));
    const it = ch[Symbol.asyncIterator]();
    expect((await it.next()).value).toBe(1);
    expect(consumed).toEqual([]);
    expect((await it.next()).value).toBe(2);
    expect(consumed).toEqual([1]);
    const waiting = it.next();
    ch.push(3, () => consumed.push(3));
    expect((await waiting).value).toBe(3);
    expect(consumed).toEqual([1, 2]);
    ch.close();
    expect((await it.next()).done).toBe(true);
    expect(consumed).toEqual([1, 2, 3]);
    // Closed: the item is not queued, and its callback runs at once.
    expect(ch.push(4, () => consumed.push(4))).toBe(false);
    expect(consumed).toEqual([1, 2, 3, 4]);
  });

  it('runs the callbacks of what was left when the consumer stops early', async () => {
    const ch = new Channel<number>();
    const consumed: number[] = [];
    for (const i of [1, 2, 3]) ch.push(i, () => consumed.push(i));
    for await (const v of ch) {
      if (v === 1) break;
    }
    expect(consumed.sort()).toEqual([1, 2, 3]);
  });
});
