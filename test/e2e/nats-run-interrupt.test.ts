// Ctrl-C in a terminal sends SIGINT to the whole process group: `consort run --nats embedded`,
// its coordinator and its sites at once. Pressed while the sites are still starting, the run
// must still end (it used to wait forever for children that a signal had already ended) and
// clean up: the nats-server stopped and its folder removed.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CONSORT_BIN, REPO_ROOT, runConsort, transcript } from '../helpers/consort-cli.ts';
import { hospitalSpec, writeJob } from '../helpers/jobs.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const tmp = useTmpDirs();
let group: ChildProcess | undefined;
afterEach(() => {
  // Whatever happened, nothing of the run outlives the test.
  if (group?.pid && group.exitCode === null && group.signalCode === null) {
    try {
      process.kill(-group.pid, 'SIGKILL');
    } catch {}
  }
});

/**
 * `consort run <job> --nats embedded <args>` in a process group of its own (as from a terminal:
 * Ctrl-C reaches all of it, and afterEach kills what is left), its stderr gathered as it comes.
 */
function runInGroup(job: string, args: string[]): { run: ChildProcess; stderr: () => string } {
  const run = spawn(process.execPath, [CONSORT_BIN, 'run', job, '--nats', 'embedded', ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: '2', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  group = run;
  let stderr = '';
  run.stderr!.setEncoding('utf8').on('data', (s: string) => {
    stderr += s;
  });
  return { run, stderr: () => stderr };
}

/** Probes `done` every `everyMs` until it holds or `withinMs` has passed. */
async function until(done: () => boolean, withinMs: number, everyMs: number): Promise<void> {
  const started = Date.now();
  while (!done() && Date.now() - started < withinMs) await new Promise((r) => setTimeout(r, everyMs));
}

describe('consort run --nats embedded, interrupted while the sites start', () => {
  it('ends with a non-zero status, its nats-server stopped and its folder removed', async () => {
    const dir = tmp('interrupt');
    const job = writeJob(dir, hospitalSpec(undefined, { rounds: 200 }));
    const { run, stderr } = runInGroup(job, ['--out', join(dir, 'out')]);
    const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => run.on('close', (code, signal) => done({ code, signal })));
    // The children are up once one of them has said anything: then the whole group gets Ctrl-C.
    await new Promise<void>((ready, fail) => {
      run.stderr!.on('data', () => {
        if (/^\[[a-z-]+\] /m.test(stderr())) ready();
      });
      ended.then(() => fail(new Error(`the run ended before its children spoke:\n${stderr()}`)));
    });
    process.kill(-run.pid!, 'SIGINT');
    const timeout = new Promise<'hung'>((done) => setTimeout(() => done('hung'), 30_000).unref());
    const outcome = await Promise.race([ended, timeout]);
    expect(outcome, stderr()).not.toBe('hung');
    expect(outcome === 'hung' ? 0 : outcome.code, stderr()).not.toBe(0);
    // It says a rerun starts over (the embedded store, checkpoints and all, goes with the run).
    expect(stderr()).toMatch(
      /^consort: stopped by SIGINT before the job ended: the embedded nats-server's store, its checkpoints with it, goes with this run, so running it again starts over/m,
    );
    const store = /JetStream in (\S+)\)/.exec(stderr())?.[1];
    expect(store, stderr()).toBeDefined();
    expect(existsSync(store!), `${store} should be gone`).toBe(false);
  }, 90_000);
});

describe('consort run --nats embedded, one site process killed mid-job', () => {
  it('says so at once, naming the site and the signal, instead of at the round deadline', async () => {
    const dir = tmp('site-killed');
    const job = writeJob(dir, hospitalSpec(undefined, { rounds: 500, aggregation: { roundDeadlineSeconds: 300 } }));
    const { run, stderr } = runInGroup(job, ['--quiet', '--out', join(dir, 'out')]);
    // The site's process: a child of the run whose command line names it.
    let pid: number | undefined;
    await until(() => (pid = childPid(job, 'site', 'south')) !== undefined, 30_000, 100);
    expect(pid, stderr()).toBeDefined();
    // Let it join and the rounds run, then kill it as the OOM killer would.
    await new Promise((r) => setTimeout(r, 3000));
    process.kill(pid!, 'SIGKILL');
    await until(() => stderr().includes('warning: site "south"'), 10_000, 50);
    expect(stderr()).toContain(
      `warning: site "south"'s process ended (killed by SIGKILL) before the job did: a round under way waits for it until its deadline (300 s); later rounds go on without it while sampling.minSites (1) allows`,
    );
    // Ctrl-C: the run stops and cleans up after itself (its nats-server and folder).
    const ended = new Promise<void>((done) => run.on('close', () => done()));
    process.kill(-run.pid!, 'SIGINT');
    await ended;
  }, 60_000);
});

describe('consort run --nats embedded, its coordinator process killed mid-job', () => {
  it('ends at once with a non-zero status, naming the signal and saying that nothing of the run is kept', async () => {
    const dir = tmp('coordinator-killed');
    const job = writeJob(dir, hospitalSpec(undefined, { rounds: 500 }));
    const { run, stderr } = runInGroup(job, ['--out', join(dir, 'out')]);
    const ended = new Promise<{ code: number | null }>((done) => run.on('close', (code) => done({ code })));
    // Once it has finished a round: a checkpoint is in the (embedded) store.
    await until(() => /^\[coordinator\] .*round 1\b/m.test(stderr()), 60_000, 50);
    const coordinatorPid = childPid(job, 'coordinator');
    expect(coordinatorPid, stderr()).toBeDefined();
    process.kill(coordinatorPid!, 'SIGKILL');
    const outcome = await Promise.race([ended, new Promise<'hung'>((done) => setTimeout(() => done('hung'), 30_000).unref())]);
    expect(outcome === 'hung' ? 'hung' : outcome.code, stderr()).toBe(1);
    expect(stderr()).toContain(
      "consort: the coordinator's process was killed by SIGKILL before the job ended: the embedded nats-server's store, its checkpoints with it, goes with this run; run it again to start over",
    );
  }, 90_000);
});

/** The pid of the run's child whose command line names this job file and each of `words` (`coordinator`; `site`, `south`). */
function childPid(job: string, ...words: string[]): number | undefined {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (argv.includes(job) && words.every((w) => argv.includes(w))) return Number(pid);
    } catch {}
  }
  return undefined;
}

describe('a run whose rounds cannot close (roundDeadlineSeconds far too short)', () => {
  it('fails alike in one process and over NATS, and says why even with --quiet', async () => {
    const dir = tmp('deadline');
    const job = writeJob(dir, hospitalSpec(undefined, { rounds: 2, aggregation: { roundDeadlineSeconds: 0.001 } }));
    const local = await runConsort(['run', job, '--quiet', '--out', join(dir, 'local')]);
    expect(local.code, transcript(local)).toBe(1);
    expect(local.stderr).toMatch(/round 1: 0 of 3 sites answered, sampling\.minSites is 1 \(.*no answer before the round deadline/);
    const nats = await runConsort(['run', job, '--nats', 'embedded', '--quiet', '--out', join(dir, 'nats')]);
    expect(nats.code, transcript(nats)).toBe(1);
    expect(nats.stderr).toMatch(
      /^consort: the coordinator stopped: round 1: 0 of 3 sites answered, sampling\.minSites is 1 \(.*no answer before the round deadline/m,
    );
    expect(existsSync(join(dir, 'nats'))).toBe(false);
  });
});
