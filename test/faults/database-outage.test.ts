// Database down for 60 s (FAULTS_DB_OUTAGE_S to change) while the gateway polls 3 devices × 10 points every second: the ingest
// stalls without acknowledging, the broker holds the QoS 1 messages, and nothing is lost.
import { afterAll, expect, it } from "vitest";
import { setDatabaseOnline } from "../support/db-postgres.ts";
import { eventually, Pipeline, report, sleep } from "./support.ts";

const OUTAGE_S = Number(process.env.FAULTS_DB_OUTAGE_S ?? 60);
let p: Pipeline | undefined;
afterAll(async () => {
  if (p) await setDatabaseOnline(p.db, true).catch(() => undefined);
  await p?.close();
});

it(`loses no reading across a ${OUTAGE_S} s database outage`, {
  timeout: 120_000 + OUTAGE_S * 1000,
}, async () => {
  const started = Date.now();
  p = await Pipeline.start({ label: "dbdown", subnet: 81 });
  const pipe = p;
  await pipe.waitProduced(150, "steady polling");
  await eventually(async () => (await pipe.storedCount()) > 0, "first rows stored");
  await setDatabaseOnline(pipe.db, false);
  const atOutage = pipe.produced.size;
  await sleep(OUTAGE_S * 1000);
  const duringOutage = pipe.produced.size - atOutage;
  const retries = (await pipe.ingest?.metrics.retries.get())?.values[0]?.value ?? 0;
  await setDatabaseOnline(pipe.db, true);
  await pipe.waitProduced(100, "polling after the outage");
  const t = await pipe.finish();
  report("database down", {
    outage_s: OUTAGE_S,
    produced_during_outage: duringOutage,
    ingest_retries: retries,
    ...t,
    duration_s: Math.round((Date.now() - started) / 1000),
  });
  expect(duringOutage).toBeGreaterThan(0);
  expect(retries).toBeGreaterThan(0);
  expect(t.lostSample).toEqual([]);
  expect(t.lost).toBe(0);
});
