// Flower doing the no-training round of nats-overhead.ts: a SuperLink and N SuperNodes on
// 127.0.0.1 (insecure, the deployment runtime of Flower 1.x, each node a process of its own),
// and the app in test/bench/flower/ run with `flwr run`: FedAvg over one float32 array, a
// ClientApp that returns it unchanged. The ServerApp times each round itself (configure_train
// to the end of aggregate_train) and writes the times to a JSON file.
//
// flwr comes from PyPI into a virtualenv cached under ${CONSORT_CACHE:-~/.cache/consort}. Every
// process started here runs in a process group of its own and carries a marker in its
// environment; teardown kills the groups and then any process that still carries the marker
// (Flower starts some of its helpers in sessions of their own).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../cli/nats/server.ts';

export const FLWR_VERSION = '1.42.0';
const APP_DIR = new URL('./flower/', import.meta.url).pathname;

export function flowerVenv(): string {
  return join(process.env.CONSORT_CACHE ?? join(homedir(), '.cache', 'consort'), 'flwr-venv');
}

/** Installs flwr into the cached virtualenv unless it is there; returns its bin folder. Throws with pip's own words on failure. */
export function ensureFlower(log: (line: string) => void): string {
  const venv = flowerVenv();
  const marker = join(venv, `.consort-flwr-${FLWR_VERSION}`);
  const bin = join(venv, 'bin');
  if (existsSync(marker)) return bin;
  log(`installing flwr==${FLWR_VERSION} from PyPI into ${venv} (once)`);
  rmSync(venv, { recursive: true, force: true });
  const run = (cmd: string, args: string[]) => {
    const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 900_000 });
    if (r.status !== 0) {
      const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n').slice(-15).join('\n');
      throw new Error(`${cmd} ${args.join(' ')} failed (${r.error ? r.error.message : `exit ${r.status ?? r.signal}`}):\n${out}`);
    }
  };
  run('python3', ['-m', 'venv', venv]);
  run(join(bin, 'pip'), ['install', '--disable-pip-version-check', '--quiet', `flwr==${FLWR_VERSION}`]);
  writeFileSync(marker, `${new Date().toISOString()}\n`);
  return bin;
}

export interface FlowerRounds {
  version: string;
  /** Seconds per round, as the ServerApp measured them. */
  rounds: number[];
  /** SuperLink and SuperNodes up and registered. */
  startSeconds: number;
  /** `flwr run` from submission to exit. */
  runSeconds: number;
}

interface Spawned {
  name: string;
  child: ChildProcess;
  log: string;
}

