// putObject and readObject against wires that record what they are asked (the real server: the
// permissions integration test and every NATS end-to-end test): chunks, their window, the
// metadata, the purge of a replaced object, the clean-up after a failure; reads in batches, and
// every way an object can be other than its metadata or its reference says.
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { objectStoreDigest } from '../../core/protocol/digest.ts';
import { chunksOf, objectChunkSubject, objectMetaSubject, type ObjectPutWire, putObject } from '../../core/protocol/object-put.ts';
import {
  type DirectGetConnection,
  type DirectGetReply,
  directGetBatch,
  ObjectMismatchError,
  ObjectNotFoundError,
  type ObjectReadWire,
  readObject,
} from '../../core/protocol/object-read.ts';
import { StalledReadError } from '../../core/protocol/retry.ts';

const concat = (parts: readonly Uint8Array[]) => Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.length)));

describe('chunksOf', () => {
  it('cuts any parts into chunks of at most the size that concatenate to the bytes, never an empty one', () => {
    let seed = 7;
    const rnd = (n: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    for (let t = 0; t < 5000; t++) {
      const size = 1 + rnd(40);
      const shared = Uint8Array.from({ length: 300 }, (_, i) => i & 255);
      const parts: Uint8Array[] = [];
      let at = 0;
      for (let i = rnd(7); i > 0; i--) {
        const n = rnd(4) === 0 ? 0 : rnd(90);
        if (rnd(2) === 0 && at + n <= shared.length) {
          parts.push(shared.subarray(at, at + n));
          at += n;
        } else parts.push(Uint8Array.from({ length: n }, () => rnd(256)));
      }
      const chunks = [...chunksOf(parts, size)];
      expect(concat(chunks).equals(concat(parts))).toBe(true);
      expect(chunks.every((c) => c.length > 0 && c.length <= size)).toBe(true);
    }
  });

  it('sends a large array as views of it, parts adjacent in one buffer as one, a small header alone', () => {
    const values = new Uint8Array(10_000);
    const header = new Uint8Array(30);
    const chunks = [...chunksOf([header, values.subarray(0, 2500), values.subarray(2500, 6000), values.subarray(6000)], 1000)];
    expect(chunks.map((c) => c.length)).toEqual([30, ...Array(10).fill(1000)]);
    expect(chunks.slice(1).every((c) => c.buffer === values.buffer)).toBe(true);
  });

  it('gathers small pieces into full chunks rather than a message each', () => {
    const parts = Array.from({ length: 10 }, (_, i) => new Uint8Array(30).fill(i));
    expect([...chunksOf(parts, 100)].map((c) => c.length)).toEqual([100, 100, 100]);
  });
});

interface Recorded {
  publishes: Array<{ subject: string; bytes: Buffer }>;
  rollups: Array<{ subject: string; meta: Record<string, unknown> }>;
  purged: string[];
  maxInFlight: number;
}

/** A wire whose publishes resolve after a tick (or fail from the `failAt`-th chunk on), recording everything. */
function fakeWire(o: { previous?: string; failAt?: number; lookupFails?: boolean; maxPayload?: number } = {}): { wire: ObjectPutWire; seen: Recorded } {
  const seen: Recorded = { publishes: [], rollups: [], purged: [], maxInFlight: 0 };
  let inFlight = 0;
  const wire: ObjectPutWire = {
    publish: async (subject, data) => {
      const n = seen.publishes.push({ subject, bytes: Buffer.from(data) });
      inFlight += data.length;
      seen.maxInFlight = Math.max(seen.maxInFlight, inFlight);
      await new Promise((r) => setTimeout(r, 1));
      inFlight -= data.length;
      if (o.failAt !== undefined && n >= o.failAt) throw new Error('chunk refused');
    },
    publishRollup: async (subject, data) => {
      seen.rollups.push({ subject, meta: JSON.parse(new TextDecoder().decode(data)) });
    },
    lastMessage: async () => {
      if (o.lookupFails) throw new Error('no lookup');
      return o.previous ? new TextEncoder().encode(JSON.stringify({ nuid: o.previous })) : null;
    },
    purge: async (subject) => {
      seen.purged.push(subject);
    },
    nuid: () => 'N1',
    maxPayload: () => o.maxPayload,
  };
  return { wire, seen };
}

describe('putObject', () => {
  const bytes = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 31) % 251);
  const parts = [bytes.subarray(0, 10), bytes.subarray(10)];
  const sha = createHash('sha256').update(bytes).digest('hex');

  it("writes the chunks under a fresh nuid, then the store's metadata on the name's subject", async () => {
    const { wire, seen } = fakeWire();
    const info = await putObject(wire, 'bkt', 'global/r10', parts, { chunkBytes: 1024, windowBytes: 4096 });
    expect(concat(seen.publishes.map((p) => p.bytes)).equals(Buffer.from(bytes))).toBe(true);
    expect(new Set(seen.publishes.map((p) => p.subject))).toEqual(new Set([objectChunkSubject('bkt', 'N1')]));
    expect(seen.rollups).toHaveLength(1);
    expect(seen.rollups[0]!.subject).toBe(objectMetaSubject('bkt', 'global/r10'));
    // nats.js's spelling: padded base64url of the name.
    expect(seen.rollups[0]!.subject).toBe('$O.bkt.M.Z2xvYmFsL3IxMA==');
    expect(seen.rollups[0]!.meta).toMatchObject({
      bucket: 'bkt',
      nuid: 'N1',
      name: 'global/r10',
      size: bytes.length,
      chunks: seen.publishes.length,
      options: { max_chunk_size: 1024 },
      digest: objectStoreDigest(sha),
      deleted: false,
    });
    expect(info.sha256).toBe(sha);
    expect(seen.purged).toEqual([]);
  });

  it('keeps at most the window in flight, and chunks within the max_payload', async () => {
    const { wire, seen } = fakeWire({ maxPayload: 512 });
    await putObject(wire, 'bkt', 'x', parts, { chunkBytes: 1024, windowBytes: 2048 });
    expect(Math.max(...seen.publishes.map((p) => p.bytes.length))).toBe(512);
    expect(seen.maxInFlight).toBeLessThanOrEqual(2048);
    expect(seen.maxInFlight).toBeGreaterThan(512);
  });

  it("purges the replaced object's chunks once the new metadata is stored", async () => {
    const { wire, seen } = fakeWire({ previous: 'OLD' });
    await putObject(wire, 'bkt', 'checkpoint', parts, { chunkBytes: 4096, windowBytes: 8192 });
    expect(seen.purged).toEqual([objectChunkSubject('bkt', 'OLD')]);
  });

  it('on a refused chunk: no metadata, its chunks purged, the error thrown', async () => {
    const { wire, seen } = fakeWire({ failAt: 3 });
    await expect(putObject(wire, 'bkt', 'x', parts, { chunkBytes: 1000, windowBytes: 2000 })).rejects.toThrow('chunk refused');
    expect(seen.rollups).toEqual([]);
    expect(seen.purged).toEqual([objectChunkSubject('bkt', 'N1')]);
    // It stopped sending once a chunk was refused.
    expect(seen.publishes.length).toBeLessThan(10);
  });

  it('fails, writing no metadata, when the current object of the name cannot be looked up', async () => {
    const { wire, seen } = fakeWire({ lookupFails: true });
    await expect(putObject(wire, 'bkt', 'x', parts, { chunkBytes: 4096, windowBytes: 8192 })).rejects.toThrow('no lookup');
    expect(seen.rollups).toEqual([]);
  });

  it('writes an empty object as its metadata alone', async () => {
    const { wire, seen } = fakeWire();
    const info = await putObject(wire, 'bkt', 'empty', [], { chunkBytes: 4096, windowBytes: 8192 });
    expect(seen.publishes).toEqual([]);
    expect(info).toMatchObject({ size: 0, chunks: 0, sha256: createHash('sha256').digest('hex') });
  });
});

