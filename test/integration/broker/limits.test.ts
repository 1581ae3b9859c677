// Abuse limits with real clients: packet size, topic depth and the per-client rate limit. A refused
// publish closes the connection (MQTT 3.1.1 has no way to refuse one otherwise); a refused
// subscription gets SUBACK 0x80.
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningBroker, startBroker } from "../../../broker/index.ts";
import { closed, connect, record, subscribe, uniqueId, waitFor } from "./helpers.ts";

const RATE = 20;
const BURST = 10;
let broker: RunningBroker;

beforeAll(async () => {
  broker = await startBroker({
    port: 0,
    wsPort: 0,
    allowAnonymous: true,
    sysInterval: 0,
    limits: { maxPacketSize: 1024, maxTopicDepth: 6, messagesPerSecond: RATE, burst: BURST },
  });
});

afterAll(async () => {
  await broker?.close();
});

async function watcher(filter: string) {
  const client = await connect(broker.url);
  const messages = record(client);
  await subscribe(client, filter);
  return { client, messages };
}

describe("packet size", () => {
  it("passes a packet under the limit and cuts a client that sends one over it", async () => {
    const topic = `${uniqueId("size")}/x`;
    const w = await watcher(topic);
    const pub = await connect(broker.url);
    await pub.publishAsync(topic, "a".repeat(900), { qos: 1 });
    const gone = closed(pub);
    pub.publish(topic, "b".repeat(2000), { qos: 0 });
    await gone;
    await w.client.publishAsync(topic, "marker", { qos: 1 });
    await waitFor("marker", () => w.messages.some((m) => m.payload === "marker"));
    expect(w.messages.map((m) => m.payload.slice(0, 1))).toEqual(["a", "m"]);
    await w.client.endAsync();
  });

  it("cuts the connection as soon as the length header announces too much, before the payload", async () => {
    const socket = net.connect(broker.tcpPort, "127.0.0.1");
    socket.on("error", () => undefined);
    await new Promise((resolve) => socket.once("connect", resolve));
    // A CONNECT header claiming 100 MB; no payload follows.
    socket.write(Buffer.from([0x10, 0x80, 0x80, 0x80, 0x30]));
    await new Promise((resolve) => socket.once("close", resolve));
    expect(socket.destroyed).toBe(true);
  });

  it("applies the same limit over WebSocket", async () => {
    const topic = `${uniqueId("wssize")}/x`;
    const w = await watcher(topic);
    const pub = await connect(`ws://127.0.0.1:${broker.wsPort}`);
    const gone = closed(pub);
    pub.publish(topic, "c".repeat(5000), { qos: 0 });
    await gone;
    await w.client.publishAsync(topic, "marker", { qos: 1 });
    await waitFor("marker", () => w.messages.some((m) => m.payload === "marker"));
    expect(w.messages.map((m) => m.payload)).toEqual(["marker"]);
    await w.client.endAsync();
  });
});

describe("topic depth", () => {
  it("refuses a too-deep subscription with SUBACK 0x80 and keeps the client", async () => {
    const client = await connect(broker.url);
    expect(await subscribe(client, "a/b/c/d/e/f")).toBe(1);
    expect(await subscribe(client, "a/b/c/d/e/f/g")).toBe(128);
    expect(client.connected).toBe(true);
    await client.endAsync();
  });

  it("cuts a client that publishes to a too-deep topic", async () => {
    const root = uniqueId("deep");
    const w = await watcher(`${root}/#`);
    const pub = await connect(broker.url);
    await pub.publishAsync(`${root}/2/3/4/5/6`, "ok", { qos: 1 });
    const gone = closed(pub);
    pub.publish(`${root}/2/3/4/5/6/7`, "too deep", { qos: 0 });
    await gone;
    await w.client.publishAsync(`${root}/m`, "marker", { qos: 1 });
    await waitFor("marker", () => w.messages.some((m) => m.payload === "marker"));
    expect(w.messages.map((m) => m.payload)).toEqual(["ok", "marker"]);
    await w.client.endAsync();
  });
});

describe("rate limit", () => {
  it("slows a burst above the rate down without losing or reordering anything", async () => {
    const topic = `${uniqueId("rate")}/x`;
    const w = await watcher(topic);
    const pub = await connect(broker.url);
    const count = 2 * BURST;
    const started = performance.now();
    await Promise.all(Array.from({ length: count }, (_, i) => pub.publishAsync(topic, `p${i}`, { qos: 1 })));
    await waitFor("burst", () => w.messages.length >= count);
    const elapsed = performance.now() - started;
    expect(w.messages.map((m) => m.payload)).toEqual(Array.from({ length: count }, (_, i) => `p${i}`));
    expect(pub.connected).toBe(true);
    // BURST messages pass at once; the next BURST cannot all pass before BURST/RATE seconds.
    expect(elapsed).toBeGreaterThanOrEqual(((BURST - 1) * 1000) / RATE);
    await Promise.all([pub.endAsync(), w.client.endAsync()]);
  });

  it("holds a client that keeps publishing above the rate to the rate, without cutting it", async () => {
    const topic = `${uniqueId("steady")}/x`;
    const w = await watcher(topic);
    const pub = await connect(broker.url);
    const count = 3 * RATE;
    const started = performance.now();
    // Windows of 5 unacknowledged publishes, as a gateway replaying its buffer would send them.
    for (let i = 0; i < count; i += 5)
      await Promise.all(
        Array.from({ length: 5 }, (_, k) => pub.publishAsync(topic, `s${i + k}`, { qos: 1 })),
      );
    await waitFor("all messages", () => w.messages.length >= count);
    const elapsed = performance.now() - started;
    expect(w.messages.map((m) => m.payload)).toEqual(Array.from({ length: count }, (_, i) => `s${i}`));
    expect(pub.connected).toBe(true);
    expect(elapsed).toBeGreaterThanOrEqual(((count - BURST - 1) * 1000) / RATE);
    await Promise.all([pub.endAsync(), w.client.endAsync()]);
  });

  it("cuts a client that floods far past the rate", async () => {
    const topic = `${uniqueId("flood")}/x`;
    const w = await watcher(topic);
    const pub = await connect(broker.url);
    const gone = closed(pub);
    for (let i = 0; i < 20 * BURST; i++) pub.publish(topic, `f${i}`, { qos: 0 });
    await gone;
    // At most the burst, the held-back allowance and what refilled while the flood arrived.
    expect(w.messages.length).toBeLessThan(4 * BURST);
    const text = await broker.stats.registry.getSingleMetricAsString("bacmqtt_broker_refusals_total");
    expect(text).toMatch(/kind="publish",reason="rate_limit"} [1-9]/);
    await w.client.endAsync();
  });
});
