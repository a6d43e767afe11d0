// A nats-server of our own: the project's cached binary (scripts/nats-server.sh), on a free
// loopback port, JetStream on with its own store, stopped whatever happened. `consort run --nats
// embedded` runs one; the tests start theirs through this module too.
//
// The server runs in a process group of its own (detached). stop() kills the group, SIGTERM then
// SIGKILL; a process 'exit' hook kills what teardown missed; and a small sh watcher reading a
// pipe from this process kills the group when this process dies without either (SIGKILL, a
// crashed runner), since the pipe then closes.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const REPO_ROOT = resolve(import.meta.dirname, '../..');
const HOST = '127.0.0.1';
const LOG_LIMIT = 256 * 1024;

/** Set by `consort run --nats embedded` for its children: the server's store goes with the run, so no rerun resumes a job. */
export const EPHEMERAL_NATS_ENV = 'CONSORT_NATS_EPHEMERAL';

export interface NatsServerOptions {
  /** Configuration text (e.g. from `natsAuthFor`); the harness's address, ports and store directory override what it says about those. */
  config?: string;
  /** JetStream on (default true), stored under the server's temporary folder. */
  jetstream?: boolean;
  /** Debug logging (-D): permission violations and connections in `log()`. */
  debug?: boolean;
  /** How long start and restart wait for readiness (default 20 s). */
  startTimeoutMs?: number;
  /** How long stop waits after SIGTERM before SIGKILL (default 5 s). */
  stopTimeoutMs?: number;
  /** The client port (default: a free one): for a server that clients were told of before it started. */
  port?: number;
}

// Process groups still running, killed when this process exits however it exits normally (the
// test harness's ManagedProcess tracks its groups here too).
const live = new Set<number>();
let exitHook = false;
export function trackProcessGroup(pgid: number): void {
  live.add(pgid);
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const id of live) signalGroup(id, 'SIGKILL');
  });
}

/** The group has exited: no need to kill it at exit. */
export function untrackProcessGroup(pgid: number): void {
  live.delete(pgid);
}

export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // ESRCH: the group is gone already.
  }
}

let binaryPath: string | undefined;
/** The nats-server binary, built and cached by scripts/nats-server.sh on first use. */
export function natsServerBinary(): string {
  binaryPath ??= execFileSync('bash', [join(REPO_ROOT, 'scripts/nats-server.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  return binaryPath;
}

/** A port nobody listens on now. Another process may take it before the server binds it: callers retry. */
export function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', fail);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? done(addr.port) : fail(new Error('no port'))));
    });
  });
}

// Kills the process group $0 and removes the folder $1 when its stdin (a pipe from this process)
// reaches EOF, that is when this process dies without teardown or exit hook (SIGKILL, a crashed
// runner). dash's kill takes "-PGID" but not "--".
const WATCHER = 'while read -r _; do :; done; kill -TERM "-$0" 2>/dev/null; sleep 3; kill -KILL "-$0" 2>/dev/null; rm -rf "$1"';

/** Whether `p` settles within `ms` (the timer holds the event loop open meanwhile). */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<boolean>((r) => {
    timer = setTimeout(() => r(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true), expired]);
  } finally {
    clearTimeout(timer);
  }
}

class StartFailure extends Error {
  readonly portInUse: boolean;
  constructor(message: string, portInUse: boolean) {
    super(message);
    this.portInUse = portInUse;
  }
}

export class NatsServer {
  /** Temporary folder of this server: store, config file. Removed by stop(). */
  readonly dir: string;
  readonly storeDir: string;
  readonly opts: Required<Omit<NatsServerOptions, 'config' | 'port'>> & { config?: string; port?: number };
  #port = 0;
  #monitorPort = 0;
  /** The server process and a promise that settles once it has exited and its output is drained. */
  #running: { child: ChildProcess; closed: Promise<void>; watcherGone: Promise<void> } | undefined;
  #log = '';
  #stopped = false;
  #storeInConfig = false;

  private constructor(opts: NatsServerOptions) {
    this.opts = { jetstream: true, debug: false, startTimeoutMs: 20_000, stopTimeoutMs: 5_000, ...opts };
    this.dir = mkdtempSync(join(tmpdir(), 'consort-nats-'));
    this.storeDir = join(this.dir, 'jetstream');
  }

  /** Starts a server on free loopback ports and resolves once it accepts clients (and JetStream is up). */
  static async start(opts: NatsServerOptions = {}): Promise<NatsServer> {
    const server = new NatsServer(opts);
    if (opts.config !== undefined) writeFileSync(join(server.dir, 'nats-server.conf'), server.#ownStore(opts.config));
    try {
      await server.#launch({ keepPort: false });
    } catch (err) {
      await server.stop();
      throw err;
    }
    return server;
  }

  /**
   * nats-server refuses -sd when the configuration names a store_dir too: point that one at this
   * server's folder instead, so that a configuration written for real use runs here as is.
   */
  #ownStore(config: string): string {
    const own = /^(\s*store_dir\s*[:=]\s*)("[^"]*"|'[^']*'|\S+)/m;
    if (!own.test(config)) return config;
    this.#storeInConfig = true;
    return config.replace(own, (_m, key: string) => `${key}${JSON.stringify(this.storeDir)}`);
  }

