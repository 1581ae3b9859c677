// Wall-clock steps on the gateway host (NTP step, manual change), without touching the machine's
// clock: the real `bacmqtt gateway` process runs under libfaketime with an offset file this test
// rewrites; only CLOCK_REALTIME (Date.now, new Date) moves, the monotonic clock (timers,
// performance.now) does not (FAKETIME_DONT_FAKE_MONOTONIC=1). Phases: real → +1 h → −1 h (earlier
// than rows already stored) → real. Broker, ingest, simulator and database run in this process on
// the real clock. Counted per phase: poll cycles, COV readings, `state` messages, availability and
// bridge/state changes, poll overruns, and the offset the readings' timestamps carry; produced (seen
// by a subscriber) vs stored rows.
import { existsSync, writeFileSync } from "node:fs";
import path from "node:path";
import pg from "pg";
import { afterAll, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../simulator/index.ts";
import { type Received, Recorder, tempDir } from "../integration/gateway/helpers.ts";
import { createPortableDatabase, type TestDatabase } from "../support/db-postgres.ts";
import {
  GatewayProcess,
  readingKey,
  readingsIn,
  startBrokerAndIngest,
  writeGatewayConfig,
} from "./gateway-process.ts";
import { report, sleep } from "./support.ts";

const LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const GW = "faults-clock";
const POLLED = [894_001, 894_002];
const COV_DEVICE = 894_003;
const HOUR_MS = 3_600_000;
const tmp = tempDir("bacmqtt-faults-clock-");
const closers: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  tmp.remove();
});

interface Phase {
  name: string;
  offsetMs: number;
  seconds: number;
}
// Long enough for one COV renewal (lifetime 60 s, renewed at 45 s) inside a stepped phase, and for
// the last phase to end after the first subscription would have expired without it.
const PHASES: Phase[] = [
  { name: "real", offsetMs: 0, seconds: 12 },
  { name: "+1h", offsetMs: HOUR_MS, seconds: 20 },
  { name: "-1h", offsetMs: -HOUR_MS, seconds: 20 },
  { name: "real again", offsetMs: 0, seconds: 18 },
];

/** Message arrival times on this process's (real) clock, by recorder index. */
function stampArrivals(rec: Recorder): number[] {
  const arrivals: number[] = [];
  const timer = setInterval(() => {
    while (arrivals.length < rec.messages.length) arrivals.push(Date.now());
  }, 5);
  closers.push(async () => clearInterval(timer));
  return arrivals;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : (s[Math.floor(s.length / 2)] as number);
};

