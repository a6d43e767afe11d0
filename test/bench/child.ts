// Runs one function of a benchmark module in a fresh process (child-entry.ts) and takes its
// result back over IPC: every benchmark (and every backend of the throughput benchmark) gets a
// process of its own, so that peak RSS, the TF.js backend and native-library settings of one
// never leak into another.
import { fork } from 'node:child_process';

export interface ChildOptions {
  /** Extra environment, e.g. TF_ENABLE_ONEDNN_OPTS (read by libtensorflow when it loads). */
  env?: Record<string, string>;
}

/** Calls `fn(arg)` exported by test/bench/<module> in a child process; resolves to its result. */
export function inChild<T>(module: string, fn: string, arg: unknown, opts: ChildOptions = {}): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const child = fork(new URL('./child-entry.ts', import.meta.url), [module, fn, JSON.stringify(arg)], {
      env: { ...process.env, ...opts.env },
      stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    });
    let settled = false;
    child.on('message', (m: { ok: true; result: T } | { ok: false; error: string }) => {
      settled = true;
      if (m.ok) resolve(m.result);
      else reject(new Error(`${module} ${fn}: ${m.error}`));
    });
    child.on('error', (err) => {
      if (!settled) reject(err);
      settled = true;
    });
    child.on('exit', (code, signal) => {
      if (!settled) reject(new Error(`${module} ${fn}: child exited with ${signal ?? `code ${code}`} before answering`));
      settled = true;
    });
  });
}
