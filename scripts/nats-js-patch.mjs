// Patches nats.js's protocol parser (@nats-io/nats-core lib/parser.js) so that a message payload
// split across socket reads is gathered into one buffer of its final size, not into a buffer
// grown by doubling from the first read's piece (each growth a fresh, zero-filled allocation and
// a copy of everything so far: ~4.5 bytes allocated per byte of a 1 MiB object chunk). The bytes
// delivered are the same. Measured on the orchestration-overhead bench (10 sites, 1M parameters):
// 15% less CPU in the coordinator and in the sites, rounds 440-480 -> 392 ms.
//
// Run after `npm ci` (make setup, the Dockerfile); idempotent. A nats-core whose parser does not
// read as expected is left as it is, with a warning: the patch is speed, not behaviour.
//   node scripts/nats-js-patch.mjs
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const MARK = '/* consort: payload buffer at its final size */';
const ORIGINAL = 'this.msgBuf = new denobuffer_1.DenoBuffer(buf.subarray(this.as));';
const PATCHED = `${MARK} {
                const first = buf.subarray(this.as);
                const size = Math.max(this.ma.size, first.length);
                // Not zero-filled (large ones): every byte is written before the payload is delivered.
                const whole = size >= 65536 ? new Uint8Array(Buffer.allocUnsafeSlow(size).buffer, 0, size) : new Uint8Array(size);
                whole.set(first);
                this.msgBuf = new denobuffer_1.DenoBuffer(whole.buffer);
                this.msgBuf._reslice(first.length);
            }`;

const require = createRequire(join(process.cwd(), 'package.json'));
let file;
try {
  // The package's main module is lib/mod.js; the parser sits beside it.
  file = join(dirname(require.resolve('@nats-io/nats-core')), 'parser.js');
} catch {
  console.error('nats-js-patch: @nats-io/nats-core is not installed (run npm ci first)');
  process.exit(1);
}
const source = readFileSync(file, 'utf8');
if (source.includes(MARK)) {
  console.log(`nats-js-patch: ${file} already patched`);
} else if (source.split(ORIGINAL).length === 2) {
  writeFileSync(file, source.replace(ORIGINAL, PATCHED));
  console.log(`nats-js-patch: patched ${file}`);
} else {
  console.warn(`nats-js-patch: warning: ${file} is not the parser this patch knows; left as it is (slower large messages)`);
}
