// Every connection to the database terminated again and again while the gateway polls and a second
// publisher keeps the ingest busy (`pg_terminate_backend`, as a PostgreSQL restart or a failover does
// to its clients): transactions die mid-way, a COMMIT may be cut after the server committed it. The
// ingest must retry the batch and lose nothing, and a retried batch must not count twice: no
// duplicate rows, and the hourly and daily rollups equal the same aggregates computed from the raw
// rows. The machine's PostgreSQL service is never restarted (other suites use it): only this test's
// own database's backends are terminated.
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, expect, it } from "vitest";
import { aggregates, count, rawAggregateSql } from "../integration/ingest/helpers.ts";
import { readingKey } from "./gateway-process.ts";
import { eventually, Pipeline, report, sleep } from "./support.ts";

const KILL_S = 20;
const step = (what: string) =>
  process.stdout.write(`database-kill: ${what} at ${new Date().toISOString()}\n`);
const KILL_EVERY_MS = 250;
let p: Pipeline | undefined;
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await p?.close();
});

/**
 * QoS 1 readings messages for gateway `gw` (10 points × one timestamp each, timestamps 61 s apart
 * so the rows cover several hours and days of rollup buckets), `workers` in flight at once.
 */
function burst(url: string, gw: string, workers = 3) {
  const acked = new Set<string>();
  const client = mqtt.connect(url, { clientId: `burst-${gw}`, clean: true, reconnectPeriod: 200 });
  client.on("error", () => undefined);
  let stopped = false;
  let n = 0;
  const t0 = Date.parse("2026-01-01T00:00:00Z");
  const work = async () => {
    while (!stopped) {
      if (!client.connected) {
        await sleep(50);
        continue;
      }
      const i = n++;
      const ts = new Date(t0 + i * 61_000).toISOString();
      const readings = Array.from({ length: 10 }, (_, k) => ({
        point: `analog_value_${k}`,
        value: ((i * 37 + k * 11) % 1000) / 10,
        ts,
      }));
      const ok = await client
        .publishAsync(`bacmqtt/${gw}/1/readings`, JSON.stringify({ device: 1, source: "poll", readings }), {
          qos: 1,
        })
        .then(
          () => true,
          () => false,
        );
      if (ok) for (const r of readings) acked.add(readingKey({ device: 1, ...r }));
      await sleep(20); // a steady stream, not a flood: the kills need no backlog to hit a batch
    }
  };
  const loop = Promise.all(Array.from({ length: workers }, work));
  return {
    acked,
    async stop() {
      stopped = true;
      await loop;
      await client.endAsync(true);
    },
  };
}

