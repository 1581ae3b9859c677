import { describe, expect, it } from "vitest";
import { TokenBucket } from "../../../broker/rate-limit.ts";

describe("TokenBucket", () => {
  it("passes a burst, then holds, then refuses once a client is a whole burst behind", () => {
    let now = 0;
    const bucket = new TokenBucket({ messagesPerSecond: 10, burst: 3 }, () => now);
    expect([bucket.take(), bucket.take(), bucket.take()].map((d) => d.action)).toEqual([
      "pass",
      "pass",
      "pass",
    ]);
    expect(bucket.take()).toEqual({ action: "hold", ms: 100 });
    expect(bucket.take()).toEqual({ action: "hold", ms: 200 });
    expect(bucket.take()).toEqual({ action: "hold", ms: 300 });
    expect(bucket.take()).toEqual({ action: "refuse" });
    now = 1000; // one second refills ten tokens, capped at the burst
    expect(bucket.take().action).toBe("pass");
    expect(bucket.take().action).toBe("pass");
  });

  it("lets a client at the sustained rate through without holding", () => {
    let now = 0;
    const bucket = new TokenBucket({ messagesPerSecond: 100, burst: 1 }, () => now);
    for (let i = 0; i < 1000; i++) {
      expect(bucket.take().action).toBe("pass");
      now += 10;
    }
  });
});
