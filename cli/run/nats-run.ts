// `consort run JOB.yaml --nats URL|embedded`: the coordinator and every site as separate OS
// processes talking only through a nats-server, as they will in Pods. `embedded` starts the
// project's nats-server (with the job's generated accounts and permissions) and stops it after.
import { natsUrlFlag } from '../flags.ts';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect } from 'node:net';
import { createInterface } from 'node:readline';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import { CliError } from '../errors.ts';
import { natsAuthFor, writeNatsConfigFiles } from '../nats/config.ts';
import { EPHEMERAL_NATS_ENV, freePort, NatsServer } from '../nats/server.ts';

const CLI = resolve(import.meta.dirname, '../consort.ts');

export interface NatsRunOptions {
  jobPath: string;
  job: FederatedJob;
  /** A server URL, or "embedded". */
  nats: string;
  outDir: string;
  backend: string;
  quiet: boolean;
  /** --seed / --rounds of `consort run`, passed on: every process reads the job file itself. */
  seed?: number;
  rounds?: number;
}

/** A child process, with the last `consort:` line it wrote (its error, if it stopped on one). */
function child(args: string[], label: string, quiet: boolean, stdout: 'inherit' | 'log', ephemeral: boolean): ChildProcess & { lastError?: string } {
  const p: ChildProcess & { lastError?: string } = spawn(process.execPath, [...process.execArgv, CLI, ...args], {
    stdio: ['ignore', stdout === 'inherit' ? 'inherit' : 'pipe', 'pipe'],
    // The embedded server's store goes with it: nothing a rerun could resume from.
    env: ephemeral ? { ...process.env, [EPHEMERAL_NATS_ENV]: '1' } : process.env,
  });
  const forward = (stream: NodeJS.ReadableStream | null) => {
    if (!stream) return;
    const lines = createInterface({ input: stream });
    lines.on('line', (line) => {
      if (line.startsWith('consort: ')) p.lastError = line.slice('consort: '.length);
      if (!quiet) process.stderr.write(`[${label}] ${line}\n`);
    });
  };
  forward(p.stderr);
  if (stdout === 'log') forward(p.stdout);
  return p;
}

/** The child's exit status (128 when a signal ended it), at once if it has already exited. */
const exited = (p: ChildProcess) =>
  new Promise<number>((done) => {
    // A child ended by a signal keeps exitCode null: its signalCode says it is gone.
    if (p.exitCode !== null || p.signalCode !== null) return done(p.exitCode ?? 128);
    p.once('exit', (code, signal) => done(code ?? (signal ? 128 : 1)));
  });

