import { fromPublic, fromSeed } from '@nats-io/nkeys';
import { describe, expect, it } from 'vitest';
import { canonicalBytes, newNonce, publicKeyOf, signEnvelope, siteKeyPair, verifyEnvelope } from '../../core/protocol/signing.ts';

const site = siteKeyPair();
const other = siteKeyPair();

const envelope = {
  type: 'update',
  protocol: 1,
  job: 'default_demo',
  site: 'st-mary',
  round: 3,
  nonce: 'AAAAAAAAAAAAAAAAAAAAAA',
  samples: 120,
  trainLoss: 0.25,
  object: { bucket: 'consort-default_demo_up_st-mary', name: 'update/r3/x', sha256: 'ab'.repeat(32), size: 100 },
};

describe('canonicalBytes', () => {
  it('sorts keys recursively and leaves out the signature', () => {
    const text = new TextDecoder().decode(canonicalBytes({ b: 1, a: { d: [{ z: 1, y: 2 }], c: 'é' }, signature: 'x' }));
    expect(text).toBe('{"a":{"c":"é","d":[{"y":2,"z":1}]},"b":1}');
  });

  it('does not depend on key order', () => {
    const reordered: Record<string, unknown> = Object.fromEntries(Object.entries(envelope).reverse());
    reordered.object = Object.fromEntries(Object.entries(envelope.object).reverse());
    expect(JSON.stringify(reordered)).not.toBe(JSON.stringify(envelope));
    expect(Buffer.from(canonicalBytes(reordered)).equals(Buffer.from(canonicalBytes(envelope)))).toBe(true);
  });

  it('keeps a key named __proto__ as data', () => {
    const parsed = JSON.parse('{"__proto__":{"x":1},"a":2}') as object;
    expect(new TextDecoder().decode(canonicalBytes(parsed))).toBe('{"__proto__":{"x":1},"a":2}');
  });
});

describe('signEnvelope / verifyEnvelope', () => {
  const signed = signEnvelope(envelope, site.seed);

  it('round-trips, through JSON and any key order', () => {
    expect(signed.signature).toMatch(/^[A-Za-z0-9_-]{86}$/);
    expect(verifyEnvelope(signed, site.publicKey)).toBe(true);
    const wire = JSON.parse(JSON.stringify(signed)) as Record<string, unknown>;
    expect(verifyEnvelope(wire, site.publicKey)).toBe(true);
    const reordered = Object.fromEntries(Object.entries(wire).reverse());
    expect(verifyEnvelope(reordered, site.publicKey)).toBe(true);
    // Re-signing a signed envelope replaces the signature with the same one (it is not covered).
    expect(signEnvelope(signed, site.seed).signature).toBe(signed.signature);
  });

  it('fails when any field is tampered with, added or removed', () => {
    expect(verifyEnvelope({ ...signed, round: 4 }, site.publicKey)).toBe(false);
    expect(verifyEnvelope({ ...signed, samples: 121 }, site.publicKey)).toBe(false);
    expect(verifyEnvelope({ ...signed, object: { ...signed.object, size: 101 } }, site.publicKey)).toBe(false);
    expect(verifyEnvelope({ ...signed, extra: true }, site.publicKey)).toBe(false);
    const { trainLoss: _, ...missing } = signed;
    expect(verifyEnvelope(missing, site.publicKey)).toBe(false);
  });

  it("fails with another site's key, and for a signature made by another key", () => {
    expect(verifyEnvelope(signed, other.publicKey)).toBe(false);
    expect(verifyEnvelope(signEnvelope(envelope, other.seed), site.publicKey)).toBe(false);
  });

  it('returns false, never throws, on malformed signatures, keys and envelopes', () => {
    const sig = signed.signature;
    const flipLast = sig.slice(0, -1) + (sig.endsWith('A') ? 'B' : 'A');
    const cases: unknown[] = [
      { ...signed, signature: undefined },
      { ...signed, signature: 42 },
      { ...signed, signature: '' },
      { ...signed, signature: sig.slice(1) },
      { ...signed, signature: `${sig}A` },
      { ...signed, signature: `${sig.slice(0, -2)}==` },
      { ...signed, signature: sig.replace(/[A-Za-z]/, '+') },
      { ...signed, signature: flipLast },
      null,
      'string',
      [signed],
    ];
    for (const c of cases) expect(verifyEnvelope(c, site.publicKey)).toBe(false);
    for (const key of [
      '',
      'not-a-key',
      site.seed,
      `${site.publicKey}A`,
      site.publicKey.replace(/.$/, (c) => (c === 'A' ? 'B' : 'A')),
      publicKeyOf(site.seed).toLowerCase(),
    ]) {
      expect(verifyEnvelope(signed, key)).toBe(false);
    }
    const cyclic: Record<string, unknown> = { ...signed };
    cyclic.self = cyclic;
    expect(verifyEnvelope(cyclic, site.publicKey)).toBe(false);
  });

  it('a base64url signature whose spare bits differ is refused, though it decodes to the same bytes', () => {
    const sig = signed.signature;
    // 86 characters carry 516 bits for 512: the last character's 2 low bits are spare.
    const last = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'.indexOf(sig.at(-1)!);
    const twin = sig.slice(0, -1) + 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'[last ^ 1];
    expect(Buffer.from(twin, 'base64url').equals(Buffer.from(sig, 'base64url'))).toBe(true);
    expect(verifyEnvelope({ ...signed, signature: twin }, site.publicKey)).toBe(false);
  });

  it('is interchangeable with nkeys signing and verifying', () => {
    const message = canonicalBytes(envelope);
    const kp = fromSeed(new TextEncoder().encode(site.seed));
    expect(Buffer.from(kp.sign(message)).toString('base64url')).toBe(signed.signature);
    expect(fromPublic(site.publicKey).verify(message, Buffer.from(signed.signature, 'base64url'))).toBe(true);
  });
});

describe('nonces and keys', () => {
  it('newNonce: 22 url-safe characters (128 random bits), never repeated', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 10_000; i++) {
      const n = newNonce();
      expect(n).toMatch(/^[A-Za-z0-9_-]{22}$/);
      seen.add(n);
    }
    expect(seen.size).toBe(10_000);
  });

  it('siteKeyPair: an NKey user seed and its public key', () => {
    expect(site.seed).toMatch(/^SU[A-Z2-7]{56}$/);
    expect(site.publicKey).toMatch(/^U[A-Z2-7]{55}$/);
    expect(publicKeyOf(site.seed)).toBe(site.publicKey);
    expect(other.publicKey).not.toBe(site.publicKey);
  });
});
