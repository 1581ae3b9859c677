// The portable retention job: deletes raw rows and rollup buckets older than their stored ages and
// nothing younger; raw deletion leaves the rollups alone.
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createLogger } from "../../../common/logger.ts";
import { migrate } from "../../../ingest/migrate.ts";
import { runPortableRetention } from "../../../ingest/policies.ts";
import { createPostgresDatabase, type TestDatabase } from "../../support/db-postgres.ts";
import { count } from "./helpers.ts";

let db: TestDatabase;
let pool: pg.Pool;
beforeAll(async () => {
  db = await createPostgresDatabase("bacmqtt_retention");
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
  await migrate(pool, {
    dialect: "portable",
    policies: { raw_retention: "30 days", hourly_retention: "90 days", daily_retention: null },
  });
});
afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

it("drops raw rows and hourly buckets past their ages, keeps the rest", async () => {
  await pool.query(
    `INSERT INTO readings (time, point_id, value)
     SELECT now() - make_interval(days => d) + interval '1 hour', 1, d FROM generate_series(0, 120) d`,
  );
  for (const table of ["readings_hourly_state", "readings_daily_state"]) {
    await pool.query(
      `INSERT INTO ${table} (point_id, bucket, sum, count, min, max, first, first_time, last, last_time)
       SELECT 1, date_trunc('hour', now()) - make_interval(days => d) + interval '1 hour', 1, 1, 1, 1, 1, now(), 1, now()
       FROM generate_series(0, 120) d`,
    );
  }
  const deleted = await runPortableRetention(pool, createLogger("test"));
  expect(deleted).toEqual({ readings: 90, readings_hourly_state: 30, readings_daily_state: 0 });
  expect(
    await count(pool, "SELECT count(*) AS n FROM readings WHERE time < now() - interval '30 days'"),
  ).toBe(0);
  expect(await count(pool, "SELECT count(*) AS n FROM readings")).toBe(31);
  expect(await count(pool, "SELECT count(*) AS n FROM readings_hourly")).toBe(91);
  expect(await count(pool, "SELECT count(*) AS n FROM readings_daily")).toBe(121);
});
