// Per-client publish rate limit: a token bucket that turns a burst into back-pressure (the publish
// is held, so aedes stops reading the client's socket) and a flood into a disconnect. Holding
// instead of dropping keeps QoS 1 promises: a gateway replaying its buffer after an outage is
// slowed down, never loses a message.

export interface RateLimitOptions {
  /** Sustained messages per second; 0 turns the limit off. */
  messagesPerSecond: number;
  /** Messages accepted at once before holding starts; also how far behind a client may fall. */
  burst: number;
}

export type RateDecision = { action: "pass" } | { action: "hold"; ms: number } | { action: "refuse" };

export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly options: RateLimitOptions,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = options.burst;
    this.last = now();
  }

  /** Takes one token. Holds while the client is at most `burst` messages behind, refuses beyond. */
  take(): RateDecision {
    const { messagesPerSecond: rate, burst } = this.options;
    const now = this.now();
    this.tokens = Math.min(burst, this.tokens + ((now - this.last) * rate) / 1000);
    this.last = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return { action: "pass" };
    }
    if (this.tokens - 1 < -burst) return { action: "refuse" };
    this.tokens -= 1;
    return { action: "hold", ms: Math.ceil((-this.tokens * 1000) / rate) };
  }
}
