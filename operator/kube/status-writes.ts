// The status this controller last wrote, until its informer has shown it. A reconcile reads the
// job from the informer's cache, which lags the controller's own status writes: one that ran
// before the echo of the previous write arrived took the older status for the job's, and wrote
// what it derived from it: a suspended job's round went back from 5 to 4 (the status's round is
// the larger of the run's and the old status's, and the run was gone). Until the informer shows
// our write (an event with its resourceVersion, or a later one), reconciles start from the status
// we wrote instead of the cache's.

/** resourceVersions are etcd revisions: decimal, increasing. Compared only when both are decimal. */
function later(a: string, b: string): boolean {
  return /^\d{1,30}$/.test(a) && /^\d{1,30}$/.test(b) && BigInt(a) > BigInt(b);
}

export class StatusWrites<S> {
  /** Job uid → the resourceVersion our last status write left, and that status. */
  readonly #written = new Map<string, { version: string; status: S }>();

  /** Our status write's answer: its resourceVersion, and the status written. */
  wrote(uid: string, version: string | undefined, status: S): void {
    if (version) this.#written.set(uid, { version, status });
  }

  /** An informer event of the job: once it carries our write's version or a later one, the cache has our write. */
  seen(uid: string, version: string | undefined): void {
    const mine = this.#written.get(uid);
    if (mine && version !== undefined && (version === mine.version || later(version, mine.version))) this.#written.delete(uid);
  }

  /** The job's status as of our last write, when the cache (`cached`) has not shown it yet. */
  current(uid: string, cached: S | undefined): S | undefined {
    return this.#written.get(uid)?.status ?? cached;
  }

  forget(uid: string): void {
    this.#written.delete(uid);
  }

  get size(): number {
    return this.#written.size;
  }
}
