// The ingest's write lanes: a batch that is slow to commit (here: blocked on a row lock held by
// another session) holds one lane, not the ingest. Later batches keep being written on the other
// lane, even once one of them has committed and only waits for its acknowledgement turn (acks stay
// in arrival order). Before, a committed batch waiting for its turn still counted as a lane, so
// the next batch waited for the slowest one. Real broker, real ingest service, real PostgreSQL.
import pg from "pg";
import { afterAll, expect, it } from "vitest";
import { createLogger } from "../../../common/logger.ts";
import { classify } from "../../../ingest/messages.ts";
import { IngestService } from "../../../ingest/service.ts";
import { BatchWriter, type Envelope } from "../../../ingest/writer.ts";
import {
  broker,
  count,
  eventually,
  migratedDatabase,
  publisher,
  publishReadings,
  topics,
} from "./helpers.ts";

const tdb = migratedDatabase("bacmqtt_lanes", 4);
const t = topics("gw-lanes");
const closers: (() => Promise<unknown>)[] = [];

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
});

const rowsOf = (device: number) =>
  count(
    tdb.pool,
    "SELECT count(*) AS n FROM readings r JOIN points p USING (point_id) WHERE p.gateway_id = $1 AND p.device_instance = $2",
    [t.gateway, device],
  );

it("keeps writing on the free lane while one batch is blocked, and acknowledges in order afterwards", async () => {
  const mq = await broker();
  closers.push(() => mq.close());
  const ingestPool = new pg.Pool({ connectionString: tdb.db.url, max: 2 });
  closers.push(() => ingestPool.end());
  const ingest = new IngestService({
    mqttUrl: mq.url,
    pool: ingestPool,
    dialect: "portable",
    clientId: "ingest-lanes",
    batchSize: 1, // one message per batch
    batchWaitMs: 5,
    concurrency: 2,
    retentionIntervalMs: 0,
  });
  await ingest.start();
  closers.push(() => ingest.stop());
  // Both lanes' connections are open before the broker delivers a backlog (and idle in the pool).
  expect({ total: ingestPool.totalCount, idle: ingestPool.idleCount }).toEqual({ total: 2, idle: 2 });
  const pub = await publisher(mq.url, "pub-lanes");
  closers.push(() => pub.endAsync());
  const at = (s: number) => new Date(Date.UTC(2026, 10, 2, 10, 0, s)).toISOString();

  // Device 1's point and its hourly rollup row exist.
  await publishReadings(pub, t, 1, [{ point: "analog_value_1", value: 1, ts: at(0) }]);
  await eventually(async () => (await rowsOf(1)) === 1, "first row of device 1");

  // Another session holds device 1's rollup row: the next batch of device 1 blocks at its merge.
  const locker = await tdb.pool.connect();
  closers.push(async () => locker.release());
  await locker.query("BEGIN");
  await locker.query(
    `SELECT 1 FROM readings_hourly_state s JOIN points p USING (point_id)
     WHERE p.gateway_id = $1 AND p.device_instance = 1 FOR UPDATE`,
    [t.gateway],
  );
  try {
    await publishReadings(pub, t, 1, [{ point: "analog_value_1", value: 2, ts: at(1) }]); // blocked
    await publishReadings(pub, t, 2, [{ point: "analog_value_1", value: 3, ts: at(2) }]); // lane 2
    await eventually(async () => (await rowsOf(2)) === 1, "device 2 committed on the free lane");
    // Device 2's batch has committed but waits for device 1's to be acknowledged; device 3's must
    // still get the free lane.
    await publishReadings(pub, t, 3, [{ point: "analog_value_1", value: 4, ts: at(3) }]);
    // Bounded at 5 s so that a lane lost to the waiting batch fails with this message.
    await eventually(async () => (await rowsOf(3)) === 1, "device 3 written while device 1 is blocked", 50);
    expect(await rowsOf(1)).toBe(1);
  } finally {
    await locker.query("ROLLBACK");
  }
  await eventually(async () => (await rowsOf(1)) === 2, "device 1's batch after the lock");
  // Everything acknowledged in order: a restarted ingest with the same session gets nothing again.
  await ingest.stop();
  const again = new IngestService({
    mqttUrl: mq.url,
    pool: ingestPool,
    dialect: "portable",
    clientId: "ingest-lanes",
    retentionIntervalMs: 0,
  });
  await again.start();
  closers.push(() => again.stop());
  await new Promise((r) => setTimeout(r, 500));
  expect((await again.metrics.readingsReceived.get()).values[0]?.value ?? 0).toBe(0);
});

it("a second lane does not wait for the first one's gateway row: one touch per gateway at a time", async () => {
  const g = topics("gw-lanes-touch");
  const env = (device: number, value: number, s: number): Envelope => {
    const topic = g.device(device, "readings");
    const ts = new Date(Date.UTC(2026, 10, 3, 10, 0, s)).toISOString();
    const payload = Buffer.from(
      JSON.stringify({ device, source: "poll", readings: [{ point: "analog_value_1", value, ts }] }),
    );
    return { topic, payload, op: classify(topic, payload, "bacmqtt"), receivedAt: new Date() };
  };
  const log = createLogger("test");
  // The gateway, devices, points and rollup rows exist (an ingest ran before).
  await new BatchWriter(tdb.pool, "portable", log).write([env(1, 1, 0), env(2, 1, 0)]);
  // A fresh writer (a restarted ingest): its first batches touch the gateway row.
  const writer = new BatchWriter(tdb.pool, "portable", log);
  const locker = await tdb.pool.connect();
  try {
    await locker.query("BEGIN");
    await locker.query(
      `SELECT 1 FROM readings_hourly_state s JOIN points p USING (point_id)
       WHERE p.gateway_id = $1 AND p.device_instance = 1 FOR UPDATE`,
      [g.gateway],
    );
    // Lane 1 touches the gateway row, then blocks at its rollup merge (held by the locker).
    const first = writer.write([env(1, 2, 1)]);
    let firstDone = false;
    void first.then(() => {
      firstDone = true;
    });
    await new Promise((r) => setTimeout(r, 200));
    // Lane 2, same gateway: before, its touch waited for lane 1's commit (the row lock).
    let timer: NodeJS.Timeout | undefined;
    const second = await Promise.race([
      writer.write([env(2, 2, 1)]).then((s) => s.readingsInserted),
      new Promise<string>((resolve) => {
        timer = setTimeout(() => resolve("blocked behind lane 1"), 5000);
      }),
    ]);
    clearTimeout(timer);
    expect({ second, firstDone }).toEqual({ second: 1, firstDone: false });
  } finally {
    await locker.query("ROLLBACK");
    locker.release();
  }
  const gw = await tdb.pool.query<{ n: string }>(
    "SELECT count(*) AS n FROM gateways WHERE gateway_id = $1 AND last_seen > now() - interval '1 minute'",
    [g.gateway],
  );
  expect(gw.rows[0]?.n).toBe("1");
});
