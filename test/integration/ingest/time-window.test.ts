// Readings stamped by a broken clock (years ahead, or 1970) become dead letters with the reason, raw
// payload kept; readings of the same stream within the window are stored. The real broker, the
// real ingest service, PostgreSQL; the limits as `bacmqtt ingest --max-future-s/--min-time` set them.
import { afterAll, expect, it } from "vitest";
import { IngestService } from "../../../ingest/service.ts";
import {
  broker,
  count,
  eventually,
  migratedDatabase,
  publisher,
  publishReadings,
  topics,
} from "./helpers.ts";

const tdb = migratedDatabase("bacmqtt_time_window", 4);
const t = topics("gw-clock");
const closers: (() => Promise<unknown>)[] = [];

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
});

it("dead-letters readings from a clock far ahead or before the floor, and stores the rest", async () => {
  const mq = await broker();
  closers.push(() => mq.close());
  const ingest = new IngestService({
    mqttUrl: mq.url,
    pool: tdb.pool,
    dialect: "portable",
    clientId: "ingest-time-window",
    batchWaitMs: 20,
    retentionIntervalMs: 0,
    timeWindow: { maxFutureMs: 3600_000 },
  });
  await ingest.start();
  closers.push(() => ingest.stop());
  const pub = await publisher(mq.url, "pub-time-window");
  closers.push(() => pub.endAsync());

  const now = Date.now();
  const iso = (ms: number) => new Date(ms).toISOString();
  await publishReadings(pub, t, 7001, [
    { point: "analog_input_1", value: 1, ts: "2099-01-01T00:00:00.000Z" },
  ]);
  await publishReadings(pub, t, 7001, [
    { point: "analog_input_1", value: 2, ts: "1970-01-01T00:00:05.000Z" },
  ]);
  // 2 h ahead: over the 1 h limit set above; 50 min ahead and 1 day old: within.
  await publishReadings(pub, t, 7001, [{ point: "analog_input_1", value: 3, ts: iso(now + 2 * 3600_000) }]);
  await publishReadings(pub, t, 7001, [
    { point: "analog_input_1", value: 4, ts: iso(now + 50 * 60_000) },
    { point: "analog_input_2", value: 5, ts: iso(now - 86_400_000) },
  ]);
  await eventually(
    async () =>
      (await count(tdb.pool, "SELECT count(*) AS n FROM readings")) === 2 &&
      (await count(tdb.pool, "SELECT count(*) AS n FROM dead_letters")) === 3,
    "2 rows and 3 dead letters",
  );
  const { rows } = await tdb.pool.query<{ payload: string; error: string }>(
    "SELECT payload, error FROM dead_letters ORDER BY id",
  );
  expect(rows.map((r) => r.error)).toEqual([
    expect.stringMatching(
      /ts 2099-01-01T00:00:00.000Z is \d+ days ahead of the ingest's clock \(limit 60 min/,
    ),
    expect.stringMatching(/ts 1970-01-01T00:00:05.000Z is before 2000-01-01T00:00:00.000Z/),
    expect.stringMatching(/is 2 h ahead of the ingest.s clock \(limit 60 min; check the gateway.s clock\)/),
  ]);
  // The raw payload is kept: the readings can be replayed once the gateway's clock is fixed.
  expect(JSON.parse(rows[0]?.payload ?? "{}").readings[0].value).toBe(1);
  const { rows: stored } = await tdb.pool.query<{ value: number }>(
    "SELECT value FROM readings ORDER BY value",
  );
  expect(stored.map((r) => r.value)).toEqual([4, 5]);
});
