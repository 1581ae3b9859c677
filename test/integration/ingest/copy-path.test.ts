// The writer's COPY fast path against the real PostgreSQL: new rows go by COPY with rollups folded in
// memory; a batch meeting stored rows (a replay) or holding a duplicate falls back to INSERT … ON
// CONFLICT, and the rows and rollups end exactly as the INSERT path alone would leave them.
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../../common/logger.ts";
import { Topics } from "../../../contract/index.ts";
import { classify } from "../../../ingest/messages.ts";
import { migrate } from "../../../ingest/migrate.ts";
import { BatchWriter, COPY_COOLDOWN_BATCHES, type Envelope } from "../../../ingest/writer.ts";
import { createPostgresDatabase, type TestDatabase } from "../../support/db-postgres.ts";
import { aggregates, rawAggregateSql } from "./helpers.ts";

const log = createLogger("test");
const START = Date.UTC(2026, 2, 1, 10, 59, 0);

interface Reading {
  point: string;
  value: unknown;
  ts: string;
  quality?: "good" | "uncertain" | "bad";
  status_flags?: { in_alarm: boolean; fault: boolean; overridden: boolean; out_of_service: boolean };
}

function envelope(device: number, readings: Reading[], historical = false): Envelope {
  const topic = new Topics("bacmqtt", "gw-copy").device(device, "readings");
  const payload = Buffer.from(JSON.stringify({ device, source: "poll", historical, readings }));
  const op = classify(topic, payload, "bacmqtt");
  if (op.kind !== "readings") throw new Error(`not a readings message: ${JSON.stringify(op)}`);
  return { topic, payload, op, receivedAt: new Date() };
}

/** points × cycles readings, 7 s apart, so batches cross hour and (one) day boundaries. */
function batch(device: number, firstCycle: number, cycles: number, points = 20): Envelope[] {
  const out: Envelope[] = [];
  for (let c = firstCycle; c < firstCycle + cycles; c++) {
    const ts = new Date(START + c * 7_000).toISOString();
    const readings: Reading[] = [];
    for (let p = 1; p <= points; p++)
      readings.push({ point: `analog_value_${p}`, value: Math.round(Math.cos(c / 9 + p) * 1e4) / 100, ts });
    out.push(envelope(device, readings));
  }
  return out;
}

async function snapshot(pool: pg.Pool) {
  const rows = await pool.query(
    "SELECT point_id::text, time, value, value_text, status_flags, quality, historical FROM readings ORDER BY 1, 2",
  );
  const hourly = await aggregates(
    pool,
    "SELECT bucket, point_id, avg, min, max, count, first, last FROM readings_hourly ORDER BY point_id, bucket",
  );
  const daily = await aggregates(
    pool,
    "SELECT bucket, point_id, avg, min, max, count, first, last FROM readings_daily ORDER BY point_id, bucket",
  );
  return { rows: rows.rows, hourly, daily };
}

