// Patience on the wire: retries until a deadline, and object reads that give up rather than wait
// for ever on a stream that sends nothing.
import { describe, expect, it } from 'vitest';
import { objectStoreDigest, sha256Hex, sha256OfObjectStoreDigest } from '../../core/protocol/digest.ts';
import { type ObjectStream, readObjectStream, retrying, StalledReadError, storedObjectMismatch } from '../../core/protocol/retry.ts';

/** An object stream of `chunks`, then either its end, an error, or nothing more (`stall`). */
function stream(chunks: number[][], end: 'close' | 'stall' | Error = 'close'): ObjectStream & { cancelled: () => boolean } {
  let cancelled = false;
  let settle: (e: Error | null) => void = () => {};
  let fail: (e: Error) => void = () => {};
  const error = new Promise<Error | null>((resolve, reject) => {
    settle = resolve;
    fail = reject;
  });
  const data = new ReadableStream<Uint8Array>({
    start(c) {
      for (const chunk of chunks) c.enqueue(Uint8Array.from(chunk));
      if (end === 'close') {
        c.close();
        settle(null);
      } else if (end instanceof Error) {
        c.error(end);
        fail(end);
      }
    },
    cancel() {
      cancelled = true;
      settle(null);
    },
  });
  return { data, error, cancelled: () => cancelled };
}

describe('readObjectStream', () => {
  it('reads every chunk, in order, into one array', async () => {
    const bytes = await readObjectStream(stream([[1, 2], [3], [4, 5, 6]]), { idleMs: 1000, what: 'x' });
    expect([...bytes]).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('gives up, and cancels the read, when no chunk comes for idleMs', async () => {
    const s = stream([[1, 2]], 'stall');
    await expect(readObjectStream(s, { idleMs: 50, what: 'update object u' })).rejects.toThrow(StalledReadError);
    expect(s.cancelled()).toBe(true);
  });

  it('stops at more bytes than declared', async () => {
    const s = stream(
      [
        [1, 2, 3],
        [4, 5, 6],
      ],
      'stall',
    );
    await expect(readObjectStream(s, { idleMs: 1000, maxBytes: 4, what: 'o' })).rejects.toThrow(RangeError);
    expect(s.cancelled()).toBe(true);
  });

  it("throws the stream's own error (a digest mismatch), and leaves no rejection unhandled", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      await expect(readObjectStream(stream([[1]], new Error('digests do not match')), { idleMs: 1000, what: 'o' })).rejects.toThrow(/digests/);
      await new Promise((r) => setTimeout(r, 20));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});

describe('retrying', () => {
  it('tries again after failures until the call succeeds', async () => {
    let calls = 0;
    const value = await retrying(
      async () => {
        if (++calls < 3) throw new Error(`failure ${calls}`);
        return 'done';
      },
      { until: Date.now() + 5000 },
    );
    expect(value).toBe('done');
    expect(calls).toBe(3);
  });

  it('throws the last error once the deadline has passed', async () => {
    let calls = 0;
    const t0 = Date.now();
    await expect(
      retrying(
        async () => {
          throw new Error(`failure ${++calls}`);
        },
        { until: t0 + 600 },
      ),
    ).rejects.toThrow(`failure ${2}`);
    // 250 ms, then 500 ms would pass the deadline: two tries.
    expect(calls).toBe(2);
  });

  it('throws at once what is not worth another try', async () => {
    let calls = 0;
    const err = new Error('the object is bad');
    await expect(
      retrying(
        async () => {
          calls++;
          throw err;
        },
        { until: Date.now() + 5000, retryable: (e) => e !== err },
      ),
    ).rejects.toBe(err);
    expect(calls).toBe(1);
  });
});

describe('readObjectStream into one array', () => {
  it('copies the chunks into the array given (or one of maxBytes) and returns a view of what came', async () => {
    const into = new Uint8Array(16).fill(9);
    const bytes = await readObjectStream(stream([[1, 2], [3], [4, 5, 6]]), { idleMs: 1000, maxBytes: 8, into, what: 'x' });
    expect([...bytes]).toEqual([1, 2, 3, 4, 5, 6]);
    expect(bytes.buffer).toBe(into.buffer);
    const own = await readObjectStream(stream([[1, 2], [3]]), { idleMs: 1000, maxBytes: 3, what: 'x' });
    expect([...own]).toEqual([1, 2, 3]);
    await expect(readObjectStream(stream([[1]]), { idleMs: 1000, maxBytes: 8, into: new Uint8Array(4), what: 'x' })).rejects.toThrow(RangeError);
  });
});

describe('storedObjectMismatch', () => {
  const sha256 = sha256Hex(new Uint8Array([1, 2, 3]));
  const ref = { bucket: 'b', name: 'update/r1/n', sha256, size: 3 };
  const info = { bucket: 'b', name: 'update/r1/n', size: 3, digest: objectStoreDigest(sha256) };

  it('accepts the referenced object, and names what differs otherwise', () => {
    expect(storedObjectMismatch(info, ref)).toBeUndefined();
    for (const other of [{ bucket: 'c' }, { name: 'update/r1/m' }, { size: 4 }, { digest: objectStoreDigest(sha256Hex(new Uint8Array([1]))) }]) {
      expect(storedObjectMismatch({ ...info, ...other }, ref)).toMatch(/is not the one referenced/);
    }
  });

  it("speaks the store's digest: SHA-256= and the padded base64url of the hash, both ways", () => {
    // As nats.js writes it (Base64UrlPaddedCodec of the raw digest).
    expect(objectStoreDigest(sha256)).toBe(`SHA-256=${Buffer.from(sha256, 'hex').toString('base64url')}=`);
    expect(sha256OfObjectStoreDigest(objectStoreDigest(sha256))).toBe(sha256);
    expect(sha256OfObjectStoreDigest('SHA-256=abc')).toBeUndefined();
    expect(sha256OfObjectStoreDigest('MD5=xyz')).toBeUndefined();
  });
});
