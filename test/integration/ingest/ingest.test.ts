// MQTT → database through a real broker, real MQTT.js clients and the real databases, for both
// dialects through the same `pg` code: rows, metadata, events, dead letters, and aggregates equal to
// the same aggregates computed from the raw rows after out-of-order arrival, duplicates and replays.
import type { MqttClient } from "mqtt";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningBroker } from "../../../broker/index.ts";
import type { Topics } from "../../../contract/index.ts";
import { migrate } from "../../../ingest/migrate.ts";
import { IngestService } from "../../../ingest/service.ts";
import { createPostgresDatabase, type TestDatabase } from "../../support/db-postgres.ts";
import {
  createNativeTimescaleDatabase,
  runJobs,
  startWasmTimescale,
  timescaleSkipNote,
  timescaleUrl,
} from "../../support/db-timescale.ts";
import {
  aggregates,
  broker,
  chunks,
  count,
  eventually,
  publisher,
  publishReadings,
  rawAggregateSql,
  series,
  shuffle,
  topics,
} from "./helpers.ts";

function suite(
  label: string,
  dialect: "portable" | "timescale",
  make: () => Promise<TestDatabase>,
  poolMax: number,
) {
  describe(`ingest (${label})`, () => {
    let db: TestDatabase;
    let pool: pg.Pool;
    let mq: RunningBroker;
    let ingest: IngestService;
    let pub: MqttClient;
    const t: Topics = topics("gw1");

    beforeAll(async () => {
      db = await make();
      pool = new pg.Pool({ connectionString: db.url, max: poolMax });
      pool.on("error", () => {});
      expect((await migrate(pool)).dialect).toBe(dialect);
      mq = await broker();
      ingest = new IngestService({
        mqttUrl: mq.url,
        pool,
        dialect,
        clientId: `ingest-${dialect}`,
        batchSize: 500,
        batchWaitMs: 20,
        retentionIntervalMs: 0,
      });
      await ingest.start();
      pub = await publisher(mq.url, `pub-${dialect}`);
    });
    afterAll(async () => {
      await pub?.endAsync();
      await ingest?.stop();
      await mq?.close();
      await pool?.end();
      await db?.drop();
    });

    async function settle(expectedReadings: number) {
      await eventually(
        async () =>
          Number(await ingest.metrics.readingsReceived.get().then((m) => m.values[0]?.value ?? 0)) >=
          expectedReadings,
        `${expectedReadings} readings received`,
      );
      await ingest.drained();
    }

    it("stores metadata, availability, bridge state/info/devices and write events", async () => {
      await pub.publishAsync(
        t.device(1001, "meta"),
        JSON.stringify({
          device_instance: 1001,
          address: "192.168.1.31:47808",
          network: null,
          mac: null,
          object_name: "AHU-1",
          description: "Air handler",
          location: "Plant room",
          vendor_id: 999,
          vendor_name: "bacmqtt simulator",
          model_name: "SIM-AHU",
          firmware_revision: "1.0",
          application_software_version: "1.0",
          max_apdu: 1476,
          segmentation: "segmented-both",
          supports_rpm: true,
          updated_at: "2026-11-27T08:00:00.000Z",
          points: [
            {
              point: "binary_input_1",
              object_type: "binary-input",
              object_instance: 1,
              name: "Fan status",
              description: null,
              units: null,
              units_code: null,
              writable: false,
              state_texts: null,
              active_text: "Running",
              inactive_text: "Stopped",
              cov_increment: null,
            },
            {
              point: "multi_state_value_2",
              object_type: "multi-state-value",
              object_instance: 2,
              name: "Mode",
              description: "Operating mode",
              units: null,
              units_code: null,
              writable: true,
              state_texts: ["Off", "Heat", "Cool"],
              active_text: null,
              inactive_text: null,
              cov_increment: null,
            },
          ],
        }),
        { qos: 1, retain: true },
      );
      await pub.publishAsync(
        t.device(1001, "availability"),
        JSON.stringify({ state: "online", timestamp: "2026-11-27T08:00:00.000Z" }),
        { qos: 1, retain: true },
      );
      await pub.publishAsync(
        t.device(1001, "availability"),
        JSON.stringify({ state: "online", timestamp: "2026-11-27T08:00:01.000Z" }),
        { qos: 1 },
      );
      await pub.publishAsync(
        t.device(1001, "availability"),
        JSON.stringify({ state: "offline", timestamp: "2026-11-27T08:05:00.000Z", reason: "no answer" }),
        { qos: 1 },
      );
      await pub.publishAsync(
        t.bridge("state"),
        JSON.stringify({ state: "online", bd_seq: 3, timestamp: "2026-11-27T08:00:00.000Z" }),
        { qos: 1, retain: true },
      );
      await pub.publishAsync(
        t.bridge("devices"),
        JSON.stringify({
          timestamp: "2026-11-27T08:00:00.000Z",
          count: 2,
          online: 1,
          offline: 1,
          points: 2,
          device_instances: [1001, 1002],
        }),
        { qos: 1, retain: true },
      );
      // A write relayed by the api is audited by the api; the gateway's event of it adds no row.
      await pool.query(
        `INSERT INTO write_audit (time, gateway_id, device_instance, point, value, priority, source, actor, result, transaction)
         VALUES (now(), 'gw1', 1001, 'analog_output_1', '21'::jsonb, 8, 'api', 'operator-1', 'ok', 'api-t1')`,
      );
      await pub.publishAsync(
        t.bridge("event"),
        JSON.stringify({
          type: "write",
          timestamp: "2026-11-27T08:02:00.000Z",
          data: {
            device: 1001,
            point: "analog_output_1",
            value: 21,
            priority: 8,
            result: "ok",
            transaction: "api-t1",
          },
        }),
        { qos: 1 },
      );
      await pub.publishAsync(
        t.bridge("event"),
        JSON.stringify({
          type: "write",
          timestamp: "2026-11-27T08:03:00.000Z",
          data: {
            device: 1001,
            point: "multi_state_value_2",
            value: 3,
            priority: 8,
            result: "ok",
            transaction: "t7",
          },
        }),
        { qos: 1 },
      );
      await publishReadings(pub, t, 1001, [
        { point: "binary_input_1", value: true, ts: "2026-11-27T08:00:00.000Z" },
        { point: "multi_state_value_2", value: 2, ts: "2026-11-27T08:00:00.000Z" },
      ]);
      await settle(2);
      await eventually(
        async () => (await count(pool, "SELECT count(*) AS n FROM write_audit WHERE source = 'mqtt'")) === 1,
        "write audit row",
      );

      const dev = await pool.query(
        "SELECT object_name, vendor_id, online, segmentation FROM devices WHERE device_instance = 1001",
      );
      expect(dev.rows).toEqual([
        { object_name: "AHU-1", vendor_id: 999, online: false, segmentation: "segmented-both" },
      ]);
      expect(await count(pool, "SELECT count(*) AS n FROM devices WHERE gateway_id = 'gw1'")).toBe(2);
      const ev = await pool.query("SELECT state, reason FROM availability_events ORDER BY time");
      expect(ev.rows).toEqual([
        { state: "online", reason: null },
        { state: "offline", reason: "no answer" },
      ]);
      const gw = await pool.query("SELECT state, bd_seq, base_topic FROM gateways WHERE gateway_id = 'gw1'");
      expect(gw.rows).toEqual([{ state: "online", bd_seq: 3, base_topic: "bacmqtt" }]);
      const audit = await pool.query(
        "SELECT device_instance, point, value, priority, source, result, transaction FROM write_audit ORDER BY id",
      );
      expect(audit.rows).toEqual([
        {
          device_instance: 1001,
          point: "analog_output_1",
          value: 21,
          priority: 8,
          source: "api",
          result: "ok",
          transaction: "api-t1",
        },
        {
          device_instance: 1001,
          point: "multi_state_value_2",
          value: 3,
          priority: 8,
          source: "mqtt",
          result: "ok",
          transaction: "t7",
        },
      ]);
      const rd = await pool.query(
        "SELECT p.point, r.value, r.value_text FROM readings r JOIN points p USING (point_id) ORDER BY p.point",
      );
      expect(rd.rows).toEqual([
        { point: "binary_input_1", value: 1, value_text: "Running" },
        { point: "multi_state_value_2", value: 2, value_text: "Heat" },
      ]);
    });

    it("stores a poison message as a dead letter and goes on with the stream", async () => {
      const before = await count(pool, "SELECT count(*) AS n FROM readings");
      await pub.publishAsync(t.device(1003, "readings"), "{not json", { qos: 1 });
      await pub.publishAsync(
        t.device(1003, "readings"),
        JSON.stringify({
          device: 1003,
          source: "poll",
          readings: [{ point: "analog_input_1", value: "x".repeat(10), ts: "yesterday" }],
        }),
        { qos: 1 },
      );
      await pub.publishAsync("bacmqtt/gw1/1003/bogus", "{}", { qos: 1 }).catch(() => undefined);
      await publishReadings(pub, t, 1003, [
        { point: "analog_input_1", value: 1.5, ts: "2026-11-27T09:00:00.000Z" },
      ]);
      await eventually(
        async () => (await count(pool, "SELECT count(*) AS n FROM readings")) === before + 1,
        "reading after poison",
      );
      const { rows } = await pool.query("SELECT topic, payload, error FROM dead_letters ORDER BY id");
      expect(rows).toHaveLength(2);
      expect(rows[0]).toMatchObject({ topic: "bacmqtt/gw1/1003/readings", payload: "{not json" });
      expect(rows[0].error).toMatch(/not valid JSON/);
      expect(rows[1].error).toMatch(/ts/);
      expect((await ingest.metrics.deadLetters.get()).values[0]?.value).toBe(2);
    });

    it("keeps aggregates equal to the aggregates of the raw rows after disorder, duplicates and replays", async () => {
      const start = Date.UTC(2026, 10, 20, 22, 17, 0); // crosses day boundaries, not bucket-aligned
      const data = series({ points: 4, count: 600, start, stepS: 397, seed: 42 }); // ~2.75 days
      // null, string and boolean readings must not disturb numeric stats
      data.push({ point: "analog_input_1", value: null, ts: new Date(start + 5000).toISOString() });
      data.push({
        point: "characterstring_value_1",
        value: "hello",
        ts: new Date(start + 5000).toISOString(),
      });
      data.push({ point: "binary_value_1", value: true, ts: new Date(start + 6000).toISOString() });
      const shuffled = shuffle(data);
      const before = await count(pool, "SELECT count(*) AS n FROM readings");
      const receivedBefore = Number((await ingest.metrics.readingsReceived.get()).values[0]?.value ?? 0);
      let sent = 0;
      for (const part of chunks(shuffled, 97)) {
        await publishReadings(pub, t, 2001, part);
        sent += part.length;
      }
      // duplicates inside one message, then the whole stream again as a store-and-forward replay
      await publishReadings(pub, t, 2001, [...shuffled.slice(0, 50), ...shuffled.slice(0, 50)]);
      for (const part of chunks(data, 250)) await publishReadings(pub, t, 2001, part, { historical: true });
      sent += 100 + data.length;
      expect(sent).toBe(2 * data.length + 100);
      await settle(receivedBefore + sent);
      expect(await count(pool, "SELECT count(*) AS n FROM readings")).toBe(before + data.length);

      if (dialect === "timescale") {
        // No scheduler in the WASM build: run the refresh policies like the scheduler would.
        await runJobs(db.url, "policy_refresh_continuous_aggregate");
      }
      for (const [view, width] of [
        ["readings_hourly", "1 hour"],
        ["readings_daily", "1 day"],
      ] as const) {
        const expected = await aggregates(pool, rawAggregateSql(width));
        const actual = await aggregates(
          pool,
          `SELECT bucket, point_id, avg, min, max, count, first, last FROM ${view} ORDER BY point_id, bucket`,
        );
        expect(expected.length).toBeGreaterThan(3);
        expect(actual, view).toEqual(expected);
      }
      if (dialect === "timescale") {
        // The refresh really materialised the buckets (not only real-time aggregation answering).
        const { rows } = await pool.query<{ mat: string }>(
          `SELECT format('%I.%I', h.schema_name, h.table_name) AS mat
           FROM _timescaledb_catalog.continuous_agg ca
           JOIN _timescaledb_catalog.hypertable h ON h.id = ca.mat_hypertable_id
           WHERE ca.user_view_name = 'readings_hourly'`,
        );
        // (the refresh window ends an hour ago; later buckets are served by real-time aggregation)
        const cutoff = Date.now() - 2 * 3600_000;
        const expected = (await aggregates(pool, rawAggregateSql("1 hour"))).filter(
          (r) => Date.parse(r.bucket) < cutoff,
        );
        expect(expected.length).toBeGreaterThan(3);
        expect(
          await count(pool, `SELECT count(*) AS n FROM ${rows[0]?.mat} WHERE bucket < $1`, [
            new Date(cutoff).toISOString(),
          ]),
        ).toBe(expected.length);
      }
    });
  });
}