/** A stream in memory: putObject writes into it, readObject reads from it (direct get by subject from a sequence, in batches by bytes). */
class MemoryStream {
  readonly messages: Array<{ subject: string; data: Uint8Array; seq: number }> = [];
  batches = 0;
  private add(subject: string, data: Uint8Array) {
    this.messages.push({ subject, data: Uint8Array.from(data), seq: this.messages.length + 1 });
  }
  readonly wire: ObjectPutWire & ObjectReadWire = {
    publish: async (subject, data) => this.add(subject, data),
    publishRollup: async (subject, data) => this.add(subject, data),
    lastMessage: async (subject) => this.messages.findLast((m) => m.subject === subject)?.data ?? null,
    purge: async (subject) => {
      for (const m of this.messages) if (m.subject === subject) m.subject = '(purged)';
    },
    nuid: () => `N${this.messages.length}`,
    maxPayload: () => undefined,
    directBatch: async (subject, seq, o, onMessage) => {
      this.batches++;
      let bytes = 0;
      let n = 0;
      for (const m of this.messages) {
        if (m.seq < seq || m.subject !== subject) continue;
        onMessage(m.data, m.seq);
        bytes += m.data.length;
        if (++n >= o.batch || bytes >= o.maxBytes) break;
      }
    },
  };
}

