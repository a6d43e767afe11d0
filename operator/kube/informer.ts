// An informer: list, then watch from the list's resourceVersion, keeping a cache of the objects
// and telling handlers what changed. Whatever ends the watch (the server's periodic close, a
// network error, the API server restarting, 410 Gone) it carries on: a clean close re-watches
// from the last version seen; an error re-lists after an exponential backoff; and a watchdog
// re-lists a watch that has said nothing (not even a bookmark) for too long, since a half-open
// connection can otherwise hang forever without an error.
import { isGone, type KubeClient, type KubeObject, type WatchEvent } from './client.ts';

export interface InformerHandlers<T extends KubeObject> {
  /** An object appeared or changed (also for every object of a re-list). */
  upsert?: (obj: T, old: T | undefined) => void;
  deleted?: (obj: T) => void;
}

export interface InformerOptions {
  /** Collection path, e.g. /api/v1/pods or /apis/consort.dev/v1alpha1/namespaces/x/federatedjobs. */
  path: string;
  labelSelector?: string;
  fieldSelector?: string;
  /** The server ends each watch after this long (with some jitter) and it is re-opened. */
  watchTimeoutSeconds?: number;
  /** No event nor bookmark for this long: the watch is presumed stuck and re-listed. */
  stallMs?: number;
  backoffMs?: { initial: number; max: number };
  log?: (line: string) => void;
  /** Each list after the first (a re-list), for the operator's metrics. */
  onRelist?: () => void;
}

export const keyOf = (o: KubeObject): string => (o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name);

export class Informer<T extends KubeObject> {
  readonly #client: KubeClient;
  readonly #opts: Required<Omit<InformerOptions, 'labelSelector' | 'fieldSelector' | 'onRelist'>> &
    Pick<InformerOptions, 'labelSelector' | 'fieldSelector' | 'onRelist'>;
  readonly #handlers: InformerHandlers<T>[] = [];
  readonly #cache = new Map<string, T>();
  #rv = '';
  #synced = false;
  #stopped = false;
  #ctl: AbortController | undefined;
  #lastHeard = Date.now();
  #loop: Promise<void> | undefined;
  #watchdog: NodeJS.Timeout | undefined;
  /** How many times the list was fetched (1 + re-lists), and watch errors: for tests and metrics. */
  lists = 0;
  errors = 0;
  #syncedWaiters: (() => void)[] = [];

  constructor(client: KubeClient, opts: InformerOptions) {
    this.#client = client;
    this.#opts = {
      watchTimeoutSeconds: 240,
      stallMs: 300_000,
      backoffMs: { initial: 200, max: 30_000 },
      log: () => {},
      ...opts,
    };
  }

  on(h: InformerHandlers<T>): this {
    this.#handlers.push(h);
    return this;
  }

  get(key: string): T | undefined {
    return this.#cache.get(key);
  }
  list(): T[] {
    return [...this.#cache.values()];
  }
  get synced(): boolean {
    return this.#synced;
  }
  /** Resolves once the first list has filled the cache. */
  waitForSync(): Promise<void> {
    if (this.#synced) return Promise.resolve();
    return new Promise((r) => this.#syncedWaiters.push(r));
  }

  start(): this {
    this.#loop = this.#run();
    this.#watchdog = setInterval(
      () => {
        if (this.#ctl && Date.now() - this.#lastHeard > this.#opts.stallMs) {
          this.#opts.log(`informer ${this.#opts.path}: no event for ${Math.round(this.#opts.stallMs / 1000)} s; re-listing`);
          this.#rv = '';
          this.#ctl.abort();
        }
      },
      Math.min(this.#opts.stallMs, 5000),
    );
    this.#watchdog.unref();
    return this;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#watchdog);
    this.#ctl?.abort();
    await this.#loop;
  }

  async #run(): Promise<void> {
    let backoff = this.#opts.backoffMs.initial;
    while (!this.#stopped) {
      try {
        if (!this.#rv) await this.#relist();
        await this.#watchOnce();
        backoff = this.#opts.backoffMs.initial;
      } catch (err) {
        if (this.#stopped) break;
        this.errors++;
        // 410 Gone: the version we watched from is compacted away; only a re-list helps.
        this.#rv = '';
        this.#opts.log(`informer ${this.#opts.path}: ${isGone(err) ? 'resource version expired' : (err as Error).message}; re-listing in ${backoff} ms`);
        await new Promise((r) => setTimeout(r, backoff * (0.5 + Math.random() / 2)));
        backoff = Math.min(backoff * 2, this.#opts.backoffMs.max);
      }
    }
  }

  async #relist(): Promise<void> {
    const items: T[] = [];
    let cont: string | undefined;
    let rv = '';
    do {
      const page = await this.#client.get<{ metadata: { resourceVersion: string; continue?: string }; items: T[] }>(this.#opts.path, {
        labelSelector: this.#opts.labelSelector,
        fieldSelector: this.#opts.fieldSelector,
        limit: 500,
        continue: cont,
      });
      items.push(...page.items);
      rv = page.metadata.resourceVersion;
      cont = page.metadata.continue || undefined;
    } while (cont);
    this.lists++;
    if (this.lists > 1) this.#opts.onRelist?.();
    const fresh = new Set<string>();
    for (const item of items) {
      const k = keyOf(item);
      fresh.add(k);
      const old = this.#cache.get(k);
      this.#cache.set(k, item);
      if (old?.metadata.resourceVersion !== item.metadata.resourceVersion) for (const h of this.#handlers) h.upsert?.(item, old);
    }
    for (const [k, old] of this.#cache) {
      if (fresh.has(k)) continue;
      this.#cache.delete(k);
      for (const h of this.#handlers) h.deleted?.(old);
    }
    this.#rv = rv;
    this.#lastHeard = Date.now();
    if (!this.#synced) {
      this.#synced = true;
      for (const w of this.#syncedWaiters.splice(0)) w();
    }
  }

  async #watchOnce(): Promise<void> {
    const ctl = new AbortController();
    this.#ctl = ctl;
    this.#lastHeard = Date.now();
    let failure: Error | undefined;
    await this.#client.watch<T>(
      this.#opts.path,
      {
        resourceVersion: this.#rv,
        allowWatchBookmarks: true,
        labelSelector: this.#opts.labelSelector,
        fieldSelector: this.#opts.fieldSelector,
        timeoutSeconds: Math.round(this.#opts.watchTimeoutSeconds * (1 + Math.random() / 4)),
      },
      (e: WatchEvent<T>) => {
        this.#lastHeard = Date.now();
        if (e.type === 'ERROR') {
          const status = e.object as unknown as { code?: number; message?: string };
          failure = Object.assign(new Error(`watch error ${status.code}: ${status.message}`), { status: status.code });
          if (status.code === 410) this.#rv = '';
          ctl.abort();
          return;
        }
        const rv = e.object.metadata?.resourceVersion;
        if (rv) this.#rv = rv;
        if (e.type === 'BOOKMARK') return;
        const k = keyOf(e.object);
        if (e.type === 'DELETED') {
          this.#cache.delete(k);
          for (const h of this.#handlers) h.deleted?.(e.object);
        } else {
          const old = this.#cache.get(k);
          this.#cache.set(k, e.object);
          for (const h of this.#handlers) h.upsert?.(e.object, old);
        }
      },
      ctl.signal,
    );
    this.#ctl = undefined;
    if (failure) throw failure;
  }
}
