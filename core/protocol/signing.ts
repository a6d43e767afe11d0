// Ed25519 signatures by the sites' NKeys. What is signed is the envelope itself, canonicalised:
// the UTF-8 bytes of its JSON with object keys sorted (recursively, by UTF-16 code units) and
// the top-level `signature` field left out. A verifier therefore needs nothing but the parsed
// envelope and the site's public key, whatever key order or whitespace the JSON arrived in.
import { createUser, fromPublic, fromSeed } from '@nats-io/nkeys';
import { ed25519Signer, ed25519Verifier } from './digest.ts';
import { base32Decode } from './native-keys.ts';

const encoder = new TextEncoder();
/** 64 signature bytes in unpadded base64url. */
const SIGNATURE = /^[A-Za-z0-9_-]{86}$/;
const PUBLIC_KEY = /^[A-Z][A-Z2-7]{55}$/;

/** The bytes a signature covers: sorted-key JSON of the envelope without its `signature`. */
export function canonicalBytes(envelope: object): Uint8Array {
  const { signature: _omitted, ...rest } = envelope as Record<string, unknown>;
  return encoder.encode(JSON.stringify(sortKeys(rest)));
}

/** The envelope with `signature`: the site's ed25519 signature of canonicalBytes, base64url. */
export function signEnvelope<T extends object>(envelope: T, seed: string): T & { signature: string } {
  return { ...envelope, signature: toBase64Url(signerOf(seed)(canonicalBytes(envelope))) };
}

/** True when the envelope carries a well-formed signature by `publicKey`; false otherwise, never throws. */
export function verifyEnvelope(envelope: unknown, publicKey: string): boolean {
  try {
    if (typeof envelope !== 'object' || envelope === null || Array.isArray(envelope)) return false;
    const signature = (envelope as { signature?: unknown }).signature;
    if (typeof signature !== 'string' || !SIGNATURE.test(signature)) return false;
    const sig = fromBase64Url(signature);
    // Base64url's last character carries 2 spare bits: only the canonical spelling is accepted.
    if (sig.length !== 64 || toBase64Url(sig) !== signature) return false;
    return verifierOf(publicKey)(canonicalBytes(envelope), sig);
  } catch {
    return false;
  }
}

/** A fresh nonce: 16 random bytes as 22 url-safe characters. */
export function newNonce(): string {
  return toBase64Url(globalThis.crypto.getRandomValues(new Uint8Array(16)));
}

/** A new site (NATS user) key pair: the seed stays with the site, the public key goes in the job's configuration. */
export function siteKeyPair(): { seed: string; publicKey: string } {
  const kp = createUser();
  try {
    return { seed: new TextDecoder().decode(kp.getSeed()), publicKey: kp.getPublicKey() };
  } finally {
    kp.clear();
  }
}

/** The public key of a seed. */
export function publicKeyOf(seed: string): string {
  const kp = fromSeed(encoder.encode(seed));
  try {
    return kp.getPublicKey();
  } finally {
    kp.clear();
  }
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (typeof value === 'object' && value !== null && !ArrayBuffer.isView(value)) {
    // A null prototype, so that a key named "__proto__" stays a plain key.
    const out = Object.create(null) as Record<string, unknown>;
    for (const key of Object.keys(value).sort()) out[key] = sortKeys((value as Record<string, unknown>)[key]);
    return out;
  }
  return value;
}

// NKeys are base32 (RFC 4648, unpadded) of prefix byte(s), the 32 raw key bytes and a CRC-16.
// nkeys checks prefix and checksum; the raw bytes then go to the native Ed25519. Parsed keys
// are cached: a coordinator verifies many envelopes per site key.
const verifiers = new Map<string, (message: Uint8Array, signature: Uint8Array) => boolean>();
function verifierOf(publicKey: string): (message: Uint8Array, signature: Uint8Array) => boolean {
  let v = verifiers.get(publicKey);
  if (!v) {
    // 56 base32 characters; nkeys checks prefix and checksum (but would accept trailing junk).
    if (!PUBLIC_KEY.test(publicKey)) throw new RangeError('not an NKey public key');
    fromPublic(publicKey);
    const raw = base32Decode(publicKey);
    v = ed25519Verifier(raw.subarray(1, 33));
    if (verifiers.size >= 10_000) verifiers.clear();
    verifiers.set(publicKey, v);
  }
  return v;
}

// A process may sign for many sites (a benchmark plays hundreds): the seed is checked by nkeys'
// decoding alone (prefix and checksum), never by its pure-JS key derivation (~10 ms each time).
const signers = new Map<string, (message: Uint8Array) => Uint8Array>();
function signerOf(seed: string): (message: Uint8Array) => Uint8Array {
  let s = signers.get(seed);
  if (!s) {
    fromSeed(encoder.encode(seed)); // throws unless a well-formed NKey seed
    s = ed25519Signer(base32Decode(seed).subarray(2, 34));
    if (signers.size >= 10_000) signers.clear();
    signers.set(seed, s);
  }
  return s;
}

function toBase64Url(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url');
}

function fromBase64Url(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, 'base64url'));
}