/** Runs `rounds` no-training FedAvg rounds of `parameters` float32 with `nodes` SuperNodes; throws with the reason when Flower cannot be installed or run. */
export async function flowerRounds(o: {
  nodes: number;
  parameters: number;
  rounds: number;
  timeoutS: number;
  log: (line: string) => void;
}): Promise<FlowerRounds> {
  const bin = ensureFlower(o.log);
  const dir = mkdtempSync(join(tmpdir(), 'consort-flower-'));
  const token = randomUUID();
  const env = {
    ...process.env,
    PATH: `${bin}:${process.env.PATH ?? ''}`,
    FLWR_HOME: join(dir, 'home'),
    PYTHONUNBUFFERED: '1',
    CONSORT_BENCH_FLOWER: token,
  };
  const spawned: Spawned[] = [];
  const start = (name: string, cmd: string, args: string[]): Spawned => {
    const log = join(dir, `${name}.log`);
    const fd = openSync(log, 'w');
    const child = spawn(join(bin, cmd), args, { env, detached: true, stdio: ['ignore', fd, fd], cwd: dir });
    closeSync(fd);
    const s = { name, child, log };
    spawned.push(s);
    return s;
  };
  const tail = (s: Spawned, lines = 20) => {
    try {
      return readFileSync(s.log, 'utf8').trim().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no output)';
    }
  };
  const exited = (s: Spawned) => s.child.exitCode !== null || s.child.signalCode !== null;
  try {
    const version = spawnSync(join(bin, 'flwr'), ['--version'], { encoding: 'utf8', env }).stdout.trim();
    const t0 = performance.now();
    const port = await freePort();
    writeFileSync(join(dir, 'config.toml'), `[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:${port}"\ninsecure = true\n`);
    // flwr reads FLWR_HOME/config.toml.
    spawnSync('mkdir', ['-p', env.FLWR_HOME]);
    writeFileSync(join(env.FLWR_HOME, 'config.toml'), readFileSync(join(dir, 'config.toml')));
    const superlink = start('superlink', 'flower-superlink', [
      '--insecure',
      '--host',
      '127.0.0.1',
      '--port',
      String(port),
      '--disable-runtime-dependency-installation',
    ]);
    const activated = () => (readFileSync(superlink.log, 'utf8').match(/Activated node_id/g) ?? []).length;
    await until(
      () => /Uvicorn running|Application startup complete/.test(readFileSync(superlink.log, 'utf8')),
      60,
      () => exited(superlink) && `the SuperLink exited:\n${tail(superlink)}`,
    );
    for (let i = 0; i < o.nodes; i++) {
      const p = await freePort();
      start(`supernode-${i}`, 'flower-supernode', ['--insecure', '--superlink', `127.0.0.1:${port}`, '--host', '127.0.0.1', '--port', String(p)]);
    }
    await until(
      () => activated() >= o.nodes,
      120,
      () => {
        const dead = spawned.find(exited);
        return dead ? `${dead.name} exited:\n${tail(dead)}` : false;
      },
    );
    const startSeconds = (performance.now() - t0) / 1000;
    const out = join(dir, 'rounds.json');
    const t1 = performance.now();
    const runner = start('flwr-run', 'flwr', [
      'run',
      APP_DIR,
      'bench',
      '--stream',
      '--run-config',
      `nodes=${o.nodes} parameters=${o.parameters} num-server-rounds=${o.rounds} out="${out}"`,
    ]);
    const rounds = () => {
      try {
        return (JSON.parse(readFileSync(out, 'utf8')) as { rounds: Array<{ seconds?: number }> }).rounds.filter((r) => r.seconds !== undefined);
      } catch {
        return [];
      }
    };
    await until(
      () => rounds().length >= o.rounds,
      o.timeoutS,
      () => exited(runner) && rounds().length < o.rounds && `flwr run exited after ${rounds().length} of ${o.rounds} rounds:\n${tail(runner, 30)}`,
    );
    return { version, rounds: rounds().map((r) => r.seconds!), startSeconds, runSeconds: (performance.now() - t1) / 1000 };
  } finally {
    await teardown(spawned, token);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Polls `done` every 200 ms; throws the message `failed` returns (a process died), or a timeout. */
async function until(done: () => boolean, seconds: number, failed: () => string | false): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    if (done()) return;
    const why = failed();
    if (why) throw new Error(why);
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** SIGTERM to every group, SIGKILL after 5 s; then SIGKILL to any process left with our marker. */
async function teardown(spawned: Spawned[], token: string): Promise<void> {
  const signal = (pid: number | undefined, sig: NodeJS.Signals) => {
    if (pid === undefined) return;
    try {
      process.kill(-pid, sig);
    } catch {
      // gone already
    }
  };
  for (const s of spawned.reverse()) signal(s.child.pid, 'SIGTERM');
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline && spawned.some((s) => s.child.exitCode === null && s.child.signalCode === null)) await new Promise((r) => setTimeout(r, 100));
  for (const s of spawned) signal(s.child.pid, 'SIGKILL');
  for (let pass = 0; pass < 3; pass++) {
    const left = marked(token);
    if (left.length === 0) return;
    for (const pid of left) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await new Promise((r) => setTimeout(r, 300));
  }
}

/** Live processes whose environment carries CONSORT_BENCH_FLOWER=token. */
function marked(token: string): number[] {
  const needle = `CONSORT_BENCH_FLOWER=${token}`;
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (/\) Z /.test(stat)) continue; // a zombie: dead already, waiting for its parent
      if (readFileSync(`/proc/${entry}/environ`, 'latin1').split('\0').includes(needle)) found.push(Number(entry));
    } catch {
      // gone, or not ours to read
    }
  }
  return found;
}
