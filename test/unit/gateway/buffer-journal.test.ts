// The buffer as a write-ahead journal for live readings: a live message is on disk before it is
// published, done once the broker acknowledged it, and replayed by the next process when the
// process died first (a second DiskBuffer on the same folder without close() is what the next
// process sees after SIGKILL). Also the bridge using it: the journal holds a readings message while
// its publish waits for the PUBACK.
import { EventEmitter } from "node:events";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { createLogger } from "../../../common/logger.ts";
import { resolveConfig } from "../../../gateway/config.ts";
import { Bridge } from "../../../gateway/mqtt/bridge.ts";
import { type BufferOptions, DiskBuffer } from "../../../gateway/mqtt/buffer.ts";
import type { GatewayMqtt } from "../../../gateway/mqtt/client.ts";
import { catalogue, FakeEngine } from "./fake-engine.ts";

const dirs: string[] = [];
const open: DiskBuffer[] = [];
afterEach(() => {
  for (const b of open.splice(0)) b.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function make(overrides: Partial<BufferOptions> = {}, dir?: string): { buffer: DiskBuffer; dir: string } {
  const d = dir ?? mkdtempSync(path.join(os.tmpdir(), "bacmqtt-journal-"));
  if (!dir) dirs.push(d);
  const buffer = new DiskBuffer({
    dir: d,
    maxBytes: 1024 * 1024,
    maxAgeS: 3600,
    segmentBytes: 64 * 1024,
    fsync: "never",
    fsyncIntervalMs: 1000,
    ...overrides,
  });
  buffer.open();
  open.push(buffer);
  return { buffer, dir: d };
}

const ns = (records: { body: string }[]) => records.map((r) => (JSON.parse(r.body) as { n: number }).n);
const body = (n: number, pad = 0) => JSON.stringify({ n, ...(pad > 0 ? { pad: "x".repeat(pad) } : {}) });

describe("DiskBuffer live journal", () => {
  it("keeps an unacknowledged live record for the next process, not counted as waiting meanwhile", () => {
    const first = make();
    first.buffer.appendLive("1/readings", body(1));
    expect(first.buffer.depth).toBe(0);
    expect(first.buffer.inflight).toBe(1);
    // The process dies before the PUBACK: the next one finds the record waiting.
    const next = make({}, first.dir);
    expect(next.buffer.depth).toBe(1);
    expect(ns(next.buffer.read(10))).toEqual([1]);
  });

  it("is done with a record once acknowledged: a clean reopen has nothing to replay", () => {
    const first = make();
    const recs = [1, 2, 3].map((n) => first.buffer.appendLive("1/readings", body(n)));
    for (const r of recs) first.buffer.settleLive(r, true);
    expect(first.buffer.inflight).toBe(0);
    expect(first.buffer.bytes).toBe(0);
    first.buffer.close();
    expect(make({}, first.dir).buffer.depth).toBe(0);
  });

  it("after a crash replays at least every record not acknowledged, in order", () => {
    const first = make();
    const recs = Array.from({ length: 10 }, (_, n) => first.buffer.appendLive("1/readings", body(n)));
    for (const r of recs.slice(0, 7)) first.buffer.settleLive(r, true);
    // No close(): acknowledged ones may come again (the cursor is saved in batches), unacknowledged must.
    const next = make({}, first.dir);
    const replayed = ns(next.buffer.read(100));
    expect(replayed.slice(-3)).toEqual([7, 8, 9]);
    expect(replayed).toEqual([...Array(replayed.length).keys()].map((i) => 10 - replayed.length + i));
  });

  it("moves the cursor over an acknowledged prefix only (a PUBACK out of order waits)", () => {
    const { buffer } = make();
    const a = buffer.appendLive("1/readings", body(1));
    const b = buffer.appendLive("1/readings", body(2));
    const bytes = buffer.bytes;
    buffer.settleLive(b, true);
    expect(buffer.bytes).toBe(bytes);
    buffer.settleLive(a, true);
    expect(buffer.bytes).toBe(0);
    expect(buffer.depth).toBe(0);
  });

  it("a failed live record waits for the replay in its place, before what was buffered after it", async () => {
    const { buffer } = make();
    const a = buffer.appendLive("1/readings", body(1));
    buffer.append("1/readings", body(2));
    expect(buffer.depth).toBe(1);
    buffer.settleLive(a, false);
    expect(buffer.depth).toBe(2);
    const out: number[] = [];
    await buffer.drain(async (_t, text) => {
      out.push((JSON.parse(text) as { n: number }).n);
    });
    expect(out).toEqual([1, 2]);
    expect(buffer.depth).toBe(0);
  });

  it("the replay waits until the live records in flight are settled", async () => {
    const { buffer } = make();
    const a = buffer.appendLive("1/readings", body(1));
    buffer.append("1/readings", body(2));
    const out: number[] = [];
    const drained = buffer.drain(async (_t, text) => {
      out.push((JSON.parse(text) as { n: number }).n);
    });
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(out).toEqual([]);
    buffer.settleLive(a, true);
    await drained;
    expect(out).toEqual([2]);
    expect(buffer.depth).toBe(0);
  });

  it("live traffic rotates segments and deletes the acknowledged ones", () => {
    const { buffer, dir } = make({ segmentBytes: 1024 });
    for (let n = 0; n < 100; n++) buffer.settleLive(buffer.appendLive("1/readings", body(n, 50)), true);
    expect(readdirSync(dir).filter((f) => f.endsWith(".seg"))).toHaveLength(1);
    expect(buffer.bytes).toBe(0);
    expect(buffer.stats.live).toBe(100);
  });
});

class HeldMqtt extends EventEmitter {
  connected = true;
  bdSeq = 1;
  stats = { published: 0, failed: 0, skipped: 0 };
  /** Readings publishes waiting for the broker's answer (the test settles them). */
  held: { body: string; answer: (ok: boolean) => void }[] = [];
  replayed: string[] = [];
  async publish(topic: string, payload: unknown): Promise<boolean> {
    if (!this.connected) return false;
    if (!topic.endsWith("/readings")) return true;
    return new Promise((resolve) => this.held.push({ body: payload as string, answer: resolve }));
  }
  async publishAcked(_topic: string, text: string): Promise<void> {
    this.replayed.push(text);
  }
  async clearRetained(): Promise<boolean> {
    return true;
  }
  async subscribe(): Promise<boolean> {
    return true;
  }
}

async function bridgeOn(buffer: DiskBuffer, writeAhead = true, online = true) {
  const engine = new FakeEngine();
  const mqtt = new HeldMqtt();
  const bridge = new Bridge({
    engine,
    mqtt: mqtt as unknown as GatewayMqtt,
    buffer,
    config: resolveConfig({ gateway_id: "gw1", buffer: { write_ahead: writeAhead } }),
    log: createLogger("test"),
  });
  bridge.start(() => undefined);
  const c = catalogue(1001, 2);
  engine.manage(c);
  bridge.setCatalogue(c);
  if (online) mqtt.emit("online", 1);
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return { engine, mqtt, bridge };
}

const reading = (value: number) => ({ point: "analog_output_1", value, ts: "2026-11-27T08:00:00.000Z" });

describe("Bridge write-ahead", () => {
  it("journals a live readings message before its publish and marks it done on the PUBACK", async () => {
    const { buffer, dir } = make();
    const { engine, mqtt, bridge } = await bridgeOn(buffer);
    engine.emit("readings", 1001, [reading(1)], "poll");
    expect(mqtt.held).toHaveLength(1);
    // Killed now, before the broker answered: the next process finds the message as published.
    const next = make({}, dir).buffer;
    expect(next.read(10).map((r) => r.body)).toEqual([mqtt.held[0]?.body]);
    (mqtt.held[0] as HeldMqtt["held"][number]).answer(true);
    await new Promise((r) => setImmediate(r));
    expect(buffer.inflight).toBe(0);
    expect(buffer.bytes).toBe(0);
    await bridge.stop();
  });

  it("replays a live message the broker did not take, marked historical, before newer ones", async () => {
    const { buffer } = make();
    const { engine, mqtt, bridge } = await bridgeOn(buffer);
    engine.emit("readings", 1001, [reading(1)], "poll");
    mqtt.connected = false;
    (mqtt.held[0] as HeldMqtt["held"][number]).answer(false);
    await new Promise((r) => setImmediate(r));
    engine.emit("readings", 1001, [reading(2)], "poll");
    expect(buffer.depth).toBe(2);
    mqtt.connected = true;
    bridge.kickDrain();
    await bridge.drained();
    const replayed = mqtt.replayed.map(
      (t) => JSON.parse(t) as { historical?: boolean; readings: { value: number }[] },
    );
    expect(replayed.map((p) => p.readings[0]?.value)).toEqual([1, 2]);
    expect(replayed.every((p) => p.historical === true)).toBe(true);
    expect(buffer.depth).toBe(0);
    await bridge.stop();
  });

  it("with write_ahead false journals nothing live and buffers a failed publish at the end", async () => {
    const { buffer, dir } = make();
    const { engine, mqtt, bridge } = await bridgeOn(buffer, false);
    engine.emit("readings", 1001, [reading(1)], "poll");
    expect(mqtt.held).toHaveLength(1);
    expect(make({}, dir).buffer.depth).toBe(0);
    mqtt.connected = false;
    (mqtt.held[0] as HeldMqtt["held"][number]).answer(false);
    await new Promise((r) => setImmediate(r));
    expect(buffer.depth).toBe(1);
    expect(buffer.stats.live).toBe(0);
    await bridge.stop();
  });

  it("journals readings held at start-up (before the first connection) and publishes them live", async () => {
    const { buffer, dir } = make();
    const { engine, mqtt, bridge } = await bridgeOn(buffer, true, false);
    engine.emit("readings", 1001, [reading(1)], "poll");
    expect(mqtt.held).toHaveLength(0);
    // A crash during the hold: the next process finds the message.
    expect(make({}, dir).buffer.depth).toBe(1);
    mqtt.emit("online", 1);
    for (let i = 0; i < 5 && mqtt.held.length === 0; i++) await new Promise((r) => setImmediate(r));
    expect(mqtt.held).toHaveLength(1);
    expect(buffer.depth).toBe(0);
    (mqtt.held[0] as HeldMqtt["held"][number]).answer(true);
    await new Promise((r) => setImmediate(r));
    expect(buffer.bytes).toBe(0);
    await bridge.stop();
  });
});
