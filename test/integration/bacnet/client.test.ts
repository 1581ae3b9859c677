// Request bookkeeping of the endpoint against a silent peer: every request settles (timeout after
// its retries, or "stopped" on shutdown), retries reuse the invoke id, and in-flight limits hold.
import { createSocket, type Socket } from "node:dgram";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createLogger } from "../../../common/logger.ts";
import { BacnetClient } from "../../../gateway/bacnet/client.ts";
import { encodeReadProperty, Service } from "../../../gateway/bacnet/codec.ts";

let silent: Socket;
const seen: { invokeId: number; at: number }[] = [];

beforeAll(async () => {
  silent = createSocket("udp4");
  silent.on("message", (msg) => seen.push({ invokeId: msg[8] as number, at: Date.now() }));
  await new Promise<void>((r) => silent.bind(0, "127.0.0.1", () => r()));
});

afterAll(async () => {
  await new Promise<void>((r) => silent.close(() => r()));
});

function client(): BacnetClient {
  return new BacnetClient({
    address: "127.0.0.1",
    port: 0,
    broadcast: null,
    broadcastPort: 47808,
    apduTimeoutMs: 100,
    retries: 2,
    perDeviceInFlight: 3,
    globalInFlight: 8,
    listenBroadcast: false,
    log: createLogger("bacnet-test"),
  });
}

it("times out after its retries with the same invoke id, and keeps per-device limits", async () => {
  const c = client();
  await c.start();
  try {
    const dest = { ip: "127.0.0.1", port: silent.address().port };
    seen.length = 0;
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) =>
        c.request(dest, Service.READ_PROPERTY, encodeReadProperty({ type: 0, instance: i }, { id: 85 })),
      ),
    );
    expect(
      results.every(
        (r) => r.status === "rejected" && (r.reason as { code: string }).code === "GW_ERR_BACNET_TIMEOUT",
      ),
    ).toBe(true);
    // 6 requests × 3 attempts, each attempt of one request with the same invoke id.
    expect(seen).toHaveLength(18);
    const byId = new Map<number, number>();
    for (const s of seen) byId.set(s.invokeId, (byId.get(s.invokeId) ?? 0) + 1);
    expect([...byId.values()].every((n) => n % 3 === 0)).toBe(true);
    // At most 3 in flight to this device: the 4th request is sent only after the first one gave up
    // (its third attempt), an ordering the causality of the limiter guarantees.
    const order = [...new Set(seen.map((s) => s.invokeId))];
    const firstId = order[0];
    const lastOfFirst = seen.map((s) => s.invokeId).lastIndexOf(firstId as number);
    const firstOfFourth = seen.findIndex((s) => s.invokeId === order[3]);
    expect(firstOfFourth).toBeGreaterThan(lastOfFirst);
    expect(c.stats()).toMatchObject({ timeouts: 6, retries: 12, inFlight: 0 });
  } finally {
    await c.stop();
  }
});

it("settles pending requests with GW_ERR_BACNET_STOPPED when stopped", async () => {
  const c = client();
  await c.start();
  const dest = { ip: "127.0.0.1", port: silent.address().port };
  const pending = c.request(
    dest,
    Service.READ_PROPERTY,
    encodeReadProperty({ type: 0, instance: 1 }, { id: 85 }),
    { timeoutMs: 60_000 },
  );
  await new Promise((r) => setTimeout(r, 50));
  await c.stop();
  await expect(pending).rejects.toMatchObject({ code: "GW_ERR_BACNET_STOPPED" });
  await expect(c.request(dest, Service.READ_PROPERTY, Buffer.alloc(0))).rejects.toMatchObject({
    code: "GW_ERR_BACNET_STOPPED",
  });
});