suite("plain PostgreSQL, portable", "portable", () => createPostgresDatabase("bacmqtt_ingest"), 4);
suite("TimescaleDB WASM over pglite-socket", "timescale", () => startWasmTimescale(), 1);
if (timescaleUrl()) {
  suite(
    "native TimescaleDB (TIMESCALEDB_URL)",
    "timescale",
    () => createNativeTimescaleDatabase("bacmqtt_ingest"),
    4,
  );
} else {
  describe("ingest (native TimescaleDB)", () => {
    it.skip(timescaleSkipNote(), () => {});
  });
}

const MOSQUITTO_URL = process.env.MOSQUITTO_URL ?? "mqtt://127.0.0.1:1883";
async function reachable(url: string): Promise<boolean> {
  const { connect } = await import("node:net");
  const u = new URL(url);
  return new Promise((resolve) => {
    const s = connect(Number(u.port || 1883), u.hostname);
    s.once("connect", () => s.end(() => resolve(true)));
    s.once("error", () => resolve(false));
  });
}
const mosquittoUp = await reachable(MOSQUITTO_URL);

describe("ingest replicas (shared subscriptions) and /metrics", () => {
  let db: TestDatabase;
  let pool: pg.Pool;
  beforeAll(async () => {
    db = await createPostgresDatabase("bacmqtt_shared");
    pool = new pg.Pool({ connectionString: db.url, max: 4 });
    // Dropping the database terminates connections a refused ingest may still hold (57P01).
    pool.on("error", () => {});
    await migrate(pool);
  });
  afterAll(async () => {
    await pool?.end();
    await db?.drop();
  });

  it("refuses to start when the broker refuses the shared subscription (aedes has none)", async () => {
    const mq = await broker();
    const ingest = new IngestService({
      mqttUrl: mq.url,
      pool,
      dialect: "portable",
      clientId: "ingest-share-refused",
      shareGroup: "ingest",
      retentionIntervalMs: 0,
    });
    try {
      await expect(ingest.start()).rejects.toMatchObject({ code: "INGEST_ERR_SUBSCRIBE" });
    } finally {
      await mq.close();
    }
  });

  it.skipIf(!mosquittoUp)(
    `two ingests in one share group on Mosquitto (${MOSQUITTO_URL}) store every reading once and expose metrics`,
    async () => {
      const { serveMetrics } = await import("../../../ingest/metrics.ts");
      const { randomBytes } = await import("node:crypto");
      const tag = randomBytes(4).toString("hex");
      const base = `bacmqtt-test-${tag}`;
      const replicas = ["a", "b"].map(
        (id) =>
          new IngestService({
            mqttUrl: MOSQUITTO_URL,
            pool,
            dialect: "portable",
            baseTopic: base,
            clientId: `ingest-shared-${tag}-${id}`,
            shareGroup: `ingest-${tag}`,
            batchSize: 100,
            batchWaitMs: 5,
            retentionIntervalMs: 0,
          }),
      );
      let pub: MqttClient | undefined;
      const metrics = await serveMetrics(replicas[0]!.metrics, "127.0.0.1", 0);
      try {
        for (const r of replicas) await r.start();
        pub = await publisher(MOSQUITTO_URL, `pub-shared-${tag}`);
        const { Topics } = await import("../../../contract/index.ts");
        const t = new Topics(base, "gw-shared");
        const data = series({ points: 5, count: 200, start: Date.UTC(2026, 8, 1), stepS: 60 });
        for (const part of chunks(data, 10)) await publishReadings(pub, t, 6001, part);
        await eventually(
          async () => (await count(pool, "SELECT count(*) AS n FROM readings")) === data.length,
          "all rows",
        );
        for (const r of replicas) await r.drained();
        const received = await Promise.all(
          replicas.map(async (r) => Number((await r.metrics.readingsReceived.get()).values[0]?.value ?? 0)),
        );
        expect(received.reduce((a, b) => a + b, 0)).toBe(data.length); // each message went to one member
        expect(Math.min(...received)).toBeGreaterThan(0); // and both took a share
        const body = await (await fetch(`http://127.0.0.1:${metrics.port}/metrics`)).text();
        for (const name of [
          "bacmqtt_ingest_rows_total",
          "bacmqtt_ingest_rows_per_second",
          "bacmqtt_ingest_batch_duration_seconds_bucket",
          "bacmqtt_ingest_lag_seconds",
          "bacmqtt_ingest_dead_letters_total",
          "bacmqtt_ingest_retries_total",
        ]) {
          expect(body).toContain(name);
        }
        expect(body).toMatch(new RegExp(`bacmqtt_ingest_readings_received_total ${received[0]}\\b`));
      } finally {
        await pub?.endAsync();
        for (const r of replicas) await r.stop();
        await metrics.close();
      }
    },
  );
  if (!mosquittoUp)
    it.skip(`Mosquitto is not reachable at ${MOSQUITTO_URL}: the shared-subscription test is SKIPPED`, () => {});
});
