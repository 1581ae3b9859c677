// Shared pieces of the ingest integration suites: a real broker on port 0, an MQTT publisher that
// speaks for a fake gateway, generators of readings, and the "aggregates from raw rows" queries.
import mqtt, { type MqttClient } from "mqtt";
import pg from "pg";
import { afterAll, beforeAll } from "vitest";
import { type RunningBroker, startBroker } from "../../../broker/index.ts";
import { Topics } from "../../../contract/index.ts";
import { migrate } from "../../../ingest/migrate.ts";
import { createPostgresDatabase, type TestDatabase } from "../../support/db-postgres.ts";

/**
 * A fresh PostgreSQL database for this file, migrated (portable), with a pool; dropped after the
 * file. Call at the top level: its afterAll, registered first, runs last (vitest runs after-hooks
 * as a stack), after the file's own clean-ups.
 */
export function migratedDatabase(
  prefix: string,
  max = 2,
): { readonly db: TestDatabase; readonly pool: pg.Pool } {
  let db: TestDatabase | undefined;
  let pool: pg.Pool | undefined;
  beforeAll(async () => {
    db = await createPostgresDatabase(prefix);
    pool = new pg.Pool({ connectionString: db.url, max });
    pool.on("error", () => undefined); // idle connections may be terminated by a fault test
    await migrate(pool, { dialect: "portable" });
  });
  afterAll(async () => {
    await pool?.end();
    await db?.drop();
  });
  return {
    get db() {
      if (!db) throw new Error("migratedDatabase: used before beforeAll");
      return db;
    },
    get pool() {
      if (!pool) throw new Error("migratedDatabase: used before beforeAll");
      return pool;
    },
  };
}

export async function broker(extra: Parameters<typeof startBroker>[0] = {}): Promise<RunningBroker> {
  return startBroker({ port: 0, allowAnonymous: true, sysInterval: 0, ...extra });
}

export async function publisher(url: string, clientId: string): Promise<MqttClient> {
  const client = mqtt.connect(url, { clientId, clean: false, protocolVersion: 4, reconnectPeriod: 200 });
  client.on("error", () => undefined);
  await new Promise<void>((resolve, reject) => {
    client.once("connect", () => resolve());
    client.once("error", reject);
  });
  return client;
}

export function topics(gateway = "gw1"): Topics {
  return new Topics("bacmqtt", gateway);
}

export interface R {
  point: string;
  value: number | boolean | string | null;
  ts: string;
}

export async function publishReadings(
  client: MqttClient,
  t: Topics,
  device: number,
  readings: R[],
  opts: { historical?: boolean } = {},
): Promise<void> {
  await client.publishAsync(
    t.device(device, "readings"),
    JSON.stringify({ device, source: "poll", ...(opts.historical ? { historical: true } : {}), readings }),
    { qos: 1 },
  );
}

/** Readings of `points` analog points every `stepS` seconds from `start`, values a deterministic walk. */
export function series(opts: {
  points: number;
  count: number;
  start: number;
  stepS: number;
  seed?: number;
}): R[] {
  const out: R[] = [];
  let x = opts.seed ?? 1;
  for (let i = 0; i < opts.count; i++) {
    for (let p = 1; p <= opts.points; p++) {
      x = (x * 1103515245 + 12345) % 2147483648;
      out.push({
        point: `analog_input_${p}`,
        value: Math.round((x / 2147483648) * 10000) / 100,
        ts: new Date(opts.start + i * opts.stepS * 1000).toISOString(),
      });
    }
  }
  return out;
}

/** Deterministic shuffle (Fisher–Yates with an LCG). */
export function shuffle<T>(items: T[], seed = 7): T[] {
  const a = [...items];
  let x = seed;
  for (let i = a.length - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const j = x % (i + 1);
    [a[i], a[j]] = [a[j] as T, a[i] as T];
  }
  return a;
}

export function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Polls until fn returns true; bounded by `tries` (no timing is asserted). */
export async function eventually(
  fn: () => Promise<boolean>,
  what: string,
  tries = 600,
  everyMs = 100,
): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`gave up waiting for ${what}`);
}

export async function count(pool: pg.Pool, sql: string, values: unknown[] = []): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(sql, values);
  return Number(rows[0]?.n ?? 0);
}

/** Hourly/daily stats computed directly from raw rows, with the same definitions as the aggregates. */
export function rawAggregateSql(width: "1 hour" | "1 day"): string {
  return `SELECT date_bin(INTERVAL '${width}', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, point_id,
                 avg(value) AS avg, min(value) AS min, max(value) AS max, count(value) AS count,
                 (array_agg(value ORDER BY time))[1] AS first, (array_agg(value ORDER BY time DESC))[1] AS last
          FROM readings WHERE value IS NOT NULL GROUP BY 1, 2 ORDER BY 2, 1`;
}

export interface AggRow {
  bucket: string;
  point_id: string;
  avg: number;
  min: number;
  max: number;
  count: number;
  first: number;
  last: number;
}

export async function aggregates(pool: pg.Pool, sql: string): Promise<AggRow[]> {
  const { rows } = await pool.query(sql);
  return rows.map((r) => ({
    bucket: new Date(r.bucket).toISOString(),
    point_id: String(r.point_id),
    avg: Math.round(Number(r.avg) * 1e6) / 1e6,
    min: Number(r.min),
    max: Number(r.max),
    count: Number(r.count),
    first: Number(r.first),
    last: Number(r.last),
  }));
}