describe("ingest writer COPY path (PostgreSQL, portable)", () => {
  let copyDb: TestDatabase;
  let insertDb: TestDatabase;
  let copyPool: pg.Pool;
  let insertPool: pg.Pool;
  let copying: BatchWriter;
  let inserting: BatchWriter;

  beforeAll(async () => {
    [copyDb, insertDb] = await Promise.all([
      createPostgresDatabase("bacmqtt_copy"),
      createPostgresDatabase("bacmqtt_copy"),
    ]);
    copyPool = new pg.Pool({ connectionString: copyDb.url, max: 1 });
    insertPool = new pg.Pool({ connectionString: insertDb.url, max: 1 });
    await migrate(copyPool, { dialect: "portable" });
    await migrate(insertPool, { dialect: "portable" });
    copying = new BatchWriter(copyPool, "portable", log, "auto");
    inserting = new BatchWriter(insertPool, "portable", log, "off");
  });
  afterAll(async () => {
    await copyPool?.end();
    await insertPool?.end();
    await copyDb?.drop();
    await insertDb?.drop();
  });

  /** Writes the same batch through both writers; returns the COPY writer's stats. */
  async function both(b: Envelope[]) {
    const [c, i] = await Promise.all([copying.write(b), inserting.write(b)]);
    expect(i.readingsCopied ?? 0).toBe(0);
    expect(c.readingsInserted).toBe(i.readingsInserted);
    return c;
  }

  it("copies new rows, falls back on a replay, cools down, then copies again; same rows and rollups", async () => {
    const first = await both(batch(1, 0, 600)); // 600 cycles × 20 points, 70 min: crosses 11:00 and 12:00
    expect(first).toMatchObject({
      readingsReceived: 12_000,
      readingsInserted: 12_000,
      readingsCopied: 12_000,
    });
    expect(first.copyFallbacks ?? 0).toBe(0);

    // A replay overlapping stored rows (cycles 590–609): the COPY meets the stored 590–599.
    const replay = await both(batch(1, 590, 20));
    expect(replay).toMatchObject({ readingsReceived: 400, readingsInserted: 200, copyFallbacks: 1 });
    expect(replay.readingsCopied ?? 0).toBe(0);

    // The next batches skip the COPY attempt, then COPY again.
    let cycle = 610;
    for (let n = 0; n < COPY_COOLDOWN_BATCHES; n++, cycle += 5) {
      const s = await both(batch(1, cycle, 5));
      expect(s.readingsCopied ?? 0).toBe(0);
      expect(s.readingsInserted).toBe(100);
    }
    const again = await both(batch(1, cycle, 5));
    expect(again).toMatchObject({ readingsInserted: 100, readingsCopied: 100 });

    const a = await snapshot(copyPool);
    const b = await snapshot(insertPool);
    // point ids are assigned in the same order in both databases
    expect(a.rows).toEqual(b.rows);
    expect(a.hourly).toEqual(b.hourly);
    expect(a.daily).toEqual(b.daily);
    expect(a.hourly).toEqual(await aggregates(copyPool, rawAggregateSql("1 hour")));
    expect(a.daily).toEqual(await aggregates(copyPool, rawAggregateSql("1 day")));
    expect(a.hourly.length).toBeGreaterThanOrEqual(3 * 20);
  });

  it("falls back when one batch holds the same (point, time) twice", async () => {
    const c = new BatchWriter(copyPool, "portable", log, "on");
    const ts = new Date(START + 86_400_000).toISOString();
    const s = await c.write([
      envelope(2, [{ point: "analog_value_1", value: 1, ts }]),
      envelope(2, [{ point: "analog_value_1", value: 2, ts }]),
    ]);
    expect(s).toMatchObject({ readingsReceived: 2, readingsInserted: 1, copyFallbacks: 1 });
  });

  it("keeps text with tabs, newlines and backslashes, null values, microseconds and flags exact", async () => {
    const c = new BatchWriter(copyPool, "portable", log, "on");
    const base = "2026-03-05T08:00:00";
    const s = await c.write([
      envelope(3, [
        { point: "character_string_value_1", value: "a\tb\nc\\d\re \\N ü", ts: `${base}.000001Z` },
        { point: "analog_value_9", value: 5, ts: `${base}.000002Z` },
        { point: "analog_value_9", value: 7, ts: `${base}.000001Z` },
        { point: "analog_value_9", value: 6, ts: `${base}.000003Z`, quality: "uncertain" },
        { point: "analog_value_8", value: null, ts: `${base}.5Z` },
      ]),
    ]);
    expect(s).toMatchObject({ readingsInserted: 5, readingsCopied: 5 });
    const { rows } = await copyPool.query(
      `SELECT p.point, to_char(r.time AT TIME ZONE 'UTC', 'HH24:MI:SS.US') AS t, r.value, r.value_text, r.quality
       FROM readings r JOIN points p USING (point_id) WHERE p.device_instance = 3 ORDER BY p.point, r.time`,
    );
    expect(rows).toEqual([
      { point: "analog_value_8", t: "08:00:00.500000", value: null, value_text: null, quality: null },
      { point: "analog_value_9", t: "08:00:00.000001", value: 7, value_text: null, quality: null },
      { point: "analog_value_9", t: "08:00:00.000002", value: 5, value_text: null, quality: null },
      { point: "analog_value_9", t: "08:00:00.000003", value: 6, value_text: null, quality: "uncertain" },
      {
        point: "character_string_value_1",
        t: "08:00:00.000001",
        value: null,
        value_text: "a\tb\nc\\d\re \\N ü",
        quality: null,
      },
    ]);
    // first/last by microsecond, not by arrival order
    const agg = await copyPool.query(
      `SELECT h.first, h.last, h.count FROM readings_hourly h JOIN points p USING (point_id)
       WHERE p.device_instance = 3 AND p.point = 'analog_value_9'`,
    );
    expect(agg.rows).toEqual([{ first: 7, last: 6, count: "3" }]);
  });

  it("stores in binary exactly what the INSERT path stores: flags, historical, booleans, states, negative values", async () => {
    const flags = { in_alarm: true, fault: false, overridden: true, out_of_service: false };
    const at = (m: number) => new Date(START + 3 * 86_400_000 + m * 1000).toISOString();
    const b = [
      envelope(4, [
        { point: "analog_value_1", value: -1234.5678, ts: at(0), status_flags: flags },
        { point: "analog_value_1", value: 1e-300, ts: at(1), quality: "bad" },
        { point: "binary_value_1", value: true, ts: at(0) },
        { point: "multi_state_value_1", value: 3, ts: at(0) },
        { point: "character_string_value_1", value: "", ts: at(0) },
      ]),
      envelope(4, [{ point: "analog_value_2", value: 0, ts: at(0) }], true),
    ];
    const c = await both(b);
    expect(c).toMatchObject({ readingsInserted: 6, readingsCopied: 6 });
    const q =
      "SELECT p.point, r.time, r.value, r.value_text, r.status_flags, r.quality, r.historical FROM readings r JOIN points p USING (point_id) WHERE p.device_instance = 4 ORDER BY 1, 2";
    const copied = (await copyPool.query(q)).rows;
    expect(copied).toEqual((await insertPool.query(q)).rows);
    expect(copied.find((r) => r.point === "analog_value_1")).toMatchObject({
      value: -1234.5678,
      status_flags: 5,
    });
    expect(copied.find((r) => r.point === "analog_value_2")).toMatchObject({ historical: true });
  });

  it("sends a batch with sub-microsecond times as text, rounded as PostgreSQL rounds, so a replay meets it", async () => {
    const ts = "2026-03-09T08:00:00.0000015Z"; // 1.5 µs: PostgreSQL rounds to 2 µs
    const b = [envelope(5, [{ point: "analog_value_1", value: 1, ts }])];
    const c = await both(b);
    expect(c).toMatchObject({ readingsInserted: 1, readingsCopied: 1 });
    const q =
      "SELECT to_char(r.time AT TIME ZONE 'UTC', 'SS.US') AS t FROM readings r JOIN points p USING (point_id) WHERE p.device_instance = 5";
    expect((await copyPool.query(q)).rows).toEqual([{ t: "00.000002" }]);
    expect((await insertPool.query(q)).rows).toEqual([{ t: "00.000002" }]);
    // The replay (INSERT … ON CONFLICT) finds the stored row: nothing new.
    const again = await copying.write(b);
    expect(again).toMatchObject({ readingsReceived: 1, readingsInserted: 0 });
  });
});