it("loses nothing and counts nothing twice while every database connection is killed repeatedly", {
  timeout: 150_000,
}, async () => {
  const started = Date.now();
  p = await Pipeline.start({ label: "dbkill", subnet: 97 });
  const pipe = p;
  await pipe.waitProduced(90, "steady polling");
  await eventually(async () => (await pipe.storedCount()) > 0, "first rows stored");
  const burstGw = "faults-dbkill-burst";
  const b = burst(pipe.broker.url, burstGw);
  cleanups.push(() => b.stop());
  await eventually(async () => b.acked.size >= 500, "burst acknowledged", 300);

  // Every backend of the test database terminated: at least every KILL_EVERY_MS, and at once
  // whenever one of them is inside a transaction (looked at every 20 ms), so that most kills cut a
  // batch mid-way whatever the load. The statement is the one an operator would run.
  const admin = new pg.Client({ connectionString: pipe.db.url.replace(/\/[^/]+$/, "/postgres") });
  await admin.connect();
  cleanups.push(() => admin.end());
  let rounds = 0;
  let killed = 0;
  let killedInTransaction = 0;
  const killUntil = Date.now() + KILL_S * 1000;
  const atKillStart = pipe.produced.size;
  let lastRound = 0;
  while (Date.now() < killUntil) {
    const due = Date.now() - lastRound >= KILL_EVERY_MS;
    const { rows: busy } = due
      ? { rows: [{ n: 1 }] }
      : await admin.query<{ n: number }>(
          "SELECT 1 AS n FROM pg_stat_activity WHERE datname = $1 AND xact_start IS NOT NULL LIMIT 1",
          [pipe.db.name],
        );
    if (busy.length > 0) {
      const { rows } = await admin.query<{ in_xact: boolean; killed: boolean }>(
        `SELECT xact_start IS NOT NULL AS in_xact, pg_terminate_backend(pid) AS killed
         FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
        [pipe.db.name],
      );
      rounds++;
      lastRound = Date.now();
      killed += rows.filter((r) => r.killed).length;
      killedInTransaction += rows.filter((r) => r.killed && r.in_xact).length;
    }
    await sleep(20);
  }
  step("kills done");
  const producedWhileKilling = pipe.produced.size - atKillStart;
  const burstAckedWhileKilling = b.acked.size;
  const retries = (await pipe.ingest?.metrics.retries.get())?.values[0]?.value ?? 0;
  await pipe.waitProduced(60, "polling after the kills");
  step("polled after the kills");
  await b.stop();
  step("burst stopped");
  // Bounded (30 s): a loss is reported with its figures rather than as a test timeout.
  const t = await pipe.finish(300);
  step("gateway finished");

  // The burst's readings: every acknowledged one stored (bounded wait), none twice.
  const burstStored = async () => {
    const { rows } = await pipe.pool.query<{ point: string; time: Date }>(
      `SELECT p.point, r.time FROM readings r JOIN points p USING (point_id) WHERE p.gateway_id = $1`,
      [burstGw],
    );
    return new Set(rows.map((r) => `1/${r.point}@${r.time.toISOString()}`));
  };
  // Bounded: until the row count reaches what was acknowledged or stops growing for 5 s.
  const storedCount = () =>
    count(
      pipe.pool,
      "SELECT count(*) AS n FROM readings r JOIN points p USING (point_id) WHERE p.gateway_id = $1",
      [burstGw],
    );
  let last = -1;
  for (let i = 0, still = 0; i < 300 && still < 50; i++) {
    const n = await storedCount();
    if (n >= b.acked.size) break;
    still = n === last ? still + 1 : 0;
    last = n;
    await sleep(100);
  }
  const stored = await burstStored();
  const burstLost = [...b.acked].filter((k) => !stored.has(k));
  const { rows: dup } = await pipe.pool.query<{ n: string }>(
    "SELECT count(*) - count(DISTINCT (point_id, time)) AS n FROM readings",
  );
  const mismatches: string[] = [];
  let buckets = 0;
  for (const [view, width] of [
    ["readings_hourly", "1 hour"],
    ["readings_daily", "1 day"],
  ] as const) {
    const expected = await aggregates(pipe.pool, rawAggregateSql(width));
    const actual = await aggregates(
      pipe.pool,
      `SELECT bucket, point_id, avg, min, max, count, first, last FROM ${view} ORDER BY point_id, bucket`,
    );
    buckets += expected.length;
    const want = new Map(expected.map((r) => [`${r.point_id}@${r.bucket}`, JSON.stringify(r)]));
    const got = new Map(actual.map((r) => [`${r.point_id}@${r.bucket}`, JSON.stringify(r)]));
    for (const k of new Set([...want.keys(), ...got.keys()]))
      if (want.get(k) !== got.get(k)) mismatches.push(`${view} ${k}: ${got.get(k)} ≠ raw ${want.get(k)}`);
  }
  report("database connections killed repeatedly", {
    kill_s: KILL_S,
    kill_rounds: rounds,
    backends_killed: killed,
    killed_in_transaction: killedInTransaction,
    ingest_retries: retries,
    produced_while_killing: producedWhileKilling,
    ...t,
    burst_produced: b.acked.size,
    burst_acked_while_killing: burstAckedWhileKilling,
    burst_stored: stored.size,
    burst_lost: burstLost.length,
    duplicate_rows: Number(dup[0]?.n ?? 0),
    rollup_buckets_compared: buckets,
    rollup_mismatches: mismatches.length,
    duration_s: Math.round((Date.now() - started) / 1000),
  });
  expect(killedInTransaction).toBeGreaterThan(0);
  expect(retries).toBeGreaterThan(0);
  expect(t.lostSample).toEqual([]);
  expect(t.lost).toBe(0);
  expect(burstLost.slice(0, 5)).toEqual([]);
  expect(Number(dup[0]?.n ?? 0)).toBe(0);
  expect(buckets).toBeGreaterThan(100);
  expect(mismatches.slice(0, 5)).toEqual([]);
});
