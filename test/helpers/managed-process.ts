// A server process of the test harness (etcd, kube-apiserver, ...): its own process group, its
// output kept for assertion messages, killed as a group on stop() and, should this process die
// without teardown (SIGKILL, a crashed runner), by a small sh watcher whose stdin pipe closes
// then. The same scheme as cli/nats/server.ts (whose process-group bookkeeping it shares), for any command.
import { type ChildProcess, spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { signalGroup, trackProcessGroup, untrackProcessGroup } from '../../cli/nats/server.ts';

export { signalGroup };

const LOG_LIMIT = 256 * 1024;
const WATCHER = 'while read -r _; do :; done; kill -TERM "-$0" 2>/dev/null; sleep 2; kill -KILL "-$0" 2>/dev/null';

export interface ManagedProcessOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Called with each chunk of output (besides the kept log). */
  onOutput?: (chunk: string) => void;
}

export class ManagedProcess {
  readonly name: string;
  readonly command: string;
  readonly args: string[];
  readonly child: ChildProcess;
  readonly closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #log = '';
  #exited = false;

  constructor(name: string, command: string, args: string[], opts: ManagedProcessOptions = {}) {
    this.name = name;
    this.command = command;
    this.args = args;
    this.child = spawn(command, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd });
    // A failed spawn (no such executable) is reported by 'error' after the constructor returns.
    this.child.on('error', (err) => {
      this.#log += `spawn failed: ${err.message}\n`;
    });
    const pgid = this.child.pid;
    if (pgid === undefined) throw new Error(`${name}: spawn failed`);
    trackProcessGroup(pgid);
    const watcher = spawn('sh', ['-c', WATCHER, String(pgid)], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
    watcher.unref();
    (watcher.stdin as Socket).unref();
    const append = (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      this.#log += text;
      if (this.#log.length > LOG_LIMIT) this.#log = this.#log.slice(-LOG_LIMIT);
      opts.onOutput?.(text);
    };
    this.child.stdout!.on('data', append);
    this.child.stderr!.on('data', append);
    this.closed = new Promise((done) =>
      this.child.on('close', (code, signal) => {
        this.#exited = true;
        untrackProcessGroup(pgid);
        watcher.kill('SIGKILL');
        done({ code, signal });
      }),
    );
  }

  get pid(): number {
    return this.child.pid!;
  }
  get exited(): boolean {
    return this.#exited;
  }
  log(tail = 4000): string {
    return this.#log.slice(-tail);
  }

  /** Signals the group and waits until it is gone, escalating to SIGKILL after `graceMs`. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
    if (this.#exited) return;
    signalGroup(this.pid, signal);
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<boolean>((r) => {
      timer = setTimeout(() => r(false), graceMs);
    });
    const gone = await Promise.race([this.closed.then(() => true), expired]);
    clearTimeout(timer);
    if (!gone) {
      signalGroup(this.pid, 'SIGKILL');
      await this.closed;
    }
  }
}

/** Polls `probe` until it is true; fails with `describe()` if `timeoutMs` passes or `gone()` says the process died. */
export async function waitUntil(
  what: string,
  probe: () => Promise<boolean>,
  opts: { timeoutMs: number; intervalMs?: number; gone?: () => boolean; describe?: () => string },
): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (opts.gone?.()) throw new Error(`${what}: the process exited\n${opts.describe?.() ?? ''}`);
    if (Date.now() > deadline) throw new Error(`${what}: not ready after ${opts.timeoutMs} ms\n${opts.describe?.() ?? ''}`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
  }
}
