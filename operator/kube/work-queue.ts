// The controller's work queue: keys (namespace/name), never objects, so that a burst of events on
// one job is one reconcile of its latest state. A key is queued at most once; a key being worked
// on is never handed to a second worker, and if it is added meanwhile it runs again afterwards.
// A failed key comes back after a per-key exponential backoff; a success forgets its failures.

export interface WorkQueueOptions {
  workers?: number;
  backoffMs?: { initial: number; max: number };
  /** Seconds from add to the start of its reconcile, for the latency metric. */
  onLatency?: (seconds: number) => void;
  log?: (line: string) => void;
}

export type Reconcile = (key: string) => Promise<{ requeueAfterMs?: number } | undefined>;

export class WorkQueue {
  readonly #queue: string[] = [];
  readonly #queued = new Map<string, number>(); // key → when added (ms)
  readonly #processing = new Set<string>();
  readonly #dirty = new Map<string, number>();
  readonly #failures = new Map<string, number>();
  readonly #timers = new Map<string, NodeJS.Timeout>();
  readonly #opts: Required<Omit<WorkQueueOptions, 'onLatency'>> & Pick<WorkQueueOptions, 'onLatency'>;
  #reconcile: Reconcile | undefined;
  readonly #sleepers: (() => void)[] = [];
  #stopped = false;
  #workers: Promise<void>[] = [];
  /** Reconciles run, per key: a test of "no hot loop". */
  readonly runs = new Map<string, number>();

  constructor(opts: WorkQueueOptions = {}) {
    this.#opts = { workers: 4, backoffMs: { initial: 100, max: 60_000 }, log: () => {}, ...opts };
  }

  get length(): number {
    return this.#queue.length;
  }

  add(key: string): void {
    if (this.#stopped) return;
    const pending = this.#timers.get(key);
    if (pending) {
      clearTimeout(pending);
      this.#timers.delete(key);
    }
    if (this.#processing.has(key)) {
      if (!this.#dirty.has(key)) this.#dirty.set(key, Date.now());
      return;
    }
    if (this.#queued.has(key)) return;
    this.#queued.set(key, Date.now());
    this.#queue.push(key);
    this.#wakeOne();
  }

  /** Adds `key` after `ms` (an earlier add wins: it is not postponed). */
  addAfter(key: string, ms: number): void {
    if (this.#stopped || this.#queued.has(key)) return;
    const existing = this.#timers.get(key);
    if (existing) return;
    const t = setTimeout(() => {
      this.#timers.delete(key);
      this.add(key);
    }, ms);
    t.unref();
    this.#timers.set(key, t);
  }

  /** Forgets a key's failures (e.g. its object was deleted). */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  start(reconcile: Reconcile): void {
    this.#reconcile = reconcile;
    for (let i = 0; i < this.#opts.workers; i++) this.#workers.push(this.#worker());
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
    for (const wake of this.#sleepers.splice(0)) wake();
    await Promise.all(this.#workers);
  }

  #wakeOne(): void {
    this.#sleepers.shift()?.();
  }

  async #next(): Promise<string | undefined> {
    while (!this.#stopped) {
      const key = this.#queue.shift();
      if (key !== undefined) return key;
      await new Promise<void>((r) => this.#sleepers.push(r));
    }
    return undefined;
  }

  async #worker(): Promise<void> {
    for (;;) {
      const key = await this.#next();
      if (key === undefined) return;
      if (this.#queue.length > 0) this.#wakeOne();
      const added = this.#queued.get(key) ?? Date.now();
      this.#queued.delete(key);
      this.#processing.add(key);
      this.#opts.onLatency?.((Date.now() - added) / 1000);
      this.runs.set(key, (this.runs.get(key) ?? 0) + 1);
      let requeueAfter: number | undefined;
      try {
        const r = await this.#reconcile!(key);
        this.#failures.delete(key);
        requeueAfter = r?.requeueAfterMs;
      } catch (err) {
        const n = (this.#failures.get(key) ?? 0) + 1;
        this.#failures.set(key, n);
        requeueAfter = Math.min(this.#opts.backoffMs.initial * 2 ** (n - 1), this.#opts.backoffMs.max);
        this.#opts.log(`reconcile ${key} failed (${n}×), again in ${requeueAfter} ms: ${(err as Error).message}`);
      } finally {
        this.#processing.delete(key);
      }
      const dirtyAt = this.#dirty.get(key);
      if (dirtyAt !== undefined) {
        this.#dirty.delete(key);
        this.add(key);
        // Its latency counts from when it was first re-added.
        if (this.#queued.has(key)) this.#queued.set(key, dirtyAt);
      } else if (requeueAfter !== undefined) {
        this.addAfter(key, requeueAfter);
      }
    }
  }
}
