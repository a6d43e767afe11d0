// nkeys' KeyPair with the Ed25519 arithmetic done by node's crypto. nkeys (tweetnacl, pure JS)
// derives the key pair from the seed again at every getPublicKey, getPrivateKey and sign: a
// scalar multiplication of ~7 ms here. @nats-io/jwt calls them about seven times per user JWT
// (a job of two sites cost the operator ~150 ms of blocked event loop) and nats.js three times
// per login. Here the public key is derived once, natively, and signing is native too (~0.05
// ms); Ed25519 is deterministic, so the signatures are nkeys' own, byte for byte. nkeys still
// parses and checks the seed.
import { createPrivateKey, createPublicKey, type KeyObject, sign, verify } from 'node:crypto';
import { fromSeed, type KeyPair } from '@nats-io/nkeys';

const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');
const PRIVATE_PREFIX = 120; // nkeys' Prefix.Private: encodes to 'P...'
const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** The key pair of an NKey seed (S...): the nkeys interface, native Ed25519. */
export function nativeKeyPair(seed: string): KeyPair {
  fromSeed(new TextEncoder().encode(seed)); // throws unless a well-formed seed (prefix, checksum)
  const raw = base32Decode(seed);
  // Seed encoding: two prefix bytes (the seed tag and the key's role), 32 bytes, CRC-16.
  const role = ((raw[0]! & 7) << 5) | ((raw[1]! & 0xf8) >> 3);
  return new NativeKeyPair(seed, role, raw.subarray(2, 34));
}

class NativeKeyPair implements KeyPair {
  #seed: Uint8Array | undefined;
  readonly #publicKey: string;
  readonly #privateKey: Uint8Array;
  readonly #key: KeyObject;
  readonly #verifyKey: KeyObject;

  constructor(seed: string, role: number, rawSeed: Uint8Array) {
    this.#seed = new TextEncoder().encode(seed);
    this.#key = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, rawSeed]), format: 'der', type: 'pkcs8' });
    this.#verifyKey = createPublicKey(this.#key);
    // SPKI of an Ed25519 key: 12 bytes of header, then the 32 raw bytes.
    const rawPublic = this.#verifyKey.export({ format: 'der', type: 'spki' }).subarray(12);
    this.#publicKey = encodeKey(role, rawPublic);
    // nkeys' private key: the 64-byte NaCl secret key (seed, then public key), 'P...'.
    this.#privateKey = new TextEncoder().encode(encodeKey(PRIVATE_PREFIX, Buffer.concat([rawSeed, rawPublic])));
  }

  #live(): Uint8Array {
    if (!this.#seed) throw new Error('nkeys: the key pair was cleared');
    return this.#seed;
  }
  getPublicKey(): string {
    this.#live();
    return this.#publicKey;
  }
  getPrivateKey(): Uint8Array {
    this.#live();
    return this.#privateKey;
  }
  getSeed(): Uint8Array {
    return this.#live();
  }
  sign(input: Uint8Array): Uint8Array {
    this.#live();
    return new Uint8Array(sign(null, input, this.#key));
  }
  verify(input: Uint8Array, sig: Uint8Array): boolean {
    this.#live();
    return sig.length === 64 && verify(null, input, this.#verifyKey, sig);
  }
  clear(): void {
    this.#seed?.fill(0);
    this.#privateKey.fill(0);
    this.#seed = undefined;
  }
  seal(): Uint8Array {
    throw new Error('nkeys: only curve keys seal');
  }
  open(): Uint8Array | null {
    throw new Error('nkeys: only curve keys open');
  }
}

/** An NKey's text: base32 (unpadded) of the prefix byte, the key bytes and their CRC-16 (XMODEM, little-endian). */
function encodeKey(prefix: number, key: Uint8Array): string {
  const raw = new Uint8Array(key.length + 3);
  raw[0] = prefix;
  raw.set(key, 1);
  const crc = crc16(raw.subarray(0, key.length + 1));
  raw[key.length + 1] = crc & 0xff;
  raw[key.length + 2] = crc >>> 8;
  let out = '';
  let bits = 0;
  let value = 0;
  for (const b of raw) {
    value = ((value << 8) | b) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32[(value << (5 - bits)) & 31];
  return out;
}

function crc16(data: Uint8Array): number {
  let crc = 0;
  for (const b of data) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/** Decodes unpadded RFC 4648 base32 (an NKey's text) to bytes. */
export function base32Decode(text: string): Uint8Array {
  const out = new Uint8Array(Math.floor((text.length * 5) / 8));
  let bits = 0;
  let value = 0;
  let at = 0;
  for (const ch of text) {
    const v = BASE32.indexOf(ch);
    if (v < 0) throw new RangeError('not base32');
    value = ((value << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out[at++] = (value >>> (bits - 8)) & 0xff;
      bits -= 8;
    }
  }
  return out;
}
