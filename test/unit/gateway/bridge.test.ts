// Bridge logic with fake timers: `{device}/state` throttling (first at once, then at most one per
// period with the latest values), availability changes, and readings routed to the buffer while
// the MQTT connection is down. The MQTT wrapper is replaced by a recorder here (pure bridge logic);
// the real wrapper is tested against real brokers in test/integration/gateway/.
import { EventEmitter } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createLogger } from "../../../common/logger.ts";
import { resolveConfig } from "../../../gateway/config.ts";
import { Bridge, expandPatterns } from "../../../gateway/mqtt/bridge.ts";
import { DiskBuffer } from "../../../gateway/mqtt/buffer.ts";
import type { GatewayMqtt } from "../../../gateway/mqtt/client.ts";
import { catalogue, FakeEngine } from "./fake-engine.ts";

class MqttRecorder extends EventEmitter {
  connected = true;
  bdSeq = 1;
  stats = { published: 0, failed: 0, skipped: 0 };
  sent: { topic: string; payload: unknown; retain: boolean }[] = [];
  async publish(topic: string, payload: unknown, o: { retain?: boolean } = {}): Promise<boolean> {
    if (!this.connected) return false;
    // The real wrapper serialises synchronously; snapshot likewise. Readings come serialised
    // already (the same text is journalled before it is published).
    const snapshot =
      typeof payload === "string" && payload !== "" ? JSON.parse(payload) : structuredClone(payload);
    this.sent.push({ topic, payload: snapshot, retain: o.retain ?? false });
    return true;
  }
  async publishAcked(topic: string, body: string): Promise<void> {
    this.sent.push({ topic, payload: JSON.parse(body), retain: false });
  }
  async clearRetained(topic: string): Promise<boolean> {
    return this.publish(topic, "", { retain: true });
  }
  async subscribe(): Promise<boolean> {
    return true;
  }
}

let dir: string;
let buffer: DiskBuffer;
beforeEach(() => {
  vi.useFakeTimers({ now: new Date("2026-11-27T08:00:00.000Z") });
  dir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-bridge-"));
  buffer = new DiskBuffer({
    dir,
    maxBytes: 1 << 20,
    maxAgeS: 3600,
    segmentBytes: 1 << 16,
    fsync: "never",
    fsyncIntervalMs: 1000,
  });
  buffer.open();
});
afterEach(() => {
  vi.useRealTimers();
  buffer.close();
  rmSync(dir, { recursive: true, force: true });
});

async function make(throttleMs = 1000, covBatchMs = 0, connect = true) {
  const engine = new FakeEngine();
  const mqtt = new MqttRecorder();
  const config = resolveConfig({
    gateway_id: "gw1",
    mqtt: { state_throttle_ms: throttleMs, cov_batch_ms: covBatchMs },
  });
  const bridge = new Bridge({
    engine,
    mqtt: mqtt as unknown as GatewayMqtt,
    buffer,
    config,
    log: createLogger("test"),
  });
  bridge.start(() => undefined);
  const c = catalogue(1001, 2);
  engine.manage(c);
  bridge.setCatalogue(c);
  if (connect) {
    mqtt.emit("online", 1);
    await vi.advanceTimersByTimeAsync(0);
  }
  mqtt.sent.length = 0;
  return { engine, mqtt, bridge };
}

const reading = (point: string, value: number, ts: string) => ({ point, value, ts });

