// Applies the migrations of ingest/migrations/ in order, once each, under an advisory lock so that
// several processes starting together (ingest replicas, api) migrate exactly once. Chooses the
// storage dialect (timescale when the extension is available, else portable) unless forced, and
// (re)applies the storage policies. Owns schema_migrations; touches no data.
import type pg from "pg";
import { CodedError, errorMessage } from "../common/errors.ts";
import { createLogger, type Logger } from "../common/logger.ts";
import { type Db, withClient } from "./db.ts";
import { type Dialect, MIGRATIONS } from "./migrations/index.ts";
import { applyPolicies, effectivePolicies, type StoragePolicies } from "./policies.ts";

export type { Dialect } from "./migrations/index.ts";

export interface MigrateOptions {
  dialect?: "auto" | Dialect;
  /** Overrides for compression/retention ages; absent keys keep the stored (or default) value. */
  policies?: Partial<StoragePolicies>;
  log?: Logger;
}

export interface MigrateResult {
  dialect: Dialect;
  applied: number[];
}

// Arbitrary but fixed: pg_advisory_lock key shared by every bacmqtt process.
const MIGRATION_LOCK = 0x6261636d; // "bacm"

async function schemaDialect(client: pg.ClientBase): Promise<Dialect | undefined> {
  const { rows } = await client.query<{ exists: boolean }>(
    "SELECT to_regclass('schema_migrations') IS NOT NULL AS exists",
  );
  if (!rows[0]?.exists) return undefined;
  const res = await client.query<{ dialect: Dialect }>(
    "SELECT dialect FROM schema_migrations ORDER BY version LIMIT 1",
  );
  return res.rows[0]?.dialect;
}

/**
 * The dialect a database has or would get: the one recorded by an earlier migrate; else timescale
 * when the extension is installed or installable; else portable. Read-only.
 */
export async function detectDialect(db: Db): Promise<Dialect> {
  return withClient(db, async (client) => {
    const recorded = await schemaDialect(client);
    if (recorded) return recorded;
    const { rows } = await client.query<{ available: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
           OR EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') AS available`,
    );
    return rows[0]?.available ? "timescale" : "portable";
  });
}

async function inTransaction<T>(client: pg.ClientBase, fn: () => Promise<T>): Promise<T> {
  await client.query("BEGIN");
  try {
    await client.query("SET LOCAL client_min_messages = warning");
    const out = await fn();
    await client.query("COMMIT");
    return out;
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw err;
  }
}

export async function migrate(db: Db, opts: MigrateOptions = {}): Promise<MigrateResult> {
  const log = opts.log ?? createLogger("migrate");
  const requested = opts.dialect ?? "auto";
  return withClient(db, async (client) => {
    await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK]);
    try {
      await inTransaction(client, () =>
        client.query(
          `CREATE TABLE IF NOT EXISTS schema_migrations (
             version    int PRIMARY KEY,
             dialect    text NOT NULL CHECK (dialect IN ('timescale', 'portable')),
             applied_at timestamptz NOT NULL DEFAULT now()
           )`,
        ),
      );
      const recorded = await schemaDialect(client);
      let dialect: Dialect;
      if (recorded) {
        if (requested !== "auto" && requested !== recorded) {
          throw new CodedError(
            "DB_ERR_DIALECT_MISMATCH",
            `this database was migrated with the ${recorded} dialect; it cannot be migrated as ${requested}`,
          );
        }
        dialect = recorded;
      } else {
        dialect = requested === "auto" ? await detectDialect(client) : requested;
        if (dialect === "timescale") {
          try {
            await inTransaction(client, () => client.query("CREATE EXTENSION IF NOT EXISTS timescaledb"));
          } catch (err) {
            if (requested === "timescale") {
              throw new CodedError(
                "DB_ERR_NO_TIMESCALEDB",
                `timescaledb is not usable: ${errorMessage(err)}`,
                {
                  cause: err,
                },
              );
            }
            log.warn(
              { err: errorMessage(err) },
              "timescaledb is available but cannot be created; using portable",
            );
            dialect = "portable";
          }
        }
      }

      const { rows } = await client.query<{ version: number }>("SELECT version FROM schema_migrations");
      const done = new Set(rows.map((r) => r.version));
      const applied: number[] = [];
      for (const m of MIGRATIONS) {
        if (done.has(m.version)) continue;
        const ran = await inTransaction(client, async () => {
          // Checked again inside the transaction: on PGlite every connection is the same backend, so
          // the advisory lock does not exclude a concurrent migrate there, but transactions do.
          const again = await client.query("SELECT 1 FROM schema_migrations WHERE version = $1", [m.version]);
          if (again.rowCount) return false;
          for (const sql of m.statements(dialect)) await client.query(sql);
          await client.query(
            "INSERT INTO schema_migrations (version, dialect, applied_at) VALUES ($1, $2, now())",
            [m.version, dialect],
          );
          return true;
        });
        if (!ran) continue;
        log.info({ version: m.version, name: m.name, dialect }, "migration applied");
        applied.push(m.version);
      }

      await inTransaction(client, async () => {
        const policies = await effectivePolicies(client, opts.policies);
        await applyPolicies(client, dialect, policies);
      });
      return { dialect, applied };
    } finally {
      await client.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK]).catch(() => undefined);
    }
  });
}