export async function runOverNats(o: NatsRunOptions): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'consort-run-'));
  let server: NatsServer | undefined;
  const children: ChildProcess[] = [];
  let stopping = false;
  const alive = () => children.filter((c) => c.exitCode === null && c.signalCode === null);
  let killing = false;
  const stopAll = () => {
    stopping = true;
    for (const c of alive()) c.kill('SIGTERM');
    // A child caught by the signal where it cannot act on it yet (still loading its data, say)
    // would keep the run waiting for ever: what is left after a few seconds is killed.
    if (killing) return;
    killing = true;
    setTimeout(() => {
      for (const c of alive()) c.kill('SIGKILL');
    }, 5000).unref();
  };
  // Held until the cleanup below is over (not once): a second Ctrl-C must not kill this process
  // before it has stopped the server and removed the folder that holds every site's key.
  /** The signal that stopped this run from outside (Ctrl-C, kill), if one did. */
  let interruptedBy: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    interruptedBy ??= signal;
    stopAll();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    let url = o.nats;
    // Keys for every run: sites sign their updates whether or not the server checks logins.
    const auth = natsAuthFor(o.job, { listen: `127.0.0.1:${await freePort()}` });
    writeNatsConfigFiles(dir, auth);
    if (o.nats === 'embedded') {
      server = await NatsServer.start({ config: auth.config });
      url = server.url;
      if (!o.quiet) process.stderr.write(`started nats-server on ${url} (JetStream in ${server.storeDir})\n`);
    } else {
      const url = natsUrlFlag.safeParse(o.nats);
      if (!url.success) throw new CliError('CONSORT_CLI_USAGE', `--nats: "${o.nats}" is not "embedded", and as a URL it ${url.error.issues[0]?.message}`);
      // Its coordinator and sites would wait for a server that is not there (as a site started
      // before its server does): a run started by hand is told at once instead.
      await reachable(url.data);
    }
    // Stopped while the server started: nothing to spawn.
    if (stopping) throw new CliError('CONSORT_CLI_RUN', 'stopped before the coordinator and the sites started');
    const quiet = o.quiet ? ['--quiet'] : [];
    const seed = o.seed !== undefined ? ['--seed', String(o.seed)] : [];
    const rounds = o.rounds !== undefined ? ['--rounds', String(o.rounds)] : [];
    const coordinator = child(
      [
        'coordinator',
        o.jobPath,
        '--nats',
        url,
        '--creds',
        join(dir, 'coordinator.nk'),
        '--keys',
        join(dir, 'keys.json'),
        '--out',
        o.outDir,
        ...seed,
        ...rounds,
        ...quiet,
      ],
      'coordinator',
      o.quiet,
      'inherit',
      o.nats === 'embedded',
    );
    children.push(coordinator);
    // A site that stops on bad input (exit 2: its data, its model) stops the run, as it would in
    // one process: the coordinator would otherwise wait for it, or train without it and exit 0.
    let refusedBy: { site: string; why: string } | undefined;
    for (const s of o.job.spec.sites) {
      const site = child(
        ['site', '--job', o.jobPath, '--site', s.name, '--nats', url, '--creds', join(dir, 'sites', `${s.name}.nk`), '--backend', o.backend, ...seed, ...quiet],
        s.name,
        o.quiet,
        'log',
        o.nats === 'embedded',
      );
      children.push(site);
      site.once('exit', (code, signal) => {
        if (stopping || code === 0) return;
        // Said at once, not at the round's deadline: nothing here starts a site again.
        if (code !== 2 && coordinator.exitCode === null && coordinator.signalCode === null) {
          process.stderr.write(
            `warning: site "${s.name}"'s process ended (${signal ? `killed by ${signal}` : `exit status ${code}`}) before the job did: a round under way waits for it until its deadline (${o.job.spec.aggregation.roundDeadlineSeconds} s); later rounds go on without it while sampling.minSites (${o.job.spec.sampling.minSites}) allows\n`,
          );
        }
        if (code !== 2) return;
        // Its own line, read to the end before 'close'.
        site.once('close', () => {
          refusedBy ??= { site: s.name, why: site.lastError ?? 'see its output above' };
          stopAll();
        });
      });
    }
    const code = await exited(coordinator);
    // Killed from outside (the OOM killer, kill -9), not stopped by this run: it said nothing itself.
    const killedBy = !stopping && coordinator.signalCode ? coordinator.signalCode : undefined;
    if (refusedBy) {
      await Promise.all(children.map(exited));
      throw new CliError('CONSORT_CLI_DATA', `site "${refusedBy.site}" stopped on bad input, so the run stopped: ${refusedBy.why}`);
    }
    // Sites leave on the coordinator's "done"; give them a moment, then stop the stragglers.
    const grace = setTimeout(stopAll, code === 0 ? 10_000 : 0);
    await Promise.all(children.map(exited));
    clearTimeout(grace);
    if (killedBy) {
      throw new CliError(
        'CONSORT_CLI_RUN',
        `the coordinator's process was killed by ${killedBy} before the job ended${
          o.nats === 'embedded'
            ? ": the embedded nats-server's store, its checkpoints with it, goes with this run; run it again to start over (with --nats URL, a run started again goes on from the last checkpoint)"
            : `; its checkpoints stay on ${url}: the same command, run again, goes on from the last one`
        }`,
      );
    }
    // Stopped by the user before the job ended: say what a rerun does (there is no resuming from
    // an embedded server's store, which goes with this run).
    if (interruptedBy && code !== 0) {
      throw new CliError(
        'CONSORT_CLI_RUN',
        `stopped by ${interruptedBy} before the job ended${
          o.nats === 'embedded'
            ? ": the embedded nats-server's store, its checkpoints with it, goes with this run, so running it again starts over (with --nats URL, a run stopped and started again goes on from the last checkpoint)"
            : `; its checkpoints stay on ${url}: the same command, run again, goes on from the last one`
        }`,
      );
    }
    // The coordinator's reason, said once by this process too: with --quiet nothing else says it.
    if (code === 1) throw new CliError('CONSORT_CLI_RUN', `the coordinator stopped: ${coordinator.lastError ?? `exit status ${code}, see its output above`}`);
    return code;
  } finally {
    stopAll();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Resolves once something accepts a TCP connection at the URL's host and port (4222 by default); else CONSORT_CLI_NATS. */
async function reachable(url: string): Promise<void> {
  const { hostname, port } = new URL(url);
  const host = hostname.replace(/^\[(.*)\]$/, '$1');
  await new Promise<void>((done, fail) => {
    const socket = connect({ host, port: Number(port || 4222), timeout: 5000 });
    const refuse = (why: string) => {
      socket.destroy();
      fail(new CliError('CONSORT_CLI_NATS', `--nats ${url}: no NATS server answers there (${why})`));
    };
    socket.once('connect', () => {
      socket.destroy();
      done();
    });
    socket.once('timeout', () => refuse('no answer in 5 s'));
    socket.once('error', (err: NodeJS.ErrnoException) => refuse(err.code ?? err.message));
  });
}