  get port(): number {
    return this.#port;
  }
  get url(): string {
    return `nats://${HOST}:${this.#port}`;
  }
  get monitorUrl(): string {
    return `http://${HOST}:${this.#monitorPort}`;
  }
  /** The server's process id (its process group's too); undefined while it is down. */
  get pid(): number | undefined {
    return this.#running?.child.pid;
  }
  get running(): boolean {
    return this.#running !== undefined;
  }
  /** The server's recent output, for assertion messages. */
  log(): string {
    return this.#log;
  }

  /**
   * Stops the server and starts it again on the same port with the same store (JetStream data
   * survives). `signal: 'SIGKILL'` makes it a crash rather than a clean shutdown; `downMs` keeps
   * it down that long, so that clients see the outage.
   */
  async restart(opts: { signal?: 'SIGTERM' | 'SIGKILL'; downMs?: number } = {}): Promise<void> {
    if (this.#stopped) throw new Error('nats-server: restart after stop()');
    await this.#halt(opts.signal ?? 'SIGTERM');
    if (opts.downMs) await new Promise((r) => setTimeout(r, opts.downMs));
    await this.#launch({ keepPort: true });
  }

  /** Stops the server (SIGTERM, then SIGKILL after stopTimeoutMs) and removes its folder. Safe to call twice. */
  async stop(): Promise<void> {
    this.#stopped = true;
    try {
      await this.#halt('SIGTERM');
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }

  async #launch({ keepPort }: { keepPort: boolean }): Promise<void> {
    const deadline = Date.now() + this.opts.startTimeoutMs;
    for (let attempt = 1; ; attempt++) {
      if (this.opts.port !== undefined) this.#port = this.opts.port;
      else if (!keepPort || this.#port === 0) this.#port = await freePort();
      this.#monitorPort = await freePort();
      try {
        await this.#spawnOnce(deadline);
        return;
      } catch (err) {
        await this.#halt('SIGKILL');
        // Someone took a port between our probe and the server's bind: try again (the same
        // client port on restart, which clients will reconnect to).
        if (err instanceof StartFailure && err.portInUse && attempt < 20 && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, keepPort ? 250 : 10));
          continue;
        }
        throw err;
      }
    }
  }

  async #spawnOnce(deadline: number): Promise<void> {
    const args = ['-a', HOST, '-p', String(this.#port), '-m', String(this.#monitorPort)];
    if (this.opts.config !== undefined) args.push('-c', join(this.dir, 'nats-server.conf'));
    if (this.opts.jetstream) args.push('-js', ...(this.#storeInConfig ? [] : ['-sd', this.storeDir]));
    if (this.opts.debug) args.push('-D');
    this.#log += `--- nats-server ${args.join(' ')}\n`;
    // Spawned directly, so that this process reaps it whatever signal ends it (no zombie left).
    const child = spawn(natsServerBinary(), args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    const pgid = child.pid;
    if (pgid === undefined) throw new Error('nats-server: spawn failed');
    trackProcessGroup(pgid);
    const watcher = spawn('sh', ['-c', WATCHER, String(pgid), this.dir], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
    watcher.unref();
    (watcher.stdin as Socket).unref();
    const watcherGone = new Promise<void>((done) => watcher.on('exit', () => done()));
    const append = (chunk: Buffer) => {
      this.#log += chunk.toString('utf8');
      if (this.#log.length > LOG_LIMIT) this.#log = this.#log.slice(-LOG_LIMIT);
    };
    child.stdout!.on('data', append);
    child.stderr!.on('data', append);
    let exited = false;
    const closed = new Promise<void>((done) => child.on('close', () => done()));
    this.#running = { child, closed, watcherGone };
    closed.then(() => {
      exited = true;
      untrackProcessGroup(pgid);
      watcher.kill('SIGKILL');
      if (this.#running?.child === child) this.#running = undefined;
    });

    while (true) {
      if (exited) {
        const log = this.#log.split('\n').slice(-15).join('\n');
        throw new StartFailure(`nats-server exited during start-up:\n${log}`, /address already in use/i.test(log));
      }
      if (Date.now() > deadline) throw new Error(`nats-server: not ready after ${this.opts.startTimeoutMs} ms:\n${this.#log.slice(-4000)}`);
      if (await this.#healthy()) return;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** /healthz answers 200 once the client listener is up and, with JetStream, its streams are recovered. */
  async #healthy(): Promise<boolean> {
    try {
      const res = await fetch(`${this.monitorUrl}/healthz`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return res.ok;
    } catch {
      return false;
    }
  }

  /** Signals the group and waits until the server is gone, escalating to SIGKILL. */
  async #halt(signal: NodeJS.Signals): Promise<void> {
    const running = this.#running;
    if (!running || running.child.pid === undefined) return;
    const pgid = running.child.pid;
    const gone = (ms: number) => within(running.closed, ms);
    signalGroup(pgid, signal);
    if (!(await gone(signal === 'SIGKILL' ? 5_000 : this.opts.stopTimeoutMs))) {
      signalGroup(pgid, 'SIGKILL');
      if (!(await gone(5_000))) throw new Error(`nats-server: process group ${pgid} survived SIGKILL`);
    }
    // Reaped before we return, or a runner that exits right after teardown leaves a zombie.
    await within(running.watcherGone, 2_000);
    this.#running = undefined;
  }
}
