// Zero readings lost: a database outage mid-stream, an ingest process SIGKILLed mid-stream, and a
// broker restart mid-stream (broker sessions persisted in Redis). Real PostgreSQL, real broker, real
// MQTT.js clients; the killed ingest is the real `bacmqtt ingest` process.
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { type AddressInfo, connect, createServer } from "node:net";
import { fileURLToPath } from "node:url";
import type { MqttClient } from "mqtt";
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { MIGRATIONS } from "../../../ingest/migrations/index.ts";
import { IngestService } from "../../../ingest/service.ts";
import { setDatabaseOnline } from "../../support/db-postgres.ts";
import {
  aggregates,
  broker,
  chunks,
  count,
  eventually,
  migratedDatabase,
  publisher,
  publishReadings,
  rawAggregateSql,
  series,
  topics,
} from "./helpers.ts";

const tdb = migratedDatabase("bacmqtt_resilience", 2);
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const redisUp = await new Promise<boolean>((resolve) => {
  const u = new URL(REDIS_URL);
  const s = connect(Number(u.port || 6379), u.hostname);
  s.once("connect", () => s.end(() => resolve(true)));
  s.once("error", () => resolve(false));
});
const BIN = fileURLToPath(new URL("../../../bin/bacmqtt.mjs", import.meta.url));
const t = topics("gw-res");

const cleanups: (() => Promise<unknown>)[] = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});
async function rollupsMatchRaw(): Promise<void> {
  for (const [view, width] of [
    ["readings_hourly", "1 hour"],
    ["readings_daily", "1 day"],
  ] as const) {
    const expected = await aggregates(tdb.pool, rawAggregateSql(width));
    const actual = await aggregates(tdb.pool, `SELECT * FROM ${view} ORDER BY point_id, bucket`);
    expect(actual, view).toEqual(expected);
  }
}

async function sendAll(pub: MqttClient, device: number, readings: ReturnType<typeof series>, size = 50) {
  for (const part of chunks(readings, size)) await publishReadings(pub, t, device, part);
}

async function readingsOf(device: number): Promise<number> {
  return count(
    tdb.pool,
    "SELECT count(*) AS n FROM readings r JOIN points p USING (point_id) WHERE p.gateway_id = $1 AND p.device_instance = $2",
    [t.gateway, device],
  );
}

