import { appendFileSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type BufferOptions, DiskBuffer } from "../../../gateway/mqtt/buffer.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function make(overrides: Partial<BufferOptions> = {}, dir?: string) {
  const d = dir ?? mkdtempSync(path.join(os.tmpdir(), "bacmqtt-buf-"));
  if (!dir) dirs.push(d);
  const drops: { reason: string; records: number }[] = [];
  const buffer = new DiskBuffer({
    dir: d,
    maxBytes: 1024 * 1024,
    maxAgeS: 3600,
    segmentBytes: 64 * 1024,
    fsync: "never",
    fsyncIntervalMs: 1000,
    onDrop: (info) => drops.push(info),
    ...overrides,
  });
  buffer.open();
  return { buffer, dir: d, drops };
}

async function drainAll(buffer: DiskBuffer): Promise<{ topic: string; payload: unknown }[]> {
  const out: { topic: string; payload: unknown }[] = [];
  await buffer.drain(async (topic, body) => {
    out.push({ topic, payload: JSON.parse(body) });
  });
  return out;
}

const payloads = (records: { body: string }[]) => records.map((r) => JSON.parse(r.body) as { n: number });

describe("DiskBuffer", () => {
  it("replays records in the order they were appended and is empty afterwards", async () => {
    const { buffer } = make();
    for (let i = 0; i < 200; i++) buffer.append(`${1000 + (i % 3)}/readings`, JSON.stringify({ n: i }));
    expect(buffer.depth).toBe(200);
    const out = await drainAll(buffer);
    expect(out.map((r) => (r.payload as { n: number }).n)).toEqual([...Array(200).keys()]);
    expect(out[1]).toEqual({ topic: "1001/readings", payload: { n: 1 } });
    expect(buffer.depth).toBe(0);
    expect(buffer.bytes).toBe(0);
    buffer.close();
  });

  it("rotates segments and deletes them once delivered", async () => {
    const { buffer, dir } = make({ segmentBytes: 1024 });
    for (let i = 0; i < 100; i++) buffer.append("1/readings", JSON.stringify({ n: i, pad: "x".repeat(50) }));
    expect(readdirSync(dir).filter((f) => f.endsWith(".seg")).length).toBeGreaterThan(3);
    const out = await drainAll(buffer);
    expect(out).toHaveLength(100);
    expect(readdirSync(dir).filter((f) => f.endsWith(".seg"))).toHaveLength(1);
    buffer.close();
  });

  it("keeps what it had across a reopen (process killed without close)", () => {
    const first = make();
    for (let i = 0; i < 10; i++) first.buffer.append("1/readings", JSON.stringify({ n: i }));
    // No close(): as after SIGKILL. A second instance on the same folder sees every record.
    const second = make({}, first.dir);
    expect(second.buffer.depth).toBe(10);
    const read = second.buffer.read(100);
    expect(payloads(read).map((r) => r.n)).toEqual([...Array(10).keys()]);
    second.buffer.close();
  });

  it("resumes after the acknowledged records on reopen", async () => {
    const first = make();
    for (let i = 0; i < 10; i++) first.buffer.append("1/readings", JSON.stringify({ n: i }));
    let sent = 0;
    await first.buffer.drain(
      async () => {
        sent += 1;
        if (sent > 4) throw new Error("connection lost");
      },
      { window: 1 },
    );
    expect(first.buffer.depth).toBe(6);
    const second = make({}, first.dir);
    expect(second.buffer.depth).toBe(6);
    expect(payloads(second.buffer.read(100)).map((r) => r.n)).toEqual([4, 5, 6, 7, 8, 9]);
    second.buffer.close();
    first.buffer.close();
  });

  it("cuts a torn last record (crash mid-write) and keeps the complete ones", () => {
    const first = make();
    first.buffer.append("1/readings", JSON.stringify({ n: 1 }));
    first.buffer.append("1/readings", JSON.stringify({ n: 2 }));
    const seg = readdirSync(first.dir).find((f) => f.endsWith(".seg")) as string;
    appendFileSync(path.join(first.dir, seg), '1\t1/readings\t{"n":');
    const second = make({}, first.dir);
    expect(second.buffer.depth).toBe(2);
    second.buffer.append("1/readings", JSON.stringify({ n: 3 }));
    expect(payloads(second.buffer.read(10)).map((r) => r.n)).toEqual([1, 2, 3]);
    second.buffer.close();
  });

  it("drops the oldest segment only when the size limit is hit, and counts it", async () => {
    const { buffer, drops } = make({ segmentBytes: 1024, maxBytes: 4096 });
    for (let i = 0; i < 30; i++) buffer.append("1/readings", JSON.stringify({ n: i, pad: "x".repeat(60) }));
    expect(drops).toEqual([]);
    for (let i = 30; i < 100; i++) buffer.append("1/readings", JSON.stringify({ n: i, pad: "x".repeat(60) }));
    const dropped = drops.reduce((n, d) => n + d.records, 0);
    expect(dropped).toBeGreaterThan(0);
    expect(drops.every((d) => d.reason === "max_bytes")).toBe(true);
    expect(buffer.stats.dropped).toBe(dropped);
    expect(buffer.bytes).toBeLessThanOrEqual(4096);
    const out = await drainAll(buffer);
    // What is left is the newest part, still in order and contiguous.
    const ns = out.map((r) => (r.payload as { n: number }).n);
    expect(ns).toEqual([...Array(ns.length).keys()].map((i) => 100 - ns.length + i));
    expect(ns.length + dropped).toBe(100);
    buffer.close();
  });

  it("skips and counts records older than the age limit", async () => {
    let now = 1_000_000;
    const { buffer, drops } = make({ maxAgeS: 60, now: () => now });
    buffer.append("1/readings", JSON.stringify({ n: 1 }));
    now += 61_000;
    buffer.append("1/readings", JSON.stringify({ n: 2 }));
    const out = await drainAll(buffer);
    expect(out).toEqual([{ topic: "1/readings", payload: { n: 2 } }]);
    expect(drops).toEqual([{ reason: "max_age", records: 1 }]);
    buffer.close();
  });

  it("with fsync always, every append is synced (smoke: still readable)", () => {
    const { buffer, dir } = make({ fsync: "always" });
    buffer.append("1/readings", JSON.stringify({ n: 1 }));
    const again = make({}, dir);
    expect(again.buffer.depth).toBe(1);
    again.buffer.close();
    buffer.close();
  });
});
