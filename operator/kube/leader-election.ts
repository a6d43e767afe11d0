// Leader election with a coordination.k8s.io Lease, as client-go's leaderelection does: the
// holder renews the lease every retry period; another candidate takes it once it has not been
// renewed for the lease duration. Updates go through resourceVersion (optimistic concurrency), so
// two candidates can never both win the same term. A leader that cannot renew within the renew
// deadline steps down (onStoppedLeading) before anyone else may take over.
import { isConflict, isNotFound, type KubeClient, resourcePath, Resources } from './client.ts';

export interface LeaderElectionOptions {
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  onStartedLeading: () => void;
  onStoppedLeading: () => void;
  log?: (line: string) => void;
}

interface Lease {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

const microTime = (d: Date) => d.toISOString().replace('Z', '000Z');

export class LeaderElector {
  readonly #client: KubeClient;
  readonly #o: Required<Omit<LeaderElectionOptions, 'log'>> & { log: (line: string) => void };
  #leading = false;
  #stopped = false;
  #timer: NodeJS.Timeout | undefined;
  #lastRenew = 0;
  /** When we last saw the lease change hands or be renewed by someone else (our clock). */
  #observed: { holder?: string; renewTime?: string; at: number } = { at: 0 };

  constructor(client: KubeClient, o: LeaderElectionOptions) {
    this.#client = client;
    this.#o = { leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000, log: () => {}, ...o };
  }

  get leading(): boolean {
    return this.#leading;
  }

  start(): void {
    void this.#tick();
  }

  /** Stops campaigning; a leader gives the lease up at once so that another takes over without waiting. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    if (this.#leading) {
      this.#setLeading(false);
      try {
        const path = resourcePath(Resources.leases, this.#o.namespace, this.#o.name);
        const lease = await this.#client.get<Lease>(path);
        if (lease.spec.holderIdentity === this.#o.identity) {
          await this.#client.put(path, { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1 } });
        }
      } catch {}
    }
  }

  #setLeading(v: boolean): void {
    if (this.#leading === v) return;
    this.#leading = v;
    this.#o.log(v ? `${this.#o.identity} is now the leader (lease ${this.#o.namespace}/${this.#o.name})` : `${this.#o.identity} stopped leading`);
    if (v) this.#o.onStartedLeading();
    else this.#o.onStoppedLeading();
  }

  async #tick(): Promise<void> {
    if (this.#stopped) return;
    try {
      const ok = await this.#tryAcquireOrRenew();
      if (ok) {
        this.#lastRenew = Date.now();
        this.#setLeading(true);
      } else if (this.#leading) {
        this.#setLeading(false);
      }
    } catch (err) {
      this.#o.log(`leader election: ${(err as Error).message}`);
      // Could not reach the API server: a leader keeps leading only within the renew deadline.
      if (this.#leading && Date.now() - this.#lastRenew > this.#o.renewDeadlineMs) this.#setLeading(false);
    }
    if (!this.#stopped) {
      this.#timer = setTimeout(() => void this.#tick(), this.#o.retryPeriodMs * (this.#leading ? 1 : 1 + Math.random() * 0.2));
    }
  }

  async #tryAcquireOrRenew(): Promise<boolean> {
    const path = resourcePath(Resources.leases, this.#o.namespace, this.#o.name);
    const now = new Date();
    const spec = (transitions: number, acquire?: string): Lease['spec'] => ({
      holderIdentity: this.#o.identity,
      leaseDurationSeconds: Math.ceil(this.#o.leaseDurationMs / 1000),
      acquireTime: acquire ?? microTime(now),
      renewTime: microTime(now),
      leaseTransitions: transitions,
    });
    let lease: Lease;
    try {
      lease = await this.#client.get<Lease>(path);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      try {
        await this.#client.create(resourcePath(Resources.leases, this.#o.namespace), {
          apiVersion: 'coordination.k8s.io/v1',
          kind: 'Lease',
          metadata: { name: this.#o.name, namespace: this.#o.namespace },
          spec: spec(0),
        });
        return true;
      } catch (e) {
        if (isConflict(e) || (e as { status?: number }).status === 409) return false;
        throw e;
      }
    }
    const holder = lease.spec.holderIdentity ?? '';
    // Expiry is judged by our own clock since we last saw the lease change, not by the holder's
    // timestamps, so that clock skew between candidates cannot make two leaders.
    if (holder !== this.#observed.holder || lease.spec.renewTime !== this.#observed.renewTime) {
      this.#observed = { holder, renewTime: lease.spec.renewTime ?? '', at: Date.now() };
    }
    const mine = holder === this.#o.identity;
    const durationMs = (lease.spec.leaseDurationSeconds ?? 15) * 1000;
    const expired = holder === '' || Date.now() - this.#observed.at > durationMs;
    if (!mine && !expired) return false;
    const transitions = (lease.spec.leaseTransitions ?? 0) + (mine ? 0 : 1);
    try {
      await this.#client.put(path, { ...lease, spec: spec(transitions, mine ? lease.spec.acquireTime : undefined) });
      return true;
    } catch (err) {
      if (isConflict(err)) return false;
      throw err;
    }
  }
}
