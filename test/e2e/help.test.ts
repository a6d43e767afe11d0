// `consort --help` and `consort run --help` explain the command and every flag of run.
import { describe, expect, it } from 'vitest';
import { runConsort, transcript } from '../helpers/consort-cli.ts';

const RUN_FLAGS = ['--out', '--seed', '--rounds', '--baselines', '--backend', '--threads', '--quiet'];

describe('consort help', () => {
  it('consort --help exits 0 and lists the run command', async () => {
    const r = await runConsort(['--help']);
    expect(r.code, transcript(r)).toBe(0);
    expect(r.stdout).toMatch(/Usage: consort/);
    expect(r.stdout).toMatch(/^\s+run \[options\] <job>\s+\S/m);
    expect(r.stdout).toMatch(/^\s+validate <job>\s+\S/m);
  });

  it('consort run --help exits 0 and explains every flag', async () => {
    const r = await runConsort(['run', '--help']);
    expect(r.code, transcript(r)).toBe(0);
    expect(r.stdout).toMatch(/Usage: consort run \[options\] <job>/);
    for (const flag of RUN_FLAGS) {
      // The flag, then (on the same line) words that explain it.
      expect(r.stdout, flag).toMatch(new RegExp(`^\\s+${flag}\\b[^\\n]*\\s{2,}\\w`, 'm'));
    }
    for (const backend of ['auto', 'tensorflow', 'wasm', 'cpu']) expect(r.stdout).toContain(`"${backend}"`);
    expect(r.stdout).toMatch(/exit status/i);
  });
});
