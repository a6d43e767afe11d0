// A one-consumer async queue: the NATS handlers push answers as they arrive, the round loop
// iterates them; closing ends the iteration once the queue is drained. An item may carry a
// callback run once the consumer is done with it (it asked for the next item, or stopped): the
// transport frees an update's buffer then, so that buffers waiting to be folded stay bounded.
export class Channel<T> implements AsyncIterable<T> {
  private readonly items: Array<{ item: T; consumed?: (() => void) | undefined }> = [];
  private waiting: ((r: IteratorResult<T>) => void) | undefined;
  /** The callback of the item the consumer holds now. */
  private held: (() => void) | undefined;
  private closed = false;

  /** Queues an item; false (and `consumed` run at once) when the channel is closed. */
  push(item: T, consumed?: () => void): boolean {
    if (this.closed) {
      consumed?.();
      return false;
    }
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      this.held = consumed;
      w({ value: item, done: false });
    } else this.items.push({ item, consumed });
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.waiting && this.items.length === 0) {
      const w = this.waiting;
      this.waiting = undefined;
      w({ value: undefined, done: true });
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private release(): void {
    const h = this.held;
    this.held = undefined;
    h?.();
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        this.release();
        const next = this.items.shift();
        if (next !== undefined) {
          this.held = next.consumed;
          return Promise.resolve({ value: next.item, done: false });
        }
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.waiting = resolve;
        });
      },
      return: () => {
        this.release();
        for (const { consumed } of this.items.splice(0)) consumed?.();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