it.skipIf(!existsSync(LIBFAKETIME))(
  "keeps polling, COV and availability through wall-clock steps of +1 h and -1 h; nothing lost",
  { timeout: 300_000 },
  async () => {
    const started = Date.now();
    const db: TestDatabase = await createPortableDatabase("bacmqtt_faults_clock");
    closers.push(() => db.drop());
    const pool = new pg.Pool({ connectionString: db.url, max: 2 });
    closers.push(() => pool.end());
    const sim: Simulator = await startSimulator({
      devices: [...POLLED, COV_DEVICE].map((instance, i) => ({
        instance,
        address: `127.0.94.${i + 1}`,
        port: 0,
        // Inputs move with changeIntervalMs (COV notifications); values stay put.
        objects: instance === COV_DEVICE ? { analog_input: 5, binary_input: 5 } : { analog_value: 10 },
        cov: instance === COV_DEVICE,
        changeIntervalMs: instance === COV_DEVICE ? 1000 : 0,
      })),
    });
    closers.push(() => sim.close());
    const { broker } = await startBrokerAndIngest(db.url, "ingest-faults-clock", closers);
    const rec = await Recorder.connect(broker.url, `bacmqtt/${GW}/#`);
    closers.push(() => rec.close());
    const arrivals = stampArrivals(rec);

    const clockFile = path.join(tmp.dir, "faketime");
    const setOffset = (ms: number) => writeFileSync(clockFile, `${ms >= 0 ? "+" : ""}${ms / 1000}\n`);
    setOffset(0);
    const config = writeGatewayConfig(tmp.dir, {
      gateway_id: GW,
      data_dir: `${tmp.dir}/data`,
      mqtt: { url: broker.url, reconnect_period_ms: 200, state_throttle_ms: 1000 },
      bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1 },
      discovery: {
        targets: sim.devices().map((d) => `${d.address}:${d.port}`),
        timeout_s: 2,
        interval_s: 0,
      },
      polling: { interval_s: 1, cov: false, cov_lifetime_s: 60 },
      devices: { [String(COV_DEVICE)]: { cov: true } },
      buffer: { fsync: "never" },
      metrics: { enabled: false },
    });
    const gw = new GatewayProcess(config, {
      LD_PRELOAD: LIBFAKETIME,
      FAKETIME_TIMESTAMP_FILE: clockFile,
      FAKETIME_NO_CACHE: "1",
      FAKETIME_DONT_FAKE_MONOTONIC: "1",
    });
    closers.push(() => gw.stop("SIGKILL"));

    gw.start();
    const seen = () => readingsIn(rec.messages);
    await rec.waitFor(
      () =>
        POLLED.every((d) => seen().filter((r) => r.device === d).length >= 30) &&
        seen().some((r) => r.device === COV_DEVICE),
      "polled and COV readings",
      90_000,
    );

    // ---- the phases ----------------------------------------------------------------------------
    const bounds: { phase: Phase; from: number; to: number; at: number }[] = [];
    for (const phase of PHASES) {
      setOffset(phase.offsetMs);
      const from = rec.messages.length;
      const at = Date.now();
      await sleep(phase.seconds * 1000);
      bounds.push({ phase, from, to: rec.messages.length, at });
    }
    await gw.stop("SIGTERM");
    await sleep(500);

    // ---- per phase -------------------------------------------------------------------------------
    const perPhase = bounds.map(({ phase, from, to }) => {
      const slice = rec.messages.slice(from, to);
      const msgs = (re: RegExp) => slice.filter((m: Received) => re.test(m.topic));
      const readings = readingsIn(rec.messages, from, to);
      const pollCycles = POLLED.map(
        (d) =>
          msgs(new RegExp(`/${d}/readings$`)).filter((m) => JSON.parse(m.payload).source === "poll").length,
      );
      const offsets = readings.map((r) => Date.parse(r.ts) - (arrivals[r.index] ?? Date.now()));
      return {
        phase: phase.name,
        seconds: phase.seconds,
        poll_cycles: pollCycles,
        cov_readings: readings.filter((r) => r.device === COV_DEVICE).length,
        state_msgs: POLLED.map((d) => msgs(new RegExp(`/${d}/state$`)).length),
        availability: msgs(/\/availability$/).map((m) => JSON.parse(m.payload).state as string),
        bridge_state: msgs(/\/bridge\/state$/).map((m) => JSON.parse(m.payload).state as string),
        overruns: msgs(/\/bridge\/event$/)
          .map((m) => JSON.parse(m.payload))
          .filter((e) => e.type === "poll_overrun")
          .map((e) => e.data.cycle_ms as number),
        ts_offset_s: Math.round(median(offsets) / 1000),
      };
    });

    const all = seen();
    const produced = new Set(all.map(readingKey));
    let stored = new Set<string>();
    for (let i = 0; i < 600; i++) {
      const { rows } = await pool.query<{ device_instance: number; point: string; time: Date }>(
        "SELECT p.device_instance, p.point, r.time FROM readings r JOIN points p USING (point_id) WHERE p.gateway_id = $1",
        [GW],
      );
      stored = new Set(rows.map((r) => `${Number(r.device_instance)}/${r.point}@${r.time.toISOString()}`));
      if ([...produced].every((k) => stored.has(k))) break;
      await sleep(100);
    }
    const lost = [...produced].filter((k) => !stored.has(k));
    // The backward phase's timestamps lie an hour before anything stored (the run is shorter than
    // the step), so they cannot meet earlier rows on (point, time) here; same-key deliveries would
    // show up as duplicates.
    const back = bounds[2] as (typeof bounds)[number];
    const backTimes = readingsIn(rec.messages, back.from, back.to).map((r) => Date.parse(r.ts));
    const earliestReal = Math.min(
      ...readingsIn(rec.messages, 0, back.from)
        .filter((r) => Math.abs(Date.parse(r.ts) - (arrivals[r.index] ?? 0)) < 60_000)
        .map((r) => Date.parse(r.ts)),
    );
    // The simulator ends a subscription at its lifetime (60 s, on the real clock): COV readings
    // more than 62 s after the first one prove that the renewal went out through the steps.
    const covReadings = all.filter((r) => r.device === COV_DEVICE);
    const firstCovAt = arrivals[(covReadings[0] as (typeof all)[number]).index] ?? 0;
    const covAfterLifetime = covReadings.filter((r) => (arrivals[r.index] ?? 0) > firstCovAt + 62_000).length;
    report("clock jumps on the gateway host", {
      phases: perPhase,
      produced: produced.size,
      stored: stored.size,
      lost: lost.length,
      lostSample: lost.slice(0, 5),
      duplicate_keys: all.length - produced.size,
      backward_latest_ts_before_earliest_real_s: Math.round((earliestReal - Math.max(...backTimes)) / 1000),
      cov_readings_after_first_lifetime: covAfterLifetime,
      cov_last_reading_after_first_s: Math.round(
        ((arrivals[(covReadings.at(-1) as (typeof all)[number]).index] ?? 0) - firstCovAt) / 1000,
      ),
      duration_s: Math.round((Date.now() - started) / 1000),
    });

    for (const p of perPhase) {
      // Polling kept its 1 s interval: neither stalled nor a burst (bounds far from the expected
      // `seconds` polls per device, so scheduling noise on two shared cores cannot fail it).
      for (const n of p.poll_cycles) {
        expect(n, `${p.phase} poll cycles`).toBeGreaterThanOrEqual(Math.floor(p.seconds / 2));
        expect(n, `${p.phase} poll cycles`).toBeLessThanOrEqual(p.seconds * 2);
      }
      for (const n of p.state_msgs)
        expect(n, `${p.phase} state messages`).toBeGreaterThanOrEqual(Math.floor(p.seconds / 2));
      expect(p.availability, `${p.phase} availability`).not.toContain("offline");
      expect(p.bridge_state, `${p.phase} bridge/state`).toEqual([]);
      expect(
        p.overruns.filter((ms) => ms > 60_000),
        `${p.phase} overruns`,
      ).toEqual([]);
      expect(p.cov_readings, `${p.phase} COV readings`).toBeGreaterThan(0);
      expect(
        Math.abs(p.ts_offset_s * 1000 - (PHASES.find((x) => x.name === p.phase)?.offsetMs ?? 0)),
      ).toBeLessThan(60_000);
    }
    expect(covAfterLifetime).toBeGreaterThan(0);
    // Warnings are allowed (a shutdown races the connection); errors and fatals are not.
    expect(gw.stderr).not.toMatch(/"level":[56]0/);
    expect(lost).toEqual([]);
  },
);
