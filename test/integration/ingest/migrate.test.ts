// `migrate` against both dialects through the same `pg` code: plain PostgreSQL (portable), the WASM
// TimescaleDB build over pglite-socket, and a real TimescaleDB when TIMESCALEDB_URL is set.
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { detectDialect, migrate } from "../../../ingest/migrate.ts";
import { createPostgresDatabase, type TestDatabase } from "../../support/db-postgres.ts";
import {
  createNativeTimescaleDatabase,
  startWasmTimescale,
  timescaleSkipNote,
  timescaleUrl,
} from "../../support/db-timescale.ts";

// The binding names and columns (the api and the dashboards code against exactly these).
const EXPECTED: Record<string, string[]> = {
  gateways: ["gateway_id", "base_topic", "state", "bd_seq", "info", "last_seen", "updated_at"],
  devices: [
    "gateway_id",
    "device_instance",
    "object_name",
    "description",
    "location",
    "vendor_id",
    "vendor_name",
    "model_name",
    "firmware_revision",
    "application_software_version",
    "address",
    "network",
    "mac",
    "max_apdu",
    "segmentation",
    "online",
    "last_seen",
    "updated_at",
  ],
  points: [
    "point_id",
    "gateway_id",
    "device_instance",
    "point",
    "object_type",
    "object_instance",
    "name",
    "description",
    "units",
    "units_code",
    "writable",
    "state_texts",
    "active_text",
    "inactive_text",
    "cov_increment",
    "updated_at",
  ],
  readings: ["time", "point_id", "value", "value_text", "status_flags", "quality", "historical"],
  readings_hourly: ["bucket", "point_id", "avg", "min", "max", "count", "first", "last"],
  readings_daily: ["bucket", "point_id", "avg", "min", "max", "count", "first", "last"],
  availability_events: ["time", "gateway_id", "device_instance", "state", "reason"],
  write_audit: [
    "id",
    "time",
    "gateway_id",
    "device_instance",
    "point",
    "value",
    "priority",
    "source",
    "actor",
    "result",
    "error_code",
    "error_message",
    "transaction",
  ],
  dead_letters: [
    "id",
    "received_at",
    "topic",
    "payload",
    "error",
    "fingerprint",
    "deliveries",
    "last_received_at",
  ],
  api_keys: ["id", "name", "key_hash", "role", "created_at", "last_used_at", "revoked"],
  schema_migrations: ["version", "dialect", "applied_at"],
};

async function columns(pool: pg.Pool): Promise<Record<string, { name: string; type: string }[]>> {
  const { rows } = await pool.query<{ table_name: string; column_name: string; data_type: string }>(
    `SELECT table_name, column_name, data_type FROM information_schema.columns
     WHERE table_schema = 'public' AND table_name = ANY($1::text[]) ORDER BY table_name, ordinal_position`,
    [Object.keys(EXPECTED)],
  );
  const out: Record<string, { name: string; type: string }[]> = {};
  for (const r of rows) {
    out[r.table_name] = [...(out[r.table_name] ?? []), { name: r.column_name, type: r.data_type }];
  }
  return out;
}

