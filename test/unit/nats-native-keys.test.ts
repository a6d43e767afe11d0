// core/protocol/native-keys.ts against nkeys itself: the same public and private keys from the
// same seed, signatures byte for byte (Ed25519 is deterministic), each verifying the other's,
// and bad seeds refused as nkeys refuses them.
import { createAccount, createOperator, createUser, fromPublic, fromSeed } from '@nats-io/nkeys';
import { describe, expect, it } from 'vitest';
import { nativeKeyPair } from '../../core/protocol/native-keys.ts';

const text = (b: Uint8Array) => new TextDecoder().decode(b);
const bytes = (s: string) => new TextEncoder().encode(s);

describe('nativeKeyPair', () => {
  it('is the nkeys key pair of the same seed, for users, accounts and operators', () => {
    for (const make of [createUser, createAccount, createOperator]) {
      for (let i = 0; i < 5; i++) {
        const js = make();
        const seed = text(js.getSeed());
        const native = nativeKeyPair(seed);
        expect(native.getPublicKey()).toBe(js.getPublicKey());
        expect(text(native.getPrivateKey())).toBe(text(js.getPrivateKey()));
        expect(text(native.getSeed())).toBe(seed);
        const message = bytes(`message ${i} of ${seed.slice(0, 2)}`);
        const sig = native.sign(message);
        expect(Buffer.from(sig).equals(Buffer.from(js.sign(message)))).toBe(true);
        expect(fromPublic(js.getPublicKey()).verify(message, sig)).toBe(true);
        expect(native.verify(message, js.sign(message))).toBe(true);
        expect(native.verify(bytes('another message'), sig)).toBe(false);
      }
    }
  });

  it('refuses what nkeys refuses, and a cleared pair is unusable', () => {
    const seed = text(createUser().getSeed());
    const broken = `${seed.slice(0, 10)}${seed[10] === 'A' ? 'B' : 'A'}${seed.slice(11)}`;
    expect(() => fromSeed(bytes(broken))).toThrow();
    expect(() => nativeKeyPair(broken)).toThrow();
    expect(() => nativeKeyPair(createUser().getPublicKey())).toThrow();
    const kp = nativeKeyPair(seed);
    kp.clear();
    expect(() => kp.sign(bytes('x'))).toThrow(/cleared/);
    expect(() => kp.getPublicKey()).toThrow(/cleared/);
  });
});