describe("Bridge", () => {
  it("throttles {device}/state: first at once, then one per period with the latest values", async () => {
    const { engine, mqtt, bridge } = await make(1000);
    const states = () => mqtt.sent.filter((m) => m.topic === "1001/state").map((m) => m.payload);
    engine.emit("readings", 1001, [reading("analog_output_1", 1, "2026-11-27T08:00:00.000Z")], "poll");
    expect(states()).toEqual([{ timestamp: "2026-11-27T08:00:00.000Z", values: { analog_output_1: 1 } }]);
    await vi.advanceTimersByTimeAsync(200);
    engine.emit("readings", 1001, [reading("analog_output_1", 2, "2026-11-27T08:00:00.200Z")], "cov");
    await vi.advanceTimersByTimeAsync(300);
    engine.emit("readings", 1001, [reading("analog_output_2", 7, "2026-11-27T08:00:00.500Z")], "cov");
    expect(states()).toHaveLength(1);
    // Every readings message went out unthrottled.
    expect(mqtt.sent.filter((m) => m.topic === "1001/readings")).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(499);
    expect(states()).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(states()).toEqual([
      { timestamp: "2026-11-27T08:00:00.000Z", values: { analog_output_1: 1 } },
      { timestamp: "2026-11-27T08:00:01.000Z", values: { analog_output_1: 2, analog_output_2: 7 } },
    ]);
    // Quiet period: nothing more.
    await vi.advanceTimersByTimeAsync(5000);
    expect(states()).toHaveLength(2);
    await bridge.stop();
  });

  it("turns a COV burst into one readings message, flushed before the next poll cycle", async () => {
    const { engine, mqtt, bridge } = await make(0, 100);
    const readings = () => mqtt.sent.filter((m) => m.topic === "1001/readings").map((m) => m.payload);
    engine.emit("readings", 1001, [reading("analog_output_1", 1, "2026-11-27T08:00:00.000Z")], "cov");
    await vi.advanceTimersByTimeAsync(40);
    engine.emit("readings", 1001, [reading("analog_output_2", 2, "2026-11-27T08:00:00.040Z")], "cov");
    expect(readings()).toEqual([]);
    await vi.advanceTimersByTimeAsync(60);
    expect(readings()).toEqual([
      {
        device: 1001,
        source: "cov",
        readings: [
          reading("analog_output_1", 1, "2026-11-27T08:00:00.000Z"),
          reading("analog_output_2", 2, "2026-11-27T08:00:00.040Z"),
        ],
      },
    ]);
    engine.emit("readings", 1001, [reading("analog_output_1", 3, "2026-11-27T08:00:00.200Z")], "cov");
    engine.emit("readings", 1001, [reading("analog_output_2", 4, "2026-11-27T08:00:00.210Z")], "poll");
    expect(readings().slice(1)).toEqual([
      { device: 1001, source: "cov", readings: [reading("analog_output_1", 3, "2026-11-27T08:00:00.200Z")] },
      { device: 1001, source: "poll", readings: [reading("analog_output_2", 4, "2026-11-27T08:00:00.210Z")] },
    ]);
    await bridge.stop();
  });

  it("holds readings polled before the first connection and sends them live once connected", async () => {
    const { engine, mqtt, bridge } = await make(0, 0, false);
    engine.emit("readings", 1001, [reading("analog_output_1", 1, "2026-11-27T08:00:00.000Z")], "poll");
    expect(buffer.depth).toBe(0);
    mqtt.emit("online", 1);
    await vi.advanceTimersByTimeAsync(0);
    const sent = mqtt.sent.map((m) => m.topic);
    // Birth first, then the held readings, live (not historical).
    expect(sent.indexOf("1001/readings")).toBeGreaterThan(sent.indexOf("bridge/devices"));
    expect(mqtt.sent.find((m) => m.topic === "1001/readings")?.payload).toEqual({
      device: 1001,
      source: "poll",
      readings: [reading("analog_output_1", 1, "2026-11-27T08:00:00.000Z")],
    });
    await bridge.stop();
  });

  it("moves held readings to the buffer when the broker does not answer within the startup grace", async () => {
    const { engine, mqtt, bridge } = await make(0, 0, false);
    mqtt.connected = false;
    engine.emit("readings", 1001, [reading("analog_output_1", 1, "2026-11-27T08:00:00.000Z")], "poll");
    await vi.advanceTimersByTimeAsync(4999);
    expect(buffer.depth).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(buffer.depth).toBe(1);
    await bridge.stop();
  });

  it("publishes availability changes retained, with an event", async () => {
    const { engine, mqtt, bridge } = await make();
    engine.offline.add(1001);
    engine.emit("availability", 1001, "offline", "3 requests in a row timed out");
    await vi.advanceTimersByTimeAsync(0);
    expect(mqtt.sent.find((m) => m.topic === "1001/availability")).toEqual({
      topic: "1001/availability",
      payload: {
        state: "offline",
        timestamp: "2026-11-27T08:00:00.000Z",
        reason: "3 requests in a row timed out",
      },
      retain: true,
    });
    expect(mqtt.sent.find((m) => m.topic === "bridge/event")?.payload).toEqual({
      type: "device_offline",
      timestamp: "2026-11-27T08:00:00.000Z",
      data: { device: 1001, reason: "3 requests in a row timed out" },
    });
    // The inventory is coalesced: one message shortly after, not one per change.
    engine.emit("availability", 1001, "offline", "again");
    expect(mqtt.sent.filter((m) => m.topic === "bridge/devices")).toEqual([]);
    await vi.advanceTimersByTimeAsync(250);
    expect(mqtt.sent.filter((m) => m.topic === "bridge/devices").map((m) => m.payload)).toEqual([
      {
        timestamp: "2026-11-27T08:00:00.250Z",
        count: 1,
        online: 0,
        offline: 1,
        points: 2,
        device_instances: [1001],
      },
    ]);
    await bridge.stop();
  });

  it("sends readings to the buffer while disconnected and replays them historical, in order, on reconnect", async () => {
    const { engine, mqtt, bridge } = await make();
    mqtt.connected = false;
    for (let i = 0; i < 5; i++)
      engine.emit("readings", 1001, [reading("analog_output_1", i, `2026-11-27T08:00:0${i}.000Z`)], "poll");
    expect(buffer.depth).toBe(5);
    expect(mqtt.sent.filter((m) => m.topic === "1001/readings")).toEqual([]);
    mqtt.connected = true;
    bridge.kickDrain();
    // Arriving during the replay: queued behind the buffered ones.
    engine.emit("readings", 1001, [reading("analog_output_1", 5, "2026-11-27T08:00:05.000Z")], "poll");
    await bridge.drained();
    const got = mqtt.sent
      .filter((m) => m.topic === "1001/readings")
      .map((m) => m.payload as { historical?: boolean; readings: { value: number }[] });
    expect(got.map((g) => g.readings[0]!.value)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(got.every((g) => g.historical === true)).toBe(true);
    expect(buffer.depth).toBe(0);
    await bridge.stop();
  });
});

describe("point patterns", () => {
  const points = [
    { point: "analog_input_1", name: "Zone 1 Temp" },
    { point: "analog_input_2", name: "Spare AI" },
    { point: "binary_input_1", name: "spare DI" },
  ];
  it("keeps point-id globs, expands type: and name: against the catalogue", () => {
    expect(expandPatterns(["analog_value_*", "type:binary-input", "name:spare*"], points)).toEqual([
      "analog_value_*",
      "binary_input_*",
      "analog_input_2",
      "binary_input_1",
    ]);
  });
  it("a name pattern matching nothing selects nothing", () => {
    expect(expandPatterns(["name:Chiller*"], points)).toEqual(["__no_point_named_0"]);
  });
});
