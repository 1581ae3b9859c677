// Storage policies: compression and retention ages (configurable at `bacmqtt migrate`), the
// continuous-aggregate refresh policies of the timescale dialect, and the retention job of the
// portable dialect (run by `bacmqtt ingest`). Ages are stored in storage_settings so a later
// `migrate` without flags keeps them and the portable job can read them.
import type pg from "pg";
import type { Logger } from "../common/logger.ts";
import { withClient } from "./db.ts";
import type { Dialect } from "./migrations/index.ts";

export interface StoragePolicies {
  /** Compress raw chunks older than this (timescale only); null = never. */
  compress_after: string | null;
  /** Drop raw readings older than this; null = keep forever. */
  raw_retention: string | null;
  /** Drop hourly rollups older than this; null = keep forever. */
  hourly_retention: string | null;
  /** Drop daily rollups older than this; null = keep forever. */
  daily_retention: string | null;
}

export const DEFAULT_POLICIES: StoragePolicies = {
  compress_after: "7 days",
  raw_retention: "365 days",
  hourly_retention: "1825 days",
  daily_retention: null,
};

export const POLICY_KEYS = Object.keys(DEFAULT_POLICIES) as (keyof StoragePolicies)[];

const AGE = /^\s*\d+\s*(minutes?|hours?|days?|weeks?|months?|years?)\s*$/i;

/** `"30 days"`, `"2 years"`, or `off`/`never` (null). Returns a problem string when invalid. */
export function parseAge(text: string): { value: string | null } | { problem: string } {
  if (/^(off|never|none)$/i.test(text.trim())) return { value: null };
  if (!AGE.test(text))
    return { problem: `"${text}" is not an age like "30 days", "12 weeks", "2 years" or "off"` };
  return { value: text.trim().toLowerCase() };
}

async function storedPolicies(client: pg.ClientBase): Promise<Partial<StoragePolicies>> {
  const { rows } = await client.query<{ key: string; value: string | null }>(
    "SELECT key, value FROM storage_settings WHERE key = ANY($1::text[])",
    [POLICY_KEYS],
  );
  const out: Partial<StoragePolicies> = {};
  for (const r of rows) out[r.key as keyof StoragePolicies] = r.value;
  return out;
}

/** Effective policies: explicit overrides, then what an earlier migrate stored, then defaults. */
export async function effectivePolicies(
  client: pg.ClientBase,
  overrides: Partial<StoragePolicies> = {},
): Promise<StoragePolicies> {
  const stored = await storedPolicies(client);
  const out = { ...DEFAULT_POLICIES };
  for (const key of POLICY_KEYS) {
    if (key in stored) out[key] = stored[key] ?? null;
    const override = overrides[key];
    if (override === null) out[key] = null;
    else if (override !== undefined) {
      const parsed = parseAge(override);
      if ("problem" in parsed) throw new Error(`invalid storage policies: ${key}: ${parsed.problem}`);
      out[key] = parsed.value;
    }
  }
  return out;
}

/**
 * Stores the policies and, for timescale, (re)creates every background job so the call is
 * idempotent. Runs on one client inside the caller's transaction.
 */
export async function applyPolicies(
  client: pg.ClientBase,
  dialect: Dialect,
  policies: StoragePolicies,
): Promise<void> {
  for (const key of POLICY_KEYS) {
    await client.query(
      `INSERT INTO storage_settings (key, value, updated_at) VALUES ($1, $2, now())
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()`,
      [key, policies[key]],
    );
  }
  // Refuse ages that would make a refresh recompute buckets from data a retention already dropped.
  const { rows } = await client.query<{ raw_ok: boolean; hourly_ok: boolean }>(
    `SELECT ($1::interval IS NULL OR $1::interval >= INTERVAL '2 days') AS raw_ok,
            ($2::interval IS NULL OR $2::interval >= INTERVAL '70 days') AS hourly_ok`,
    [policies.raw_retention, policies.hourly_retention],
  );
  const problems: string[] = [];
  if (!rows[0]?.raw_ok) problems.push("raw_retention must be at least 2 days");
  if (!rows[0]?.hourly_ok)
    problems.push("hourly_retention must be at least 70 days (the daily refresh window is 35 days)");
  if (problems.length) throw new Error(`invalid storage policies: ${problems.join("; ")}`);
  if (dialect !== "timescale") return;

  // Hourly refresh: late rows up to 30 days old (or half the raw retention, if shorter) are
  // folded in; older late rows need a manual refresh_continuous_aggregate (docs/storage.md).
  await client.query("SELECT remove_continuous_aggregate_policy('readings_hourly', true)");
  await client.query(
    `SELECT add_continuous_aggregate_policy('readings_hourly',
       start_offset => LEAST(INTERVAL '30 days', COALESCE($1::interval / 2, INTERVAL '30 days')),
       end_offset => INTERVAL '1 hour',
       schedule_interval => INTERVAL '30 minutes')`,
    [policies.raw_retention],
  );
  await client.query("SELECT remove_continuous_aggregate_policy('readings_daily', true)");
  await client.query(
    `SELECT add_continuous_aggregate_policy('readings_daily',
       start_offset => INTERVAL '35 days',
       end_offset => INTERVAL '1 hour',
       schedule_interval => INTERVAL '1 hour')`,
  );
  await client.query("SELECT remove_compression_policy('readings', true)");
  if (policies.compress_after) {
    await client.query("SELECT add_compression_policy('readings', $1::interval)", [policies.compress_after]);
  }
  for (const [relation, age] of [
    ["readings", policies.raw_retention],
    ["readings_hourly", policies.hourly_retention],
    ["readings_daily", policies.daily_retention],
  ] as const) {
    await client.query("SELECT remove_retention_policy($1::regclass, true)", [relation]);
    if (age) await client.query("SELECT add_retention_policy($1::regclass, $2::interval)", [relation, age]);
  }
}

const DELETE_CHUNK = 10_000;
const MAX_CHUNKS_PER_RUN = 1_000;

/**
 * Portable retention job: deletes raw rows and rollup buckets older than their ages, in bounded
 * chunks so no single transaction holds locks for long. Deleting raw rows never touches the
 * rollups (they have their own ages), as with Timescale's retention on continuous aggregates.
 */
export async function runPortableRetention(pool: pg.Pool, log: Logger): Promise<Record<string, number>> {
  const deleted = await withClient(pool, async (client) => {
    const out: Record<string, number> = {};
    const policies = await effectivePolicies(client);
    for (const [table, column, age] of [
      ["readings", "time", policies.raw_retention],
      ["readings_hourly_state", "bucket", policies.hourly_retention],
      ["readings_daily_state", "bucket", policies.daily_retention],
    ] as const) {
      out[table] = 0;
      if (!age) continue;
      for (let i = 0; i < MAX_CHUNKS_PER_RUN; i++) {
        const res = await client.query(
          `DELETE FROM ${table} WHERE ctid IN (
             SELECT ctid FROM ${table} WHERE ${column} < now() - $1::interval LIMIT ${DELETE_CHUNK})`,
          [age],
        );
        out[table] += res.rowCount ?? 0;
        if ((res.rowCount ?? 0) < DELETE_CHUNK) break;
      }
    }
    return out;
  });
  log.info({ deleted }, "retention job done");
  return deleted;
}
