// `{device}/state` throttling across wall-clock steps (NTP step, manual change): the throttle runs on
// the monotonic clock, so a step backwards does not hold `state` back for the size of the step, and
// a step forwards does not release it early. Fake timers: `vi.setSystemTime` moves `Date` only, as
// a real step does; timers and `performance.now()` keep their pace.
import { EventEmitter } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, expect, it, vi } from "vitest";
import { createLogger } from "../../../common/logger.ts";
import { resolveConfig } from "../../../gateway/config.ts";
import { Bridge } from "../../../gateway/mqtt/bridge.ts";
import { DiskBuffer } from "../../../gateway/mqtt/buffer.ts";
import type { GatewayMqtt } from "../../../gateway/mqtt/client.ts";
import { catalogue, FakeEngine } from "./fake-engine.ts";

class MqttRecorder extends EventEmitter {
  connected = true;
  bdSeq = 1;
  stats = { published: 0, failed: 0, skipped: 0 };
  sent: { topic: string; payload: unknown }[] = [];
  async publish(topic: string, payload: unknown): Promise<boolean> {
    this.sent.push({ topic, payload: structuredClone(payload) });
    return true;
  }
  async publishAcked(topic: string, body: string): Promise<void> {
    this.sent.push({ topic, payload: JSON.parse(body) });
  }
  async subscribe(): Promise<boolean> {
    return true;
  }
}

const T0 = new Date("2026-11-27T08:00:00.000Z").getTime();
let dir: string;
let buffer: DiskBuffer;
beforeEach(() => {
  vi.useFakeTimers({ now: T0 });
  dir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-clock-"));
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

async function make() {
  const engine = new FakeEngine();
  const mqtt = new MqttRecorder();
  const config = resolveConfig({ gateway_id: "gw1", mqtt: { state_throttle_ms: 1000, cov_batch_ms: 0 } });
  const bridge = new Bridge({
    engine,
    mqtt: mqtt as unknown as GatewayMqtt,
    buffer,
    config,
    log: createLogger("test"),
  });
  bridge.start(() => undefined);
  const c = catalogue(1001, 1);
  engine.manage(c);
  bridge.setCatalogue(c);
  mqtt.emit("online", 1);
  await vi.advanceTimersByTimeAsync(0);
  mqtt.sent.length = 0;
  const states = () =>
    mqtt.sent
      .filter((m) => m.topic === "1001/state")
      .map((m) => (m.payload as { timestamp: string }).timestamp);
  /** One poll a second for `n` seconds. */
  const poll = async (n: number) => {
    for (let i = 0; i < n; i++) {
      engine.emit(
        "readings",
        1001,
        [{ point: "analog_output_1", value: i, ts: new Date().toISOString() }],
        "poll",
      );
      await vi.advanceTimersByTimeAsync(1000);
    }
  };
  return { bridge, states, poll };
}

it("keeps publishing state once a second when the wall clock steps back by an hour", async () => {
  const { bridge, states, poll } = await make();
  await poll(3);
  expect(states()).toHaveLength(3);
  vi.setSystemTime(Date.now() - 3_600_000);
  await poll(5);
  // One per reading, carrying the stepped wall-clock time (not held back for an hour).
  expect(states()).toHaveLength(8);
  expect(states().at(-1)).toBe("2026-11-27T07:00:07.000Z");
  vi.setSystemTime(Date.now() + 3_600_000);
  await poll(3);
  expect(states()).toHaveLength(11);
  await bridge.stop();
});

it("still throttles when the wall clock steps forwards by an hour", async () => {
  const { bridge, states } = await make();
  const read = (value: number) =>
    bridge.onReadings(1001, [{ point: "analog_output_1", value, ts: new Date().toISOString() }], "poll");
  read(0);
  expect(states()).toHaveLength(1);
  await vi.advanceTimersByTimeAsync(100);
  vi.setSystemTime(Date.now() + 3_600_000);
  // Ten readings within 100 ms of the step: the period that began 100 ms ago is still running.
  for (let i = 1; i <= 10; i++) {
    read(i);
    await vi.advanceTimersByTimeAsync(10);
  }
  expect(states()).toHaveLength(1);
  await vi.advanceTimersByTimeAsync(1000);
  expect(states()).toEqual(["2026-11-27T08:00:00.000Z", "2026-11-27T09:00:01.000Z"]);
  await bridge.stop();
});
