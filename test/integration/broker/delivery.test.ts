// Message delivery through the broker with real clients: retained messages, last will on an abrupt
// disconnect, a persistent session's QoS 1 queue while the subscriber is offline, and a burst
// delivered whole and in order in few socket writes.
import type { Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningBroker, startBroker } from "../../../broker/index.ts";
import { Topics } from "../../../contract/index.ts";
import { closed, connect, connectRecording, record, subscribe, uniqueId, waitFor } from "./helpers.ts";

let broker: RunningBroker;
const topics = new Topics("bacmqtt", uniqueId("gw"));

beforeAll(async () => {
  broker = await startBroker({ port: 0, allowAnonymous: true, sysInterval: 0 });
});

afterAll(async () => {
  await broker?.close();
});

describe("delivery", () => {
  it("delivers a retained message to a later subscriber, and clears it with an empty payload", async () => {
    const pub = await connect(broker.url);
    await pub.publishAsync(topics.bridge("state"), '{"state":"online"}', { qos: 1, retain: true });
    const late = await connect(broker.url);
    const got = record(late);
    await subscribe(late, topics.bridge("state"));
    await waitFor("retained state", () => got.length === 1);
    expect(got[0]).toMatchObject({
      topic: topics.bridge("state"),
      payload: '{"state":"online"}',
      retain: true,
    });

    await pub.publishAsync(topics.bridge("state"), "", { qos: 1, retain: true });
    const later = await connect(broker.url);
    const none = record(later);
    await subscribe(later, topics.bridge("state"));
    await pub.publishAsync(topics.bridge("event"), "after", { qos: 1 });
    await subscribe(later, topics.bridge("event"));
    await pub.publishAsync(topics.bridge("event"), "marker", { qos: 1 });
    await waitFor("marker", () => none.some((m) => m.payload === "marker"));
    expect(none.filter((m) => m.topic === topics.bridge("state"))).toEqual([]);
    await Promise.all([pub.endAsync(), late.endAsync(), later.endAsync()]);
  });

  it("publishes the last will when a client drops without DISCONNECT, not on a clean one", async () => {
    const watcher = await connect(broker.url);
    const got = record(watcher);
    await subscribe(watcher, topics.bridge("state"));
    const will = {
      topic: topics.bridge("state"),
      payload: Buffer.from('{"state":"offline"}'),
      qos: 1 as const,
      retain: true,
    };

    const polite = await connect(broker.url, { will });
    await polite.endAsync();
    const abrupt = await connect(broker.url, { will });
    const gone = closed(abrupt);
    (abrupt.stream as unknown as { destroy(): void }).destroy();
    await gone;
    await waitFor("will", () => got.some((m) => m.payload === '{"state":"offline"}'));
    expect(got.filter((m) => m.payload === '{"state":"offline"}')).toHaveLength(1);

    // Retained, so a dashboard connecting later still sees the gateway as offline.
    const late = await connect(broker.url);
    const lateGot = record(late);
    await subscribe(late, topics.bridge("state"));
    await waitFor("retained will", () => lateGot.length === 1);
    expect(lateGot[0]).toMatchObject({ payload: '{"state":"offline"}', retain: true });
    await Promise.all([watcher.endAsync(), late.endAsync()]);
    abrupt.end(true);
  });

  it("queues QoS 1 messages for an offline persistent session and delivers them in order on return", async () => {
    const clientId = uniqueId("ingest");
    const filter = topics.device(7, "readings");
    const first = await connect(broker.url, { clientId, clean: false });
    await subscribe(first, filter, 1);
    await first.endAsync();

    const pub = await connect(broker.url);
    for (let i = 0; i < 20; i++) await pub.publishAsync(filter, `r${i}`, { qos: 1 });
    await pub.publishAsync(filter, "qos0-dropped", { qos: 0 });
    await pub.endAsync();

    const { client: back, messages: got } = await connectRecording(broker.url, { clientId, clean: false });
    await waitFor("queued readings", () => got.length >= 20);
    expect(got.map((m) => m.payload)).toEqual(Array.from({ length: 20 }, (_, i) => `r${i}`));
    expect(got.every((m) => m.qos === 1)).toBe(true);
    await back.endAsync();
  });

  it("delivers a QoS 0 burst whole and in order, in far fewer socket writes than messages", async () => {
    // aedes writes each delivery from its own setImmediate; the broker coalesces one event-loop
    // turn's writes per connection. Flushed per message, a subscriber cost one system call each.
    const count = 2000;
    const clientId = uniqueId("burst");
    const filter = topics.device(9, "readings");
    const { client: sub, messages: got } = await connectRecording(broker.url, { clientId });
    await subscribe(sub, filter, 0);
    const clients = (broker.aedes as unknown as { clients: Record<string, { conn: Socket }> }).clients;
    const conn = (clients[clientId] as { conn: Socket }).conn;
    let writes = 0;
    for (const method of ["_write", "_writev"] as const) {
      const original = conn[method] as (...args: unknown[]) => void;
      conn[method] = function (this: Socket, ...args: unknown[]) {
        writes++;
        original.apply(this, args);
      } as never;
    }
    const pub = await connect(broker.url);
    for (let i = 0; i < count; i++) pub.publish(filter, `m${i}`, { qos: 0 });
    await waitFor(`${count} messages`, () => got.length >= count);
    expect(got.map((m) => m.payload)).toEqual(Array.from({ length: count }, (_, i) => `m${i}`));
    expect(writes).toBeGreaterThan(0);
    expect(writes).toBeLessThan(count / 10);
    await Promise.all([pub.endAsync(), sub.endAsync()]);
  });
});
