// The real gateway process SIGKILLed while connected and publishing live (broker up, ingest running),
// then started again with the same config and data dir. Produced = readings a subscriber on the
// broker saw (the gateway is another process); recorded = produced plus the readings in the killed
// process's write-ahead journal (`data_dir/buffer/*.seg`, read after the kill: what the process had
// recorded, published or not); stored = rows; lost = recorded minus stored, and must be empty: a
// reading the devices answered and the process recorded but the broker had not acknowledged is
// replayed, historical, by the next start. Also measured: polls the devices answered that the killed
// process never recorded (the answer was in its socket or being decoded at the kill: not closable
// by any journal), the Last Will, the next birth's bd_seq, replays and duplicates (the journal's
// cursor is saved in batches, so some acknowledged readings come again), and the gap in reading
// timestamps across the restart.
import { readdirSync, readFileSync } from "node:fs";
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

const GW = "faults-gwkill-live";
const tmp = tempDir("bacmqtt-faults-gwkill-live-");
const closers: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  tmp.remove();
});

interface StatePayload {
  state: "online" | "offline";
  bd_seq: number;
}

const states = (messages: Received[], from = 0) =>
  messages
    .slice(from)
    .filter((m) => m.topic === `bacmqtt/${GW}/bridge/state` && m.payload !== "")
    .map((m) => JSON.parse(m.payload) as StatePayload);

const readingsMessages = (messages: Received[], from: number, to: number) =>
  messages.slice(from, to).filter((m) => m.topic.endsWith("/readings")).length;

/** Readings messages in the gateway's journal (`<ms>\t<topic>\t<body>` lines), as a recorder would have them. */
function journal(dir: string): Received[] {
  const out: Received[] = [];
  for (const f of readdirSync(dir)
    .filter((n) => n.endsWith(".seg"))
    .sort())
    for (const line of readFileSync(path.join(dir, f), "utf8").split("\n")) {
      const [, topic, body] = line.split("\t");
      if (topic?.endsWith("/readings") && body) out.push({ topic, payload: body, retain: false });
    }
  return out;
}

