// Benchmark of the api's read paths at 10,000 devices and one year of hourly data: the inventory
// route (`GET /api/devices` sorted by name, a random one of its 200 pages of 50: the first page
// without a cursor and with the total count, the others by the `cursor` of the page before, as
// docs/api.md says to page) and the hourly-stats route (`GET /api/points/:id/stats?period=hourly`,
// last 7 days of a random point), over real HTTP on loopback with a viewer key, against the very
// same SQL statements (built by the route's own functions, same parameters) run bare on the same
// pool. Legacy `offset` paging is measured too and reported in the notes.
// Storage: plain PostgreSQL (portable dialect), a fresh database created and dropped here.
// Data, set-based with generate_series: 10 gateways, 10,000 devices, 100,000 points (10 per
// device); one year of hourly rollups (8,760 buckets) for a subset of 100 points (876,000 rows) —
// the full 100,000 points × 8,760 would be 876 M rows, far beyond a bounded run; the query reads
// one point's slice through the (point_id, bucket) key, so its cost does not depend on how many
// other points have data.
// Run alone: npx tsx bench/api.bench.ts
import os from "node:os";
import { performance } from "node:perf_hooks";
import pg from "pg";
import { buildApp } from "../api/app.ts";
import { createKey } from "../api/keys.ts";
import { CommandRelay } from "../api/relay.ts";
import { STATS_SQL } from "../api/routes/history.ts";
import {
  decodeCursor,
  deviceCountStatement,
  deviceListStatement,
  type KeyValue,
} from "../api/routes/inventory.ts";
import { createLogger } from "../common/logger.ts";
import { migrate } from "../ingest/migrate.ts";
import { createPostgresDatabase } from "../test/support/db-postgres.ts";

const DEVICES = 10_000;
const POINTS_PER_DEVICE = 10;
const HOURLY_POINTS = 100;
const HOURS = 365 * 24;
const ROUNDS = 5;
const REQUESTS = 200;
const WARMUP = 20;

function quantile(sorted: number[], q: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i] as number;
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const r2 = (n: number) => Math.round(n * 100) / 100;

async function time(fn: () => Promise<void>, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await fn();
    out.push(performance.now() - t);
  }
  return out.sort((a, b) => a - b);
}

