// The echoes of a controller's own writes. Every object it creates or patches comes back through
// its informers as an event, which carries no news to the reconcile that made the write: it
// already acted on it. Queuing the object's owner again for that echo costs a reconcile, and, when
// the echo arrives while that reconcile is still running (it usually does: the reconcile goes on
// to create the next object), a wait behind it in the queue. The write's answer holds the
// resourceVersion the echo will carry: an event with that version is the echo and nothing else,
// since any later change, by anyone, has a newer version. (An echo that beats the write's answer
// is just queued as before: one reconcile too many, never one too few.)

export class OwnWrites {
  /** Object identity (resource/namespace/name) → the resourceVersion our last write left. */
  readonly #versions = new Map<string, string>();

  #id(resource: string, obj: { metadata: { namespace?: string; name: string } }): string {
    return `${resource}/${obj.metadata.namespace ?? ''}/${obj.metadata.name}`;
  }

  /** Records the object as our write's answer returned it. */
  wrote(resource: string, obj: { metadata: { namespace?: string; name: string; resourceVersion?: string } }): void {
    if (obj.metadata.resourceVersion) this.#versions.set(this.#id(resource, obj), obj.metadata.resourceVersion);
  }

  /** True (once) when this event is the echo of our last write of the object. */
  isEcho(resource: string, obj: { metadata: { namespace?: string; name: string; resourceVersion?: string } }): boolean {
    const id = this.#id(resource, obj);
    const mine = this.#versions.get(id);
    if (mine === undefined || mine !== obj.metadata.resourceVersion) return false;
    this.#versions.delete(id);
    return true;
  }

  /** The object is gone: its last write will never echo. */
  forget(resource: string, obj: { metadata: { namespace?: string; name: string } }): void {
    this.#versions.delete(this.#id(resource, obj));
  }

  get size(): number {
    return this.#versions.size;
  }
}
