// `consort --help` and `consort run --help` explain the command and every flag of run.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT, runConsort, transcript } from '../helpers/consort-cli.ts';

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

  it('the package bin (npx consort) runs the CLI on the pinned Node, whatever node is first on PATH', async () => {
    // No pinned Node on PATH: only the system's directories (an older node, or none at all).
    const { stdout } = await promisify(execFile)('bash', [join(REPO_ROOT, 'cli/consort.sh'), '--help'], {
      env: {
        PATH: '/usr/local/bin:/usr/bin:/bin',
        HOME: process.env.HOME ?? '/tmp',
        ...(process.env.CONSORT_CACHE ? { CONSORT_CACHE: process.env.CONSORT_CACHE } : {}),
      },
    });
    expect(stdout).toMatch(/Usage: consort/);
  });
});
