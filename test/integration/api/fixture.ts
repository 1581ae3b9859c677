// Shared set-up of the api suites: a fresh database of either dialect (test/support helpers),
// migrated by the ingest migrations, seeded with a small known inventory and readings whose
// aggregates are easy to compute by hand, and one key of each role.
import type { FastifyInstance } from "fastify";
import pg from "pg";
import { type ApiOptions, buildApp } from "../../../api/app.ts";
import { createKey } from "../../../api/keys.ts";
import { CommandRelay } from "../../../api/relay.ts";
import { createLogger } from "../../../common/logger.ts";
import { migrate } from "../../../ingest/migrate.ts";
import { createPostgresDatabase, type TestDatabase } from "../../support/db-postgres.ts";
import { startWasmTimescale } from "../../support/db-timescale.ts";

export type Dialect = "portable" | "timescale";

export interface Keys {
  viewer: string;
  operator: string;
  admin: string;
}

/** Readings of analog_input_1: every 15 min from T0 for 3 days, value = index (0, 1, 2, …). */
export const T0 = Date.parse("2026-11-20T00:00:00Z");
export const STEP_MS = 15 * 60_000;
export const READINGS = 3 * 24 * 4;

export async function createDatabase(dialect: Dialect): Promise<{ db: TestDatabase; pool: pg.Pool }> {
  const db =
    dialect === "portable" ? await createPostgresDatabase("bacmqtt_api") : await startWasmTimescale();
  const pool = new pg.Pool({ connectionString: db.url, max: dialect === "portable" ? 8 : 4 });
  pool.on("error", () => undefined);
  await migrate(pool, { dialect });
  return { db, pool };
}

export async function createKeys(pool: pg.Pool): Promise<Keys> {
  return {
    viewer: (await createKey(pool, "viewer-1", "viewer")).key,
    operator: (await createKey(pool, "operator-1", "operator")).key,
    admin: (await createKey(pool, "admin-1", "admin")).key,
  };
}

/** Inventory: gw1 (1001 online, 1002 offline), gw2 (2001); readings for 1001's analog_input_1. */
export async function seed(
  pool: pg.Pool,
  dialect: Dialect,
): Promise<{ ai1: number; ao1: number; bo1: number }> {
  await pool.query(
    `INSERT INTO gateways (gateway_id, base_topic, state, bd_seq, last_seen) VALUES
       ('gw1', 'bacmqtt', 'online', 3, now()), ('gw2', 'bacmqtt', 'offline', 1, now() - interval '1 day')`,
  );
  await pool.query(
    `INSERT INTO devices (gateway_id, device_instance, object_name, description, location, vendor_id, vendor_name,
                          model_name, address, online, last_seen) VALUES
       ('gw1', 1001, 'AHU-1', 'Air handler 100% fresh', 'Plant room', 999, 'Acme Controls', 'SIM-AHU', '10.0.0.5:47808', true, now()),
       ('gw1', 1002, 'VAV-2', 'Zone box', 'Level 2', 5, 'Other Corp', 'VAV', '10.0.0.6:47808', false, now() - interval '1 hour'),
       ('gw2', 2001, 'Boiler', NULL, 'Basement', 999, 'Acme Controls', 'SIM-BLR', '10.0.1.5:47808', true, now())`,
  );
  const { rows } = await pool.query<{ point_id: string; point: string }>(
    `INSERT INTO points (gateway_id, device_instance, point, object_type, object_instance, name, units, writable,
                         active_text, inactive_text) VALUES
       ('gw1', 1001, 'analog_input_1', 'analog-input', 1, 'Supply Air Temp', 'degrees-celsius', false, NULL, NULL),
       ('gw1', 1001, 'analog_output_1', 'analog-output', 1, 'Damper', 'percent', true, NULL, NULL),
       ('gw1', 1001, 'binary_output_1', 'binary-output', 1, 'Fan', NULL, true, 'On', 'Off')
     RETURNING point_id, point`,
  );
  const id = (p: string) => Number(rows.find((r) => r.point === p)?.point_id);
  const ai1 = id("analog_input_1");
  await pool.query(
    `INSERT INTO readings (time, point_id, value, quality)
     SELECT to_timestamp($2::double precision / 1000) + (i * $3::double precision / 1000) * interval '1 second',
            $1, i, 'good'
     FROM generate_series(0, $4 - 1) AS i`,
    [ai1, T0, STEP_MS, READINGS],
  );
  await pool.query(
    `INSERT INTO readings (time, point_id, value, value_text, quality) VALUES (now() - interval '1 minute', $1, 1, 'On', 'good')`,
    [id("binary_output_1")],
  );
  if (dialect === "portable") await rebuildPortableRollups(pool);
  return { ai1, ao1: id("analog_output_1"), bo1: id("binary_output_1") };
}

/**
 * The portable dialect keeps its rollups in `<view>_state` tables that the ingest writer updates in
 * the insert transaction; readings inserted here by SQL get the same state computed in one go.
 */
async function rebuildPortableRollups(pool: pg.Pool): Promise<void> {
  for (const [state, size] of [
    ["readings_hourly_state", "hour"],
    ["readings_daily_state", "day"],
  ] as const) {
    await pool.query(`DELETE FROM ${state}`);
    await pool.query(
      `INSERT INTO ${state} (point_id, bucket, sum, count, min, max, first, first_time, last, last_time)
       SELECT point_id, date_trunc('${size}', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', sum(value), count(value),
              min(value), max(value),
              (array_agg(value ORDER BY time))[1], min(time), (array_agg(value ORDER BY time DESC))[1], max(time)
       FROM readings WHERE value IS NOT NULL GROUP BY 1, 2`,
    );
  }
}

export interface AppFixture {
  app: FastifyInstance;
  close(): Promise<void>;
}

/** The app over a pool, with a relay that is never connected (no broker: commands answer 503). */
export async function appWithoutBroker(pool: pg.Pool, options: ApiOptions = {}): Promise<AppFixture> {
  const relay = new CommandRelay({
    url: "mqtt://127.0.0.1:1",
    baseTopic: "bacmqtt",
    log: createLogger("test-relay"),
  });
  const app = await buildApp({ pool, relay, defaultMetrics: false, ...options });
  await app.ready();
  return { app, close: () => app.close() };
}

export const auth = (key: string) => ({ authorization: `Bearer ${key}` });
