// Patience on the wire: retries until a deadline; is a stored object the referenced one.
import { describe, expect, it } from 'vitest';
import { objectStoreDigest, sha256Hex, sha256OfObjectStoreDigest } from '../../core/protocol/digest.ts';
import { deadlineOnSite, Task } from '../../core/protocol/messages.ts';
import { connectionFailed, retrying, StalledReadError, storedObjectMismatch } from '../../core/protocol/retry.ts';

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

describe('connectionFailed', () => {
  it("tells nats.js's connection errors (also wrapped, as a request wraps them) from errors of the data", () => {
    const named = (name: string, cause?: unknown) => Object.assign(new Error(name, cause === undefined ? undefined : { cause }), { name });
    for (const name of ['ConnectionError', 'ClosedConnectionError', 'TimeoutError', 'NoResponders']) expect(connectionFailed(named(name)), name).toBe(true);
    expect(connectionFailed(named('RequestError', named('ConnectionError')))).toBe(true);
    expect(connectionFailed(new StalledReadError('direct get of x', 100))).toBe(true);
    expect(connectionFailed(named('RequestError', new RangeError('too big')))).toBe(false);
    expect(connectionFailed(new Error('object x not found'))).toBe(false);
    expect(connectionFailed('not an error')).toBe(false);
  });
});

describe('deadlineOnSite', () => {
  const task = { deadline: 1_000_000 + 60_000, validForMs: 59_990 };

  it('counts the time the task leaves from its arrival, on the site clock', () => {
    // The site's clock 10 minutes ahead: the coordinator's deadline has "passed" on it, its own has not.
    const receivedAt = 1_000_010 + 600_000;
    expect(deadlineOnSite(task, receivedAt)).toEqual({ deadline: receivedAt + 59_990, coordinatorAheadMs: -600_000 });
    // 10 minutes behind: the site does not go on 10 minutes past the round.
    expect(deadlineOnSite(task, 1_000_010 - 600_000).deadline).toBe(1_000_010 - 600_000 + 59_990);
    expect(deadlineOnSite(task, 1_000_010 - 600_000).coordinatorAheadMs).toBe(600_000);
  });

  it('takes a deadline that says nothing of the time left as it is', () => {
    expect(deadlineOnSite({ deadline: 5_000 }, 123_456)).toEqual({ deadline: 5_000 });
  });

  it('a task carries the time it leaves in its schema, not negative', () => {
    const base = {
      type: 'evaluate',
      protocol: 1,
      job: 'default_j',
      site: 'north',
      round: 1,
      taskId: 'a'.repeat(32),
      model: { bucket: 'b', name: 'n', sha256: 'a'.repeat(64), size: 4 },
      deadline: 10,
      trainLoss: false,
    };
    expect(Task.safeParse({ ...base, validForMs: 5 }).success).toBe(true);
    expect(Task.safeParse({ ...base, validForMs: -5 }).success).toBe(false);
  });
});