it("loses nothing the gateway recorded when it is SIGKILLed mid-stream; will, new bd_seq, gap", {
  timeout: 240_000,
}, async () => {
  const started = Date.now();
  const db: TestDatabase = await createPortableDatabase("bacmqtt_faults_gwkill_live");
  closers.push(() => db.drop());
  const pool = new pg.Pool({ connectionString: db.url, max: 2 });
  closers.push(() => pool.end());
  const sim: Simulator = await startSimulator({
    devices: [1, 2, 3].map((i) => ({
      instance: 893_000 + i,
      address: `127.0.93.${i}`,
      port: 0,
      objects: { analog_value: 10 },
      cov: false,
      changeIntervalMs: 0,
    })),
  });
  closers.push(() => sim.close());
  const { broker } = await startBrokerAndIngest(db.url, "ingest-faults-gwkill-live", closers);
  const rec = await Recorder.connect(broker.url, `bacmqtt/${GW}/#`);
  closers.push(() => rec.close());

  const config = writeGatewayConfig(tmp.dir, {
    gateway_id: GW,
    data_dir: `${tmp.dir}/data`,
    mqtt: { url: broker.url, reconnect_period_ms: 200 },
    bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1 },
    discovery: {
      targets: sim.devices().map((d) => `${d.address}:${d.port}`),
      timeout_s: 2,
      interval_s: 0,
    },
    polling: { interval_s: 1, cov: false },
    buffer: { fsync: "never" },
    metrics: { enabled: false },
  });
  const gw = new GatewayProcess(config);
  closers.push(() => gw.stop("SIGKILL"));
  const seen = () => readingsIn(rec.messages);

  // ---- first process, live ------------------------------------------------------------------
  gw.start();
  await rec.waitFor(() => seen().length >= 150, "live readings", 90_000);
  // Control window: one poll = one ReadPropertyMultiple answer = one readings message per device.
  const a0 = { msg: rec.messages.length, resp: sim.stats().responsesSent };
  await sleep(2000);
  const a = { msg: rec.messages.length, resp: sim.stats().responsesSent };
  await sleep(2300);
  // Mid-stream, at the worst moment: right after a device answered a poll, while the gateway is
  // turning the answer into a readings message (the simulator runs in this process).
  const answered = sim.stats().responsesSent;
  const until = Date.now() + 10_000;
  for (let i = 0; i < 10_000_000 && sim.stats().responsesSent === answered && Date.now() < until; i++)
    await new Promise((r) => setImmediate(r));
  const kill = { msg: rec.messages.length, resp: sim.stats().responsesSent, at: Date.now() };
  await gw.stop("SIGKILL");
  await rec.waitFor(
    () => states(rec.messages, kill.msg).some((s) => s.state === "offline"),
    "Last Will (bridge/state offline)",
    30_000,
  );
  const willAfterMs = Date.now() - kill.at;
  await sleep(1500); // anything still on its way from the dead process
  const dead = { msg: rec.messages.length, resp: sim.stats().responsesSent };
  const firstRun = readingsIn(rec.messages, 0, dead.msg);
  const lateAfterKill = readingsIn(rec.messages, kill.msg, dead.msg).length;
  const control = a.resp - a0.resp - readingsMessages(rec.messages, a0.msg, a.msg);
  const readNotPublished = kill.resp - a.resp - readingsMessages(rec.messages, a.msg, dead.msg);
  // What the killed process had recorded, read before the next start replays (and rewrites) it.
  const journalled = readingsIn(journal(path.join(tmp.dir, "data", "buffer")));
  const seenAtDeath = new Set(firstRun.map(readingKey));
  const recordedNotPublished = journalled.map(readingKey).filter((k) => !seenAtDeath.has(k));
  const will = states(rec.messages, kill.msg).find((s) => s.state === "offline") as StatePayload;
  const firstBirth = states(rec.messages, 0).find((s) => s.state === "online") as StatePayload;

  // ---- second process, same config and data dir ----------------------------------------------
  const restartAt = Date.now();
  gw.start();
  await rec.waitFor(
    () => states(rec.messages, dead.msg).some((s) => s.state === "online"),
    "new birth",
    60_000,
  );
  const secondBirth = states(rec.messages, dead.msg).find((s) => s.state === "online") as StatePayload;
  await rec.waitFor(
    () => readingsIn(rec.messages, dead.msg).filter((r) => !r.historical).length >= 150,
    "live readings after the restart",
    90_000,
  );
  // Read by the new process (the replayed ones were read by the killed one).
  const firstAfterMs = readingsIn(rec.messages, dead.msg)
    .filter((r) => !r.historical)
    .map((r) => Date.parse(r.ts))
    .reduce((x, y) => Math.min(x, y));
  await gw.stop("SIGTERM");
  await sleep(500); // the subscriber's last deliveries

  const all = seen();
  const produced = new Set(all.map(readingKey));
  const recorded = new Set([...produced, ...journalled.map(readingKey)]);
  const historical = all.filter((r) => r.historical).length;
  const lastBeforeMs = [...firstRun, ...journalled]
    .map((r) => Date.parse(r.ts))
    .reduce((x, y) => Math.max(x, y));
  let stored = new Set<string>();
  for (let i = 0; i < 600; i++) {
    const { rows } = await pool.query<{ device_instance: number; point: string; time: Date }>(
      "SELECT p.device_instance, p.point, r.time FROM readings r JOIN points p USING (point_id) WHERE p.gateway_id = $1",
      [GW],
    );
    stored = new Set(rows.map((r) => `${Number(r.device_instance)}/${r.point}@${r.time.toISOString()}`));
    if ([...recorded].every((k) => stored.has(k))) break;
    await sleep(100);
  }
  const lost = [...recorded].filter((k) => !stored.has(k));
  const lastPublished = readingKey(firstRun.at(-1) as (typeof firstRun)[number]);
  const bridgeStates = states(rec.messages).map((s) => `${s.state}#${s.bd_seq}`);
  report("gateway SIGKILL while connected", {
    produced: produced.size,
    recorded: recorded.size,
    stored: stored.size,
    lost: lost.length,
    lostSample: lost.slice(0, 5),
    seen_from_killed_process: firstRun.length,
    arrived_after_kill: lateAfterKill,
    polls_answered_not_published_at_kill: readNotPublished,
    readings_read_not_published: readNotPublished * 10,
    journalled_at_kill: journalled.length,
    recorded_not_published_at_kill: recordedNotPublished.length,
    polls_answered_not_recorded_at_kill: readNotPublished - recordedNotPublished.length / 10,
    polls_answered_not_published_control_window: control,
    replayed_historical: historical,
    duplicate_deliveries: all.length - produced.size,
    will_after_ms: willAfterMs,
    bridge_states: bridgeStates,
    restart_to_first_reading_ms: firstAfterMs - restartAt,
    gap_last_before_to_first_after_ms: firstAfterMs - lastBeforeMs,
    duration_s: Math.round((Date.now() - started) / 1000),
  });
  expect(firstRun.length).toBeGreaterThanOrEqual(150);
  expect(will).toMatchObject({ state: "offline", bd_seq: firstBirth.bd_seq });
  expect(secondBirth.bd_seq).toBe(firstBirth.bd_seq + 1);
  // Written ahead: the journal holds what was published (without it, nothing live is on disk).
  expect(journalled.map(readingKey)).toContain(lastPublished);
  expect(lost).toEqual([]);
});
