// Test databases on the real PostgreSQL of this machine (127.0.0.1:5432, trust auth, user postgres,
// or whatever PGHOST/PGPORT/PGUSER/PGPASSWORD say): one uniquely named database per test file,
// dropped afterwards. Used by the ingest, api and dashboards suites.
import { randomBytes } from "node:crypto";
import pg from "pg";

export interface TestDatabase {
  /** postgres:// URL of the fresh database. */
  url: string;
  name: string;
  /** Drops the database (terminating leftover connections). Safe to call twice. */
  drop(): Promise<void>;
}

function adminConfig(): pg.ClientConfig {
  return {
    host: process.env.PGHOST ?? "127.0.0.1",
    port: Number(process.env.PGPORT ?? 5432),
    user: process.env.PGUSER ?? "postgres",
    ...(process.env.PGPASSWORD ? { password: process.env.PGPASSWORD } : {}),
    database: "postgres",
  };
}

function urlFor(cfg: pg.ClientConfig, database: string): string {
  const auth = cfg.password
    ? `${encodeURIComponent(String(cfg.user))}:${encodeURIComponent(String(cfg.password))}`
    : encodeURIComponent(String(cfg.user));
  return `postgres://${auth}@${cfg.host}:${cfg.port}/${database}`;
}

/** A fresh empty database on the local PostgreSQL (portable dialect: no timescaledb there). */
export async function createPostgresDatabase(prefix = "bacmqtt_test"): Promise<TestDatabase> {
  const cfg = adminConfig();
  const name = `${prefix}_${process.pid}_${randomBytes(4).toString("hex")}`.toLowerCase();
  const admin = new pg.Client(cfg);
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  let dropped = false;
  return {
    url: urlFor(cfg, name),
    name,
    async drop() {
      if (dropped) return;
      dropped = true;
      const c = new pg.Client(cfg);
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

/** A fresh database, already migrated with the portable dialect. */
export async function createPortableDatabase(prefix?: string): Promise<TestDatabase> {
  const db = await createPostgresDatabase(prefix);
  const { migrate } = await import("../../ingest/migrate.ts");
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  try {
    await migrate(pool, { dialect: "portable" });
  } finally {
    await pool.end();
  }
  return db;
}

/**
 * Simulates a database outage: refuses new connections to the database and terminates the open
 * ones (online = false), or lets connections in again (online = true).
 */
export async function setDatabaseOnline(db: TestDatabase, online: boolean): Promise<void> {
  const c = new pg.Client(adminConfig());
  await c.connect();
  try {
    await c.query(`ALTER DATABASE "${db.name}" ALLOW_CONNECTIONS ${online ? "true" : "false"}`);
    if (!online) {
      await c.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        [db.name],
      );
    }
  } finally {
    await c.end();
  }
}
