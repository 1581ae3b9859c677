// The real gateway process SIGKILLed while the broker is unreachable (a TCP relay in front of it is
// cut), so its readings wait in the disk buffer; the broker comes back and the gateway is started
// again: the buffer is replayed (historical) and every reading that reached the broker is stored.
// Produced here = readings seen by a subscriber on the broker (the gateway is another process).
import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, expect, it } from "vitest";
import { stringify } from "yaml";
import { type Simulator, startSimulator } from "../../simulator/index.ts";
import { BrokerLink, hostPort, Recorder, tempDir } from "../integration/gateway/helpers.ts";
import { createPortableDatabase, type TestDatabase } from "../support/db-postgres.ts";
import { startBrokerAndIngest } from "./gateway-process.ts";
import { report, sleep } from "./support.ts";

const BIN = fileURLToPath(new URL("../../bin/bacmqtt.mjs", import.meta.url));
const GW = "faults-gwkill";
const tmp = tempDir("bacmqtt-faults-gwkill-");
const closers: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  tmp.remove();
});

function exited(c: ChildProcess): Promise<void> {
  return new Promise((resolve) =>
    c.exitCode !== null || c.signalCode !== null ? resolve() : c.once("exit", () => resolve()),
  );
}

it("replays the disk buffer after a SIGKILL during a broker outage; nothing lost", {
  timeout: 240_000,
}, async () => {
  const started = Date.now();
  const db: TestDatabase = await createPortableDatabase("bacmqtt_faults_gwkill");
  closers.push(() => db.drop());
  const pool = new pg.Pool({ connectionString: db.url, max: 2 });
  closers.push(() => pool.end());
  const sim: Simulator = await startSimulator({
    devices: [1, 2, 3].map((i) => ({
      instance: 892_000 + i,
      address: `127.0.92.${i}`,
      port: 0,
      objects: { analog_value: 10 },
      cov: false,
      changeIntervalMs: 0,
    })),
  });
  closers.push(() => sim.close());
  const { broker } = await startBrokerAndIngest(db.url, "ingest-faults-gwkill", closers);
  const link = new BrokerLink(hostPort(broker.url));
  await link.restore();
  closers.push(() => link.cut());
  const rec = await Recorder.connect(broker.url, `bacmqtt/${GW}/+/readings`);
  closers.push(() => rec.close());

  const config = path.join(tmp.dir, "gateway.yaml");
  writeFileSync(
    config,
    stringify({
      gateway_id: GW,
      data_dir: path.join(tmp.dir, "data"),
      mqtt: { url: link.url, reconnect_period_ms: 200 },
      bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1 },
      discovery: { targets: sim.devices().map((d) => `${d.address}:${d.port}`), timeout_s: 2, interval_s: 0 },
      polling: { interval_s: 1, cov: false },
      buffer: { fsync: "never" },
      metrics: { enabled: false },
    }),
  );
  let child: ChildProcess | undefined;
  const start = () => {
    const c = spawn(process.execPath, [BIN, "gateway", "--config", config], {
      stdio: ["ignore", "ignore", "ignore"],
      env: { ...process.env, BACMQTT_LOG_LEVEL: "warn" },
    });
    child = c;
    return c;
  };
  closers.push(async () => {
    if (child) {
      child.kill("SIGKILL");
      await exited(child);
    }
  });
  const keys = () => {
    const out = new Set<string>();
    let historical = 0;
    for (const m of rec.messages) {
      const p = JSON.parse(m.payload) as {
        device: number;
        historical?: boolean;
        readings: { point: string; ts: string; error?: unknown }[];
      };
      for (const r of p.readings) {
        if (r.error !== undefined) continue;
        out.add(`${p.device}/${r.point}@${new Date(r.ts).toISOString()}`);
        if (p.historical) historical++;
      }
    }
    return { set: out, historical };
  };

  const first = start();
  await rec.waitFor(() => keys().set.size >= 90, "live readings", 90_000);
  await link.cut();
  const beforeCut = keys().set.size;
  await sleep(6000); // about 180 readings go to the disk buffer
  first.kill("SIGKILL");
  await exited(first);
  await link.restore();
  const second = start();
  await rec.waitFor(() => keys().historical > 0, "buffer replayed", 90_000);
  const afterReplay = keys().set.size;
  await rec.waitFor(() => keys().set.size >= afterReplay + 60, "live readings after the restart", 60_000);
  second.kill("SIGTERM");
  await exited(second);
  await sleep(500); // the subscriber's last deliveries
  const { set: produced, historical } = keys();

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
  report("gateway SIGKILL during a broker outage", {
    seen_before_cut: beforeCut,
    replayed_historical: historical,
    produced: produced.size,
    stored: stored.size,
    lost: lost.length,
    lostSample: lost.slice(0, 5),
    duration_s: Math.round((Date.now() - started) / 1000),
  });
  expect(historical).toBeGreaterThan(0);
  expect(lost).toEqual([]);
});
