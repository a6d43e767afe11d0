// nats.js's protocol parser as scripts/nats-js-patch.mjs leaves it (make setup runs it): a payload
// split across socket reads arrives whole and unchanged, in a buffer of its own size (not one
// grown by doubling), whatever the split; small and unsplit messages as before.
import { Kind, Parser } from '@nats-io/nats-core/internal';
import { describe, expect, it } from 'vitest';

interface Dispatched {
  kind: number;
  data?: Uint8Array;
}

/** Feeds `wire` to a fresh parser in pieces of `piece` bytes; returns the payloads of the MSGs it dispatched. */
function parse(wire: Uint8Array, piece: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  const parser = new Parser({ push: (e: Dispatched) => (e.kind === Kind.MSG && e.data ? out.push(e.data) : undefined) } as never);
  for (let at = 0; at < wire.length; at += piece) parser.parse(wire.subarray(at, Math.min(wire.length, at + piece)));
  return out;
}

function msg(subject: string, payload: Uint8Array): Uint8Array {
  const head = new TextEncoder().encode(`MSG ${subject} 1 ${payload.length}\r\n`);
  const wire = new Uint8Array(head.length + payload.length + 2);
  wire.set(head);
  wire.set(payload, head.length);
  wire.set([13, 10], head.length + payload.length);
  return wire;
}

describe('the patched nats.js parser', () => {
  const big = Uint8Array.from({ length: 1024 * 1024 + 7 }, (_, i) => (i * 31 + 7) & 0xff);
  const small = Uint8Array.from({ length: 3000 }, (_, i) => i & 0xff);

  it('delivers a 1 MiB payload split into socket-sized reads whole, in a buffer of exactly its size', () => {
    for (const piece of [65536, 4096, 1000, 333_333]) {
      const wire = new Uint8Array([...msg('a.b', small), ...msg('c.d', big), ...msg('e', small)]);
      const [first, second, third] = parse(wire, piece);
      expect(Buffer.from(first!).equals(Buffer.from(small)), `piece ${piece}`).toBe(true);
      expect(Buffer.from(second!).equals(Buffer.from(big)), `piece ${piece}`).toBe(true);
      expect(Buffer.from(third!).equals(Buffer.from(small)), `piece ${piece}`).toBe(true);
      // Not a view into a larger doubled buffer: the patch (scripts/nats-js-patch.mjs) is in place.
      expect(second!.buffer.byteLength, `piece ${piece}`).toBe(big.length);
    }
  });

  it('delivers an unsplit message as a view of the read, as before', () => {
    const wire = msg('a.b', small);
    const [only] = parse(wire, wire.length);
    expect(Buffer.from(only!).equals(Buffer.from(small))).toBe(true);
  });
});
