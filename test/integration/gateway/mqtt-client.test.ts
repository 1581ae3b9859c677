// The gateway's MQTT wrapper against real brokers: our broker (port 0) and Mosquitto on
// 127.0.0.1:1883. Birth state, bd_seq on disk, LWT after an unclean drop, clean stop, retained
// bookkeeping, clearing.
import { readFileSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { createLogger } from "../../../common/logger.ts";
import { Topics } from "../../../contract/index.ts";
import { GatewayMqtt } from "../../../gateway/mqtt/client.ts";
import {
  MOSQUITTO_URL,
  mosquittoAvailable,
  Recorder,
  retainedUnder,
  startAedes,
  startTestBroker,
  type TestBroker,
  tempDir,
  uniqueBase,
} from "./helpers.ts";

const log = createLogger("test");
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function wrapper(url: string, base: string, dataDir: string, gw = "gw1"): GatewayMqtt {
  const m = new GatewayMqtt({
    url,
    topics: new Topics(base, gw),
    dataDir,
    clientId: `gw-${base}`,
    reconnectPeriodMs: 100,
    connectTimeoutMs: 3000,
    log,
  });
  return m;
}

function online(m: GatewayMqtt): Promise<number> {
  return new Promise((resolve) => m.once("online", resolve));
}

const brokers: Array<[string, () => Promise<{ url: string; close?: () => Promise<void> }>]> = [
  ["our broker", async () => startTestBroker()],
];
if (await mosquittoAvailable()) brokers.push(["mosquitto", async () => ({ url: MOSQUITTO_URL })]);

describe.each(brokers)("GatewayMqtt against %s", (_name, makeBroker) => {
  it("publishes retained online state with bd_seq from disk, and offline before a clean stop", async () => {
    const broker = await makeBroker();
    if (broker.close) cleanups.push(() => broker.close?.());
    const base = uniqueBase("wrap");
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    const rec = await Recorder.connect(broker.url, `${base}/#`);
    cleanups.push(() => rec.close());

    const first = wrapper(broker.url, base, tmp.dir);
    const up = online(first);
    first.start();
    expect(await up).toBe(1);
    await first.stop();
    const second = wrapper(broker.url, base, tmp.dir);
    const up2 = online(second);
    second.start();
    expect(await up2).toBe(2);
    expect(readFileSync(path.join(tmp.dir, "bd_seq"), "utf8").trim()).toBe("2");
    await rec.waitFor((m) => m.length >= 3, "3 state messages");
    const states = rec.json(`${base}/gw1/bridge/state`) as { state: string; bd_seq: number }[];
    expect(states.map((s) => [s.state, s.bd_seq])).toEqual([
      ["online", 1],
      ["offline", 1],
      ["online", 2],
    ]);
    const retained = await retainedUnder(broker.url, `${base}/#`);
    expect(JSON.parse(retained.get(`${base}/gw1/bridge/state`) as string)).toMatchObject({
      state: "online",
      bd_seq: 2,
    });
    await second.stop();
    const after = await retainedUnder(broker.url, `${base}/#`);
    expect(JSON.parse(after.get(`${base}/gw1/bridge/state`) as string)).toMatchObject({
      state: "offline",
      bd_seq: 2,
    });
    await first.stop();
  });

  it("tracks retained topics, clears them with empty payloads, and never throws when offline", async () => {
    const broker = await makeBroker();
    if (broker.close) cleanups.push(() => broker.close?.());
    const base = uniqueBase("ret");
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    const m = wrapper(broker.url, base, tmp.dir);
    expect(await m.publish("1001/meta", { a: 1 }, { retain: true })).toBe(false);
    const up = online(m);
    m.start();
    await up;
    cleanups.push(() => m.stop());
    expect(await m.publish("1001/meta", { a: 1 }, { retain: true, qos: 1 })).toBe(true);
    expect(await m.publish("1001/availability", { state: "online" }, { retain: true })).toBe(true);
    expect([...m.retainedTopics()].sort()).toEqual(["1001/availability", "1001/meta", "bridge/state"]);
    const before = await retainedUnder(broker.url, `${base}/gw1/1001/#`);
    expect(before.get(`${base}/gw1/1001/meta`)).toBe('{"a":1}');
    expect(await m.clearRetained("1001/meta")).toBe(true);
    expect([...m.retainedTopics()].sort()).toEqual(["1001/availability", "bridge/state"]);
    const after = await retainedUnder(broker.url, `${base}/gw1/1001/#`);
    expect(after.has(`${base}/gw1/1001/meta`)).toBe(false);
    expect(after.get(`${base}/gw1/1001/availability`)).toBe('{"state":"online"}');
    await m.clearRetained("1001/availability");
    // A circular payload cannot be serialised: reported as false, not thrown.
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    expect(await m.publish("bridge/event", circular)).toBe(false);
    expect(m.stats.failed).toBe(1);
  });
});

describe("GatewayMqtt Last Will", () => {
  let broker: TestBroker | undefined;
  it("the broker publishes the retained offline state when the connection dies; the next connection has bd_seq+1", async () => {
    broker = await startAedes();
    const b = broker;
    cleanups.push(() => b.close());
    const base = uniqueBase("lwt");
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    const rec = await Recorder.connect(b.url, `${base}/#`);
    cleanups.push(() => rec.close());
    const m = wrapper(b.url, base, tmp.dir);
    const up = online(m);
    m.start();
    expect(await up).toBe(1);
    cleanups.push(() => m.stop());
    // Kill the gateway's TCP connection from outside, as a crash or network cut would.
    const client = (m as unknown as { client: { stream: { destroy(): void } } }).client;
    const again = online(m);
    client.stream.destroy();
    expect(await again).toBe(2);
    await rec.waitFor(
      (msgs) => msgs.filter((x) => x.topic.endsWith("bridge/state")).length >= 3,
      "will + rebirth",
    );
    const states = rec.json(`${base}/gw1/bridge/state`) as { state: string; bd_seq: number }[];
    expect(states.map((s) => [s.state, s.bd_seq])).toEqual([
      ["online", 1],
      ["offline", 1],
      ["online", 2],
    ]);
  });
});
