// Redis for the fault tests that run the broker with Redis persistence: whether it answers, and the
// clean-up of one test's key prefix. Touches only keys under the prefix it is given.
import { connect } from "node:net";
import { Redis } from "ioredis";

export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379/9";

export const redisUp = await new Promise<boolean>((resolve) => {
  const u = new URL(REDIS_URL);
  const s = connect(Number(u.port || 6379), u.hostname);
  s.once("connect", () => s.end(() => resolve(true)));
  s.once("error", () => resolve(false));
});

export async function dropRedisKeys(keyPrefix: string): Promise<void> {
  const r = new Redis(REDIS_URL);
  try {
    let cursor = "0";
    do {
      const [next, keys] = await r.scan(cursor, "MATCH", `${keyPrefix}*`, "COUNT", 500);
      cursor = next;
      if (keys.length) await r.del(...keys);
    } while (cursor !== "0");
  } finally {
    r.disconnect();
  }
}

export async function countRedisKeys(keyPrefix: string): Promise<number> {
  const r = new Redis(REDIS_URL);
  let n = 0;
  try {
    let cursor = "0";
    do {
      const [next, keys] = await r.scan(cursor, "MATCH", `${keyPrefix}*`, "COUNT", 500);
      cursor = next;
      n += keys.length;
    } while (cursor !== "0");
  } finally {
    r.disconnect();
  }
  return n;
}