describe('readObject', () => {
  const bytes = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 7) % 253);
  const sha = createHash('sha256').update(bytes).digest('hex');
  const put = async (s: MemoryStream, name = 'global/r1', data = bytes) =>
    putObject(s.wire, 'bkt', name, [data.subarray(0, 5), data.subarray(5)], { chunkBytes: 1000, windowBytes: 3000 });
  const ref = { bucket: 'bkt', name: 'global/r1', sha256: sha, size: bytes.length };

  it('reads what putObject wrote, in batches of about batchBytes, into the array given', async () => {
    const s = new MemoryStream();
    await put(s, 'other');
    await put(s);
    const into = new Uint8Array(20_000);
    const read = await readObject(s.wire, 'bkt', 'global/r1', { expect: ref, maxBytes: bytes.length, into, batchBytes: 2500 });
    expect(Buffer.from(read).equals(Buffer.from(bytes))).toBe(true);
    expect(read.buffer).toBe(into.buffer);
    expect(s.batches).toBe(4);
  });

  it('refuses an absent or deleted object, a link, one that is not the reference, or larger than allowed, before reading a chunk', async () => {
    const s = new MemoryStream();
    await put(s);
    const read = (name: string, o: Partial<Parameters<typeof readObject>[3]> = {}) =>
      readObject(s.wire, 'bkt', name, { maxBytes: 1 << 20, batchBytes: 4096, ...o });
    await expect(read('missing')).rejects.toBeInstanceOf(ObjectNotFoundError);
    await expect(read('global/r1', { expect: { ...ref, sha256: '0'.repeat(64) } })).rejects.toBeInstanceOf(ObjectMismatchError);
    await expect(read('global/r1', { expect: { ...ref, size: 9999 } })).rejects.toBeInstanceOf(ObjectMismatchError);
    await expect(read('global/r1', { expect: { ...ref, name: 'global/r2' } })).rejects.toBeInstanceOf(ObjectMismatchError);
    await expect(read('global/r1', { maxBytes: 9999 })).rejects.toBeInstanceOf(RangeError);
    const meta = (name: string, m: Record<string, unknown>) =>
      s.wire.publishRollup(objectMetaSubject('bkt', name), new TextEncoder().encode(JSON.stringify(m)));
    const good = JSON.parse(new TextDecoder().decode((await s.wire.lastMessage(objectMetaSubject('bkt', 'global/r1')))!));
    await meta('deleted', { ...good, name: 'deleted', deleted: true });
    await expect(read('deleted')).rejects.toBeInstanceOf(ObjectNotFoundError);
    await meta('link', { ...good, name: 'link', options: { link: { bucket: 'bkt', name: 'global/r1' } } });
    await expect(read('link')).rejects.toBeInstanceOf(ObjectMismatchError);
    expect(s.batches).toBe(0);
  });

  it('refuses chunks that are not the metadata: missing or short (not there as declared), or altered (a mismatch)', async () => {
    for (const spoil of ['purge', 'truncate', 'flip'] as const) {
      const s = new MemoryStream();
      const info = await put(s);
      const chunks = s.messages.filter((m) => m.subject === objectChunkSubject('bkt', info.nuid));
      if (spoil === 'purge') await s.wire.purge(objectChunkSubject('bkt', info.nuid));
      if (spoil === 'truncate') chunks.at(-1)!.data = chunks.at(-1)!.data.subarray(1);
      if (spoil === 'flip') chunks[3]!.data[10]! ^= 1;
      await expect(readObject(s.wire, 'bkt', 'global/r1', { expect: ref, maxBytes: 1 << 20, batchBytes: 4096 }), spoil).rejects.toBeInstanceOf(
        spoil === 'flip' ? ObjectMismatchError : ObjectNotFoundError,
      );
    }
  });

  it('reads the bytes the metadata declares: a chunk added after them is never read', async () => {
    const s = new MemoryStream();
    const info = await put(s);
    await s.wire.publish(objectChunkSubject('bkt', info.nuid), Uint8Array.of(1));
    const read = await readObject(s.wire, 'bkt', 'global/r1', { expect: ref, maxBytes: 1 << 20, batchBytes: 1 << 20 });
    expect(Buffer.from(read).equals(Buffer.from(bytes))).toBe(true);
  });
});

