// A counting semaphore: bounds requests in flight per device and in total. Waiters are served in
// order so a busy device cannot starve the others.

export class Limiter {
  private active = 0;
  private readonly queue: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private closed = false;
  readonly limit: number;

  constructor(limit: number) {
    this.limit = limit;
  }

  get inUse(): number {
    return this.active;
  }

  get waiting(): number {
    return this.queue.length;
  }

  /** Takes a slot if one is free, without a promise: the common case on the polling hot path. */
  tryAcquire(): boolean {
    if (this.closed || this.active >= this.limit || this.queue.length > 0) return false;
    this.active++;
    return true;
  }

  acquire(): Promise<void> {
    if (this.closed) return Promise.reject(new Error("limiter closed"));
    if (this.active < this.limit) {
      this.active++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.queue.push({ resolve, reject }));
  }

  release(): void {
    const next = this.queue.shift();
    if (next) next.resolve();
    else this.active = Math.max(0, this.active - 1);
  }

  close(): void {
    this.closed = true;
    for (const w of this.queue.splice(0)) w.reject(new Error("limiter closed"));
  }
}