async function main(): Promise<void> {
  const log = (m: string) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${m}\n`);
  const db = await createPostgresDatabase("bacmqtt_bench_api");
  const pool = new pg.Pool({ connectionString: db.url, max: 8 });
  try {
    await migrate(pool, { dialect: "portable" });
    const t0 = performance.now();
    await pool.query(
      `INSERT INTO gateways (gateway_id, base_topic, state, bd_seq, last_seen)
       SELECT 'gw' || g, 'bacmqtt', 'online', 1, now() FROM generate_series(1, 10) g`,
    );
    await pool.query(
      `INSERT INTO devices (gateway_id, device_instance, object_name, description, location, vendor_id, vendor_name,
                            model_name, address, online, last_seen)
       SELECT 'gw' || (1 + i % 10), 100000 + i,
              (ARRAY['AHU','VAV','FCU','BLR','CHL','RTU'])[1 + i % 6] || '-' || i,
              'Generated device ' || i, 'Level ' || (i % 40), 999 - i % 7,
              (ARRAY['Acme Controls','Building Co','Delta','Siemens','Johnson','Honeywell','Distech'])[1 + i % 7],
              'Model ' || (i % 13), '10.' || (i / 65536) || '.' || ((i / 256) % 256) || '.' || (i % 256) || ':47808',
              i % 17 <> 0, now() - (i % 3600) * interval '1 second'
       FROM generate_series(0, $1 - 1) i`,
      [DEVICES],
    );
    await pool.query(
      `INSERT INTO points (gateway_id, device_instance, point, object_type, object_instance, name, units, writable)
       SELECT d.gateway_id, d.device_instance, 'analog_input_' || k, 'analog-input', k, 'Sensor ' || k,
              'degrees-celsius', false
       FROM devices d CROSS JOIN generate_series(1, $1) k`,
      [POINTS_PER_DEVICE],
    );
    const { rows: subset } = await pool.query<{ point_id: string }>(
      "SELECT point_id FROM points ORDER BY point_id LIMIT $1",
      [HOURLY_POINTS],
    );
    const ids = subset.map((r) => Number(r.point_id));
    // One year of hourly rollups ending at the current hour, written as the ingest writes them: hour
    // after hour, so one point's week lies on ~170 heap pages, not on a few (as a per-point bulk
    // load would lay it out, flattering the stats query).
    await pool.query(
      `INSERT INTO readings_hourly_state (point_id, bucket, sum, count, min, max, first, first_time, last, last_time)
       SELECT p, b, 360 * v, 360, v - 2, v + 2, v - 1, b, v + 1, b + interval '59 minutes'
       FROM unnest($1::bigint[]) p,
            generate_series(date_trunc('hour', now()) - ($2 - 1) * interval '1 hour', date_trunc('hour', now()), interval '1 hour') b,
            LATERAL (SELECT 20 + 5 * sin(extract(epoch FROM b) / 43200.0) + (p % 5) AS v) x
       ORDER BY b, p`,
      [ids, HOURS],
    );
    await pool.query(
      `INSERT INTO readings_daily_state (point_id, bucket, sum, count, min, max, first, first_time, last, last_time)
       SELECT point_id, date_trunc('day', bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', sum(sum), sum(count), min(min), max(max),
              min(first), min(first_time), max(last), max(last_time)
       FROM readings_hourly_state GROUP BY 1, 2 ORDER BY 2, 1`,
    );
    await pool.query("VACUUM ANALYZE");
    const counts = (
      await pool.query(
        `SELECT (SELECT count(*) FROM devices)::int AS devices, (SELECT count(*) FROM points)::int AS points,
                (SELECT count(*) FROM readings_hourly)::int AS hourly`,
      )
    ).rows[0];
    log(`data: ${JSON.stringify(counts)} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    const { key } = await createKey(pool, "bench", "viewer");
    const relay = new CommandRelay({
      url: "mqtt://127.0.0.1:1",
      baseTopic: "bacmqtt",
      log: createLogger("bench"),
    });
    const app = await buildApp({ pool, relay, defaultMetrics: false, rateLimit: false, docs: false });
    await app.listen({ host: "127.0.0.1", port: 0 });
    const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
    const headers = { authorization: `Bearer ${key}` };
    const pages = Math.floor(DEVICES / 50);
    let seed = 1;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const get = async (path: string) => {
      const res = await fetch(`${base}${path}`, { headers });
      if (res.status !== 200) throw new Error(`${path}: HTTP ${res.status} ${await res.text()}`);
      await res.arrayBuffer();
    };
    const to = new Date();
    const from = new Date(to.getTime() - 7 * 86400e3);
    // The cursors of every page, walked once through the route itself (and checked: every device
    // exactly once, in order, no page short before the last).
    const cursors: (string | null)[] = [null];
    const walked = new Set<string>();
    for (let i = 0; i < pages + 1; i++) {
      const cursor = cursors[cursors.length - 1];
      const page = (await (
        await fetch(`${base}/api/devices?sort=name&limit=50${cursor ? `&cursor=${cursor}` : ""}`, { headers })
      ).json()) as { next_cursor: string | null; items: { gateway_id: string; device_instance: number }[] };
      for (const d of page.items) walked.add(`${d.gateway_id}/${d.device_instance}`);
      if (page.next_cursor === null) break;
      if (page.items.length !== 50) throw new Error(`page ${cursors.length} has ${page.items.length} rows`);
      cursors.push(page.next_cursor);
    }
    if (cursors.length !== pages || walked.size !== DEVICES)
      throw new Error(`cursor walk: ${cursors.length} pages, ${walked.size} devices`);
    const afters = cursors.map((c) => (c === null ? undefined : decodeCursor(c, "name", "asc")));
    const inventoryOurs = () => {
      const i = rnd(pages);
      return get(`/api/devices?sort=name&limit=50${i === 0 ? "" : `&cursor=${cursors[i]}`}`);
    };
    const bareList = (after: KeyValue[] | undefined, offset?: number) =>
      deviceListStatement({ sort: "name", order: "asc", limit: 50, after, offset });
    const bareCount = deviceCountStatement({});
    // What the route runs: the page, and on a first page the count at the same time.
    const inventoryBare = async () => {
      const after = afters[rnd(pages)];
      await Promise.all([
        pool.query(bareList(after)),
        after === undefined ? pool.query(bareCount) : undefined,
      ]);
    };
    const firstOurs = () => get("/api/devices?sort=name&limit=50");
    const firstBare = async () => {
      await Promise.all([pool.query(bareList(undefined)), pool.query(bareCount)]);
    };
    const offsetOurs = () => get(`/api/devices?sort=name&limit=50&offset=${rnd(pages) * 50}`);
    const offsetBare = async () => {
      await Promise.all([pool.query(bareList(undefined, rnd(pages) * 50)), pool.query(bareCount)]);
    };
    const statsOurs = () =>
      get(
        `/api/points/${ids[rnd(ids.length)]}/stats?period=hourly&from=${from.toISOString()}&to=${to.toISOString()}`,
      );
    const statsBare = async () => {
      await pool.query(STATS_SQL.hourly, [ids[rnd(ids.length)], from, to, 5000]);
    };
    // Sanity: the route returns what the bare statement returns.
    const check = (await (
      await fetch(
        `${base}/api/points/${ids[0]}/stats?period=hourly&from=${from.toISOString()}&to=${to.toISOString()}`,
        { headers },
      )
    ).json()) as { rows: unknown[] };
    if (check.rows.length < 167) throw new Error(`stats returned ${check.rows.length} rows, expected 168`);
    const inv = (await (await fetch(`${base}/api/devices?limit=50`, { headers })).json()) as {
      total: number;
    };
    if (inv.total !== DEVICES) throw new Error(`inventory total ${inv.total}`);

    const results: Record<string, { p50: number[]; p99: number[] }> = {};
    const record = (name: string, samples: number[]) => {
      if (!results[name]) results[name] = { p50: [], p99: [] };
      const r = results[name];
      r.p50.push(quantile(samples, 0.5));
      r.p99.push(quantile(samples, 0.99));
    };
    const loads: number[] = [];
    const fns = {
      inventoryOurs,
      inventoryBare,
      firstOurs,
      firstBare,
      offsetOurs,
      offsetBare,
      statsOurs,
      statsBare,
    };
    for (const fn of Object.values(fns)) await time(fn, WARMUP);
    for (let round = 0; round < ROUNDS; round++) {
      record("inventory", await time(inventoryOurs, REQUESTS));
      record("inventory_bare", await time(inventoryBare, REQUESTS));
      record("stats", await time(statsOurs, REQUESTS));
      record("stats_bare", await time(statsBare, REQUESTS));
      record("first", await time(firstOurs, REQUESTS / 2));
      record("first_bare", await time(firstBare, REQUESTS / 2));
      record("offset", await time(offsetOurs, REQUESTS / 2));
      record("offset_bare", await time(offsetBare, REQUESTS / 2));
      loads.push(os.loadavg()[0] as number);
      log(`round ${round + 1}/${ROUNDS} done, load average ${loads[loads.length - 1]?.toFixed(2)}`);
    }
    const summary = (name: string) => {
      const r = results[name] as { p50: number[]; p99: number[] };
      const b = results[`${name}_bare`] as { p50: number[]; p99: number[] };
      return `p50 ${r2(median(r.p50))} ms, p99 ${r2(median(r.p99))} ms (bare p50 ${r2(median(b.p50))}, p99 ${r2(median(b.p99))})`;
    };
    const firstNote = `first page alone (with the total count): ${summary("first")}`;
    const offsetNote = `legacy offset paging, random offset: ${summary("offset")}`;
    await app.close();

    const row = (name: string, label: string, q: "p50" | "p99", target: number | null, notes: string) => {
      const ours = results[name]?.[q] as number[];
      const bare = results[`${name}_bare`]?.[q] as number[];
      const value = r2(median(ours));
      const baseline = r2(median(bare));
      const out = {
        benchmark: "api",
        row: `${label} ${q} (10,000 devices)`,
        unit: "ms",
        value,
        min: r2(Math.min(...ours)),
        max: r2(Math.max(...ours)),
        baseline: "bare SQL",
        baseline_value: baseline,
        ratio: r2(value / baseline),
        target: target === null ? null : `p99 < ${target} ms`,
        met: target === null ? null : value < target,
        saturated: `no: one request at a time (latency, not throughput); ${load}`,
        notes,
      };
      process.stdout.write(`BENCH_ROW ${JSON.stringify(out)}\n`);
    };
    const invNotes = `GET /api/devices?sort=name&limit=50, a random page of ${pages}: the first without a cursor (page and total count as two statements in parallel), the others by cursor (keyset: one index walk, no count); over HTTP with a viewer key; ${ROUNDS}×${REQUESTS} requests; portable dialect, schema as migrated; ${firstNote}; ${offsetNote}`;
    const load = `load average ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)} (1 min, after each round) on ${os.cpus().length} cores; other work on the machine shares them`;
    const statsNotes = `GET /api/points/:id/stats?period=hourly, 7 days (168 rows) of a random point; 1 year of hourly rollups for ${HOURLY_POINTS} of ${DEVICES * POINTS_PER_DEVICE} points (${counts.hourly} rows, written in time order as the ingest writes them); ${ROUNDS}×${REQUESTS} requests; portable dialect`;
    row("inventory", "inventory", "p50", null, invNotes);
    row("inventory", "inventory", "p99", 20, invNotes);
    row("stats", "hourly-stats", "p50", null, statsNotes);
    row("stats", "hourly-stats", "p99", 50, statsNotes);
  } finally {
    await pool.end();
    await db.drop();
  }
}

await main();