describe('directGetBatch', () => {
  const headers = (h: Record<string, string>, code = 0): DirectGetReply['headers'] => ({ code, description: code ? 'status' : '', get: (k) => h[k] ?? '' });
  /** A connection whose server answers each request with `replies` (after a tick), recording requests and subscriptions. */
  function fakeConnection(replies: DirectGetReply[]) {
    const seen = { requests: [] as Array<{ subject: string; body: unknown; reply: string }>, unsubscribed: 0 };
    const nc: DirectGetConnection = {
      subscribe: (_subject, { callback }) => {
        nextCallback = callback;
        return { unsubscribe: () => void seen.unsubscribed++ };
      },
      publish: (subject, data, { reply }) => {
        seen.requests.push({ subject, body: JSON.parse(data), reply });
        setTimeout(() => {
          for (const r of replies) nextCallback?.(null, r);
        }, 1);
      },
    };
    let nextCallback: ((err: Error | null, msg: DirectGetReply) => void) | undefined;
    return { nc, seen };
  }
  const message = (seq: number, byte: number, pending = '1') => ({
    data: Uint8Array.of(byte),
    headers: headers({ 'Nats-Sequence': String(seq), 'Nats-Num-Pending': pending }),
  });

  it('asks for a batch from a sequence on a subject, hands each message over, ends at the end-of-batch status and unsubscribes', async () => {
    const { nc, seen } = fakeConnection([message(7, 1), message(9, 2, '0'), { data: new Uint8Array(0), headers: headers({}, 204) }]);
    const got: Array<[number, number]> = [];
    await directGetBatch(nc, '_INBOX_a.x', 'OBJ_b', '$O.b.C.n', 5, { batch: 3, maxBytes: 100, idleMs: 1000 }, (d, seq) => got.push([seq, d[0]!]));
    expect(got).toEqual([
      [7, 1],
      [9, 2],
    ]);
    expect(seen.requests).toEqual([
      { subject: '$JS.API.DIRECT.GET.OBJ_b', body: { seq: 5, next_by_subj: '$O.b.C.n', batch: 3, max_bytes: 100 }, reply: '_INBOX_a.x' },
    ]);
    expect(seen.unsubscribed).toBe(1);
  });

  it('ends at once on 404 (nothing there), fails on another status, and on silence', async () => {
    const none = fakeConnection([{ data: new Uint8Array(0), headers: headers({}, 404) }]);
    await expect(directGetBatch(none.nc, 'i', 's', 'x', 1, { batch: 1, maxBytes: 1, idleMs: 1000 }, () => {})).resolves.toBeUndefined();
    const refused = fakeConnection([{ data: new Uint8Array(0), headers: headers({}, 408) }]);
    await expect(directGetBatch(refused.nc, 'i', 's', 'x', 1, { batch: 1, maxBytes: 1, idleMs: 1000 }, () => {})).rejects.toThrow(/408/);
    const silent = fakeConnection([]);
    await expect(directGetBatch(silent.nc, 'i', 's', 'x', 1, { batch: 1, maxBytes: 1, idleMs: 20 }, () => {})).rejects.toBeInstanceOf(StalledReadError);
    expect(silent.seen.unsubscribed).toBe(1);
  });

  it('takes one message as the whole answer from a server without batches (no pending count)', async () => {
    const { nc } = fakeConnection([{ data: Uint8Array.of(4), headers: headers({ 'Nats-Sequence': '3' }) }]);
    const got: number[] = [];
    await directGetBatch(nc, 'i', 's', 'x', 1, { batch: 5, maxBytes: 100, idleMs: 1000 }, (_d, seq) => got.push(seq));
    expect(got).toEqual([3]);
  });
});