function suite(
  label: string,
  dialect: "portable" | "timescale",
  make: () => Promise<TestDatabase>,
  maxConnections = 4,
) {
  describe(`migrate (${label})`, () => {
    let db: TestDatabase;
    let pool: pg.Pool;
    beforeAll(async () => {
      db = await make();
      pool = new pg.Pool({ connectionString: db.url, max: maxConnections });
    });
    afterAll(async () => {
      await pool?.end();
      await db?.drop();
    });

    it(`detects the ${dialect} dialect before anything is created`, async () => {
      expect(await detectDialect(pool)).toBe(dialect);
    });

    it("applies every version exactly once even when several processes migrate at the same time", async () => {
      const results = await Promise.all([1, 2, 3].map(() => migrate(pool)));
      expect(results.map((r) => r.dialect)).toEqual([dialect, dialect, dialect]);
      expect(results.flatMap((r) => r.applied).sort()).toEqual([1, 2, 3, 4]);
      const { rows } = await pool.query("SELECT version, dialect FROM schema_migrations ORDER BY version");
      expect(rows).toEqual([
        { version: 1, dialect },
        { version: 2, dialect },
        { version: 3, dialect },
        { version: 4, dialect },
      ]);
    });

    it("is idempotent", async () => {
      expect(await migrate(pool)).toEqual({ dialect, applied: [] });
    });

    it("exposes every binding relation with exactly the binding columns, timestamps as timestamptz", async () => {
      const cols = await columns(pool);
      for (const [table, expected] of Object.entries(EXPECTED)) {
        expect(
          cols[table]?.map((c) => c.name),
          table,
        ).toEqual(expected);
        for (const c of cols[table] ?? []) {
          if (/time$|_at$|^bucket$|last_seen/.test(c.name))
            expect(c.type, `${table}.${c.name}`).toBe("timestamp with time zone");
        }
      }
      expect(cols.readings?.find((c) => c.name === "value")?.type).toBe("double precision");
      expect(cols.readings_hourly?.find((c) => c.name === "count")?.type).toBe("bigint");
    });

    it("version 4 folds dead letters stored more than once before it into the oldest row", async () => {
      // The database as version 3 left it, with a redelivered poison message stored twice.
      await pool.query("DROP INDEX dead_letters_fingerprint_idx");
      await pool.query(
        "ALTER TABLE dead_letters DROP COLUMN fingerprint, DROP COLUMN deliveries, DROP COLUMN last_received_at",
      );
      await pool.query("DELETE FROM schema_migrations WHERE version = 4");
      await pool.query(
        `INSERT INTO dead_letters (received_at, topic, payload, error) VALUES
           ('2026-01-01T00:00:00Z', 'bacmqtt/gw/1/readings', '{', 'bad JSON'),
           ('2026-01-01T00:00:05Z', 'bacmqtt/gw/1/readings', '{', 'bad JSON'),
           ('2026-01-01T00:00:09Z', 'bacmqtt/gw/1/readings', '{', 'bad JSON'),
           ('2026-01-01T00:00:07Z', 'bacmqtt/gw/1/readings', '[', 'bad JSON')`,
      );
      expect(await migrate(pool)).toEqual({ dialect, applied: [4] });
      const { rows } = await pool.query(
        "SELECT payload, received_at, last_received_at, deliveries FROM dead_letters ORDER BY id",
      );
      expect(rows).toEqual([
        {
          payload: "{",
          received_at: new Date("2026-01-01T00:00:00Z"),
          last_received_at: new Date("2026-01-01T00:00:09Z"),
          deliveries: 3,
        },
        {
          payload: "[",
          received_at: new Date("2026-01-01T00:00:07Z"),
          last_received_at: null,
          deliveries: 1,
        },
      ]);
      await expect(
        pool.query(
          "INSERT INTO dead_letters (topic, payload, error, fingerprint) SELECT topic, payload, error, fingerprint FROM dead_letters LIMIT 1",
        ),
      ).rejects.toMatchObject({ code: "23505" });
      await pool.query("DELETE FROM dead_letters");
    });

    it("refuses to switch an existing database to the other dialect", async () => {
      const other = dialect === "portable" ? "timescale" : "portable";
      await expect(migrate(pool, { dialect: other })).rejects.toMatchObject({
        code: "DB_ERR_DIALECT_MISMATCH",
      });
    });

    it("stores policy ages and keeps them on a later run without overrides", async () => {
      await migrate(pool, { policies: { raw_retention: "90 days", compress_after: "3 days" } });
      await migrate(pool);
      const { rows } = await pool.query("SELECT key, value FROM storage_settings ORDER BY key");
      expect(Object.fromEntries(rows.map((r) => [r.key, r.value]))).toEqual({
        compress_after: "3 days",
        daily_retention: null,
        hourly_retention: "1825 days",
        raw_retention: "90 days",
      });
      await expect(migrate(pool, { policies: { hourly_retention: "10 days" } })).rejects.toThrow(
        /hourly_retention/,
      );
    });

    if (dialect === "timescale") {
      it("creates the hypertable, two continuous aggregates (real-time) and the policy jobs", async () => {
        const ht = await pool.query(
          "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables WHERE hypertable_name = 'readings'",
        );
        expect(ht.rows).toEqual([{ hypertable_name: "readings", compression_enabled: true }]);
        const ca = await pool.query(
          "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates ORDER BY view_name",
        );
        expect(ca.rows).toEqual([
          { view_name: "readings_daily", materialized_only: false },
          { view_name: "readings_hourly", materialized_only: false },
        ]);
        const jobs = await pool.query(
          `SELECT proc_name, hypertable_name, config->>'compress_after' AS compress_after, config->>'drop_after' AS drop_after
           FROM timescaledb_information.jobs WHERE proc_name LIKE 'policy_%' AND hypertable_name IS NOT NULL
           ORDER BY proc_name, hypertable_name`,
        );
        expect(jobs.rows).toEqual([
          {
            proc_name: "policy_compression",
            hypertable_name: "readings",
            compress_after: "3 days",
            drop_after: null,
          },
          {
            proc_name: "policy_refresh_continuous_aggregate",
            hypertable_name: "readings_daily",
            compress_after: null,
            drop_after: null,
          },
          {
            proc_name: "policy_refresh_continuous_aggregate",
            hypertable_name: "readings_hourly",
            compress_after: null,
            drop_after: null,
          },
          {
            proc_name: "policy_retention",
            hypertable_name: "readings",
            compress_after: null,
            drop_after: "90 days",
          },
          {
            proc_name: "policy_retention",
            hypertable_name: "readings_hourly",
            compress_after: null,
            drop_after: "1825 days",
          },
        ]);
      });
    }
  });
}

suite("plain PostgreSQL, portable", "portable", () => createPostgresDatabase("bacmqtt_migrate"));
// One connection at a time: see test/support/db-timescale.ts.
suite("TimescaleDB WASM over pglite-socket", "timescale", () => startWasmTimescale(), 1);
if (timescaleUrl()) {
  suite("native TimescaleDB (TIMESCALEDB_URL)", "timescale", () =>
    createNativeTimescaleDatabase("bacmqtt_migrate"),
  );
} else {
  describe("migrate (native TimescaleDB)", () => {
    it.skip(timescaleSkipNote(), () => {});
  });
}
