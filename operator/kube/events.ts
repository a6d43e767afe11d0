// Kubernetes Events about a job (what `kubectl describe fj` lists under Events). The same event
// again (object, type, reason, message) bumps the count of the first rather than adding one, as
// client-go's recorder does; a failure to record is logged, never fatal. Like client-go's
// recorder, recording does not hold the caller up: each object's events are written in order,
// in the background, and flush() waits for those under way.
import { randomBytes } from 'node:crypto';
import { type KubeClient, type KubeObject, resourcePath, Resources } from './client.ts';

export type EventType = 'Normal' | 'Warning';

export class EventRecorder {
  readonly #client: KubeClient;
  readonly #component: string;
  readonly #seen = new Map<string, { name: string; count: number }>();
  readonly #log: (line: string) => void;
  /** The last write under way per object: the next one of that object goes after it. */
  readonly #pending = new Map<string, Promise<void>>();

  constructor(client: KubeClient, component: string, log: (line: string) => void = () => {}) {
    this.#client = client;
    this.#component = component;
    this.#log = log;
  }

  /** Records the event in the background; the promise (which never rejects) is for callers that must wait. */
  record(obj: KubeObject, type: EventType, reason: string, message: string): Promise<void> {
    const id = obj.metadata.uid ?? `${obj.metadata.namespace}/${obj.metadata.name}`;
    const next = (this.#pending.get(id) ?? Promise.resolve()).then(() => this.#write(obj, type, reason, message));
    this.#pending.set(id, next);
    void next.then(() => {
      if (this.#pending.get(id) === next) this.#pending.delete(id);
    });
    return next;
  }

  /** Waits for the events under way. */
  async flush(): Promise<void> {
    while (this.#pending.size > 0) await Promise.all(this.#pending.values());
  }

  async #write(obj: KubeObject, type: EventType, reason: string, message: string): Promise<void> {
    const ns = obj.metadata.namespace ?? 'default';
    const key = `${obj.metadata.uid}\u0000${type}\u0000${reason}\u0000${message}`;
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const seen = this.#seen.get(key);
    try {
      if (seen) {
        seen.count++;
        await this.#client.patch(resourcePath(Resources.events, ns, seen.name), { count: seen.count, lastTimestamp: now });
        return;
      }
      const name = `${obj.metadata.name}.${randomBytes(8).toString('hex')}`;
      await this.#client.create(resourcePath(Resources.events, ns), {
        apiVersion: 'v1',
        kind: 'Event',
        metadata: { name, namespace: ns },
        involvedObject: {
          apiVersion: obj.apiVersion,
          kind: obj.kind,
          name: obj.metadata.name,
          namespace: ns,
          uid: obj.metadata.uid,
          resourceVersion: obj.metadata.resourceVersion,
        },
        type,
        reason,
        message: message.slice(0, 1024),
        source: { component: this.#component },
        reportingComponent: this.#component,
        reportingInstance: this.#component,
        count: 1,
        firstTimestamp: now,
        lastTimestamp: now,
      });
      this.#seen.set(key, { name, count: 1 });
      if (this.#seen.size > 10_000) this.#seen.delete(this.#seen.keys().next().value!);
    } catch (err) {
      this.#log(`event ${reason} on ${ns}/${obj.metadata.name} not recorded: ${(err as Error).message}`);
    }
  }

  /** Forget a deleted object's events. */
  forget(uid: string): void {
    for (const k of this.#seen.keys()) if (k.startsWith(`${uid}\u0000`)) this.#seen.delete(k);
  }
}
