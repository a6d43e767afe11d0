// SHA-256 of objects on the wire (node's native implementation: the pure-JS fallback of the
// NATS object store is 3-4x slower) and the Ed25519 arithmetic of envelope signatures. The one
// place in core/ that imports node:crypto; none of it is I/O.
import { createHash, createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';

/** Lower-case hex SHA-256 of the bytes, or of the chunks in order (as if concatenated). */
export function sha256Hex(data: Uint8Array | readonly Uint8Array[]): string {
  const hash = createHash('sha256');
  if (data instanceof Uint8Array) hash.update(data);
  else for (const chunk of data) hash.update(chunk);
  return hash.digest('hex');
}

/**
 * The digest a NATS Object Store keeps in an object's metadata for this SHA-256 (hex): "SHA-256="
 * and the padded base64url of the hash. The store's client checks an object's chunks against it
 * as they stream, so an object whose metadata carries this digest has these bytes.
 */
export function objectStoreDigest(sha256hex: string): string {
  const b64 = Buffer.from(sha256hex, 'hex').toString('base64url');
  return `SHA-256=${b64}${'='.repeat((4 - (b64.length % 4)) % 4)}`;
}

/** The hex SHA-256 in an Object Store digest (objectStoreDigest's inverse); undefined if it is not one. */
export function sha256OfObjectStoreDigest(digest: string): string | undefined {
  const m = /^SHA-256=([A-Za-z0-9_-]{43})=?$/.exec(digest);
  return m ? Buffer.from(m[1]!, 'base64url').toString('hex') : undefined;
}

/** An incremental SHA-256, for objects that arrive in chunks. */
export interface Sha256 {
  update(chunk: Uint8Array): Sha256;
  hex(): string;
}

export function sha256(): Sha256 {
  const hash = createHash('sha256');
  const self: Sha256 = {
    update(chunk) {
      hash.update(chunk);
      return self;
    },
    hex: () => hash.digest('hex'),
  };
  return self;
}

// Ed25519 on the same native library: nkeys' pure-JS (tweetnacl) verify costs ~8 ms per
// envelope, the native one ~0.1 ms. Signatures are identical (Ed25519 is deterministic), so
// what one signs the other verifies; signing.ts keeps nkeys for the key formats.
const PKCS8_ED25519 = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);
const SPKI_ED25519 = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]);

/** A verifier for one raw 32-byte Ed25519 public key. */
export function ed25519Verifier(publicKey: Uint8Array): (message: Uint8Array, signature: Uint8Array) => boolean {
  if (publicKey.length !== 32) throw new RangeError(`ed25519: public key of ${publicKey.length} bytes`);
  const key = createPublicKey({ key: Buffer.concat([SPKI_ED25519, publicKey]), format: 'der', type: 'spki' });
  return (message, signature) => signature.length === 64 && verify(null, message, key, signature);
}

/** A signer for one raw 32-byte Ed25519 seed. */
export function ed25519Signer(seed: Uint8Array): (message: Uint8Array) => Uint8Array {
  if (seed.length !== 32) throw new RangeError(`ed25519: seed of ${seed.length} bytes`);
  const key = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: 'der', type: 'pkcs8' });
  return (message) => new Uint8Array(sign(null, message, key));
}
