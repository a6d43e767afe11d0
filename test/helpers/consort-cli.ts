// Runs the real `consort` command as a child process, the way a user does: `node cli/consort.ts`
// with the repository as working directory.
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';

export const REPO_ROOT = resolve(import.meta.dirname, '../..');
export const CONSORT_BIN = resolve(REPO_ROOT, 'cli/consort.ts');

export interface CliResult {
  /** Exit status; null when the process was killed by a signal (then `signal` says which). */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export interface CliOptions {
  /** Kill the process after this long (a hung run fails the test instead of the whole suite). */
  timeoutMs?: number;
  env?: Record<string, string>;
  cwd?: string;
}

/** `consort ARGS...`, resolved once the process has exited. */
export function runConsort(args: readonly string[], opts: CliOptions = {}): Promise<CliResult> {
  const t0 = performance.now();
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [CONSORT_BIN, ...args], {
      cwd: opts.cwd ?? REPO_ROOT,
      env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: '2', NO_COLOR: '1', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      stderr += s;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 110_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      fail(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      done({ code, signal, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

/** Everything a failed run printed, for assertion messages. */
export function transcript(r: CliResult): string {
  return `exit ${r.code ?? r.signal} after ${Math.round(r.ms)} ms\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

/**
 * `consort coordinator JOB --nats URL --creds … --keys … --out DIR/out --quiet` with the files
 * `consort nats-config` wrote into DIR/nats (`creds`: another of them, to hand it the wrong one).
 */
export function coordinatorArgs(job: string, url: string, dir: string, creds = 'coordinator.nk'): string[] {
  return ['coordinator', job, '--nats', url, '--creds', join(dir, 'nats', creds), '--keys', join(dir, 'nats/keys.json'), '--out', join(dir, 'out'), '--quiet'];
}