describe("ingest resilience", () => {
  it("stalls during a database outage and loses nothing", async () => {
    const mq = await broker();
    cleanups.push(() => mq.close());
    const ingestPool = new pg.Pool({ connectionString: tdb.db.url, max: 2 });
    ingestPool.on("error", () => undefined);
    cleanups.push(() => ingestPool.end());
    const ingest = new IngestService({
      mqttUrl: mq.url,
      pool: ingestPool,
      dialect: "portable",
      clientId: "ingest-outage",
      batchSize: 200,
      batchWaitMs: 10,
      retryMinMs: 50,
      retryMaxMs: 300,
      retentionIntervalMs: 0,
    });
    await ingest.start();
    cleanups.push(() => ingest.stop());
    const pub = await publisher(mq.url, "pub-outage");
    cleanups.push(() => pub.endAsync());

    const data = series({ points: 5, count: 400, start: Date.UTC(2026, 9, 1), stepS: 60, seed: 3 });
    const [first, second] = [data.slice(0, 1000), data.slice(1000)];
    await sendAll(pub, 3001, first);
    await eventually(async () => (await readingsOf(3001)) > 0, "first rows");

    await setDatabaseOnline(tdb.db, false);
    cleanups.push(() => setDatabaseOnline(tdb.db, true));
    await sendAll(pub, 3001, second);
    await eventually(
      async () => ((await ingest.metrics.retries.get()).values[0]?.value ?? 0) >= 2,
      "retries",
    );
    expect((await ingest.metrics.dbUp.get()).values[0]?.value).toBe(0);
    await setDatabaseOnline(tdb.db, true);

    await eventually(async () => (await readingsOf(3001)) === data.length, "every reading after the outage");
    await ingest.drained();
    expect(await readingsOf(3001)).toBe(data.length);
    await rollupsMatchRaw();
  });

  it("loses nothing when the ingest process is SIGKILLed mid-stream and restarted", async () => {
    const mq = await broker();
    cleanups.push(() => mq.close());
    const args = [
      BIN,
      "ingest",
      "--mqtt-url",
      mq.url,
      "--database-url",
      tdb.db.url,
      "--client-id",
      "ingest-kill",
      "--batch-size",
      "300",
      "--batch-wait-ms",
      "5",
      "--metrics-port",
      "off",
    ];
    const start = (): ChildProcess => {
      const child = spawn(process.execPath, args, {
        stdio: ["ignore", "ignore", "pipe"],
        env: { ...process.env, BACMQTT_LOG_LEVEL: "warn" },
      });
      child.stderr?.on("data", () => undefined);
      return child;
    };
    const exited = (c: ChildProcess) =>
      new Promise<void>((resolve) =>
        c.exitCode !== null || c.signalCode !== null ? resolve() : c.once("exit", () => resolve()),
      );
    let child = start();
    cleanups.push(async () => {
      child.kill("SIGKILL");
      await exited(child);
    });
    const pub = await publisher(mq.url, "pub-kill");
    cleanups.push(() => pub.endAsync());
    // The first session must exist before publishing (it is created by the ingest's SUBSCRIBE).
    await eventually(
      async () =>
        (await count(tdb.pool, "SELECT count(*) AS n FROM schema_migrations")) === MIGRATIONS.length,
      "migrated",
    );
    const canary = { point: "analog_value_99", value: 1, ts: "2026-10-05T00:00:00.000Z" };
    await eventually(async () => {
      await publishReadings(pub, t, 4001, [canary]);
      return (await readingsOf(4001)) > 0;
    }, "ingest subscribed");

    const data = series({ points: 10, count: 600, start: Date.UTC(2026, 9, 2), stepS: 30, seed: 9 });
    const [first, second] = [data.slice(0, 3000), data.slice(3000)];
    const sending = sendAll(pub, 4001, first, 100);
    await eventually(async () => (await readingsOf(4001)) > 500, "rows before the kill", 1200, 5);
    child.kill("SIGKILL");
    await exited(child);
    await sending;
    const atKill = await readingsOf(4001);
    await sendAll(pub, 4001, second, 100); // queued by the broker for the offline persistent session
    expect(atKill).toBeLessThan(data.length + 1);

    child = start();
    await eventually(
      async () => (await readingsOf(4001)) === data.length + 1,
      "every reading after the restart",
      1200,
    );
    await rollupsMatchRaw();
  });

  it("SIGTERM while waiting for the database: exit 0 at once, not after the retry delay", async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const child = spawn(
      process.execPath,
      [BIN, "ingest", "--database-url", `postgres://127.0.0.1:${port}/none`, "--metrics-port", "off"],
      { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, BACMQTT_LOG_LEVEL: "info" } },
    );
    let err = "";
    child.stderr?.on("data", (d: Buffer) => {
      err += d.toString();
    });
    const exit = new Promise<[number | null, string | null]>((resolve) =>
      child.once("exit", (code, signal) => resolve([code, signal])),
    );
    cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    });
    // The second wait is 1 s, the third 2 s…: signal once it has waited at least twice.
    await eventually(async () => (err.match(/database unavailable; waiting/g) ?? []).length >= 2, "waiting");
    child.kill("SIGTERM");
    expect(await exit).toEqual([0, null]);
    expect(err).toContain("stopping once started");
  });

  it.skipIf(!redisUp)("loses nothing across a broker restart (sessions persisted in Redis)", async () => {
    const redis = {
      url: REDIS_URL,
      keyPrefix: `bacmqtt-test-${randomBytes(4).toString("hex")}:`,
    };
    let mq = await broker({ redis });
    const port = mq.port;
    cleanups.push(() => mq.close());
    const ingest = new IngestService({
      mqttUrl: mq.url,
      pool: tdb.pool,
      dialect: "portable",
      clientId: "ingest-broker-restart",
      batchSize: 200,
      batchWaitMs: 10,
      retentionIntervalMs: 0,
    });
    await ingest.start();
    cleanups.push(() => ingest.stop());
    const pub = await publisher(mq.url, "pub-broker-restart");
    cleanups.push(() => pub.endAsync());

    const data = series({ points: 8, count: 500, start: Date.UTC(2026, 9, 4), stepS: 45, seed: 11 });
    const [first, second] = [data.slice(0, 2000), data.slice(2000)];
    await sendAll(pub, 5001, first, 100);
    await mq.close();
    mq = await broker({ redis, port });
    const sending = sendAll(pub, 5001, second, 100); // the publisher reconnects and resends its unacknowledged
    await sending;
    await eventually(
      async () => (await readingsOf(5001)) === data.length,
      "every reading after the broker restart",
      1200,
    );
    await ingest.drained();
    await rollupsMatchRaw();
  });
  if (!redisUp)
    it.skip(`Redis is not reachable at ${REDIS_URL}: the broker-restart test is SKIPPED`, () => {});
});
