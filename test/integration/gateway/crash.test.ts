// The gateway as a separate process (`bin/bacmqtt.mjs gateway --config …`, as users run it) against
// the simulator and a real broker (ours and Mosquitto): the Last Will after SIGKILL, a graceful
// SIGTERM, and a SIGKILL while the broker is unreachable — what was buffered on disk is delivered
// by the next start, marked historical.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import {
  BrokerLink,
  hostPort,
  MOSQUITTO_URL,
  mosquittoAvailable,
  Recorder,
  retainedUnder,
  startTestBroker,
  tempDir,
  uniqueBase,
} from "./helpers.ts";

const bin = fileURLToPath(new URL("../../../bin/bacmqtt.mjs", import.meta.url));

let sim: Simulator;
let targets: string[];
beforeAll(async () => {
  sim = await startSimulator({
    devices: [
      { instance: 3201, address: "127.0.0.23", port: 0 },
      { instance: 3202, address: "127.0.0.24", port: 0 },
    ],
  });
  targets = sim.devices().map((d) => `${d.address}:${d.port}`);
});
afterAll(async () => {
  await sim?.close();
});

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function writeConfig(dir: string, mqttUrl: string, base: string, mqtt: Record<string, unknown> = {}): string {
  const file = path.join(dir, "gateway.yaml");
  writeFileSync(
    file,
    stringify({
      gateway_id: "gw1",
      data_dir: path.join(dir, "data"),
      mqtt: { url: mqttUrl, base_topic: base, reconnect_period_ms: 200, ...mqtt },
      bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1 },
      discovery: { on_start: true, interval_s: 0, targets, timeout_s: 1 },
      polling: { interval_s: 1, cov: false },
      buffer: { fsync: "never" },
      metrics: { enabled: false },
    }),
  );
  return file;
}

function runGateway(
  config: string,
  logLevel = "warn",
): {
  child: ChildProcess;
  exited: Promise<number | null>;
  stderr: () => string;
} {
  const child = spawn(process.execPath, [bin, "gateway", "--config", config], {
    env: { ...process.env, BACMQTT_LOG_LEVEL: logLevel },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  child.stderr?.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-4000);
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
  });
  return { child, exited, stderr: () => err };
}

/** Readings waiting in a stopped gateway's buffer folder, as `device/point@ts`, in order. */
function pendingOnDisk(dataDir: string): string[] {
  const dir = path.join(dataDir, "buffer");
  if (!existsSync(dir)) return [];
  let cursor = { seg: 0, off: 0 };
  try {
    cursor = JSON.parse(readFileSync(path.join(dir, "cursor.json"), "utf8"));
  } catch {
    // no cursor yet: everything is pending
  }
  const out: string[] = [];
  for (const f of readdirSync(dir)
    .filter((n) => n.endsWith(".seg"))
    .sort()) {
    const seq = Number(f.slice(0, 16));
    if (seq < cursor.seg) continue;
    let buf = readFileSync(path.join(dir, f));
    if (seq === cursor.seg) buf = buf.subarray(cursor.off);
    for (const line of buf.toString("utf8").split("\n")) {
      if (!line) continue;
      // `<ms>\t<topic>\t<body>`; a torn last line is not a record.
      const body = line.split("\t")[2];
      try {
        const p = JSON.parse(body ?? "") as { device: number; readings: { point: string; ts: string }[] };
        for (const r of p.readings) out.push(`${p.device}/${r.point}@${r.ts}`);
      } catch {
        // torn
      }
    }
  }
  return out;
}

function readingKeys(rec: Recorder, historicalOnly: boolean, from = 0): string[] {
  return rec.messages
    .slice(from)
    .filter(
      (m) => m.topic.endsWith("/readings") && (!historicalOnly || m.payload.includes('"historical":true')),
    )
    .flatMap((m) => {
      const p = JSON.parse(m.payload) as { device: number; readings: { point: string; ts: string }[] };
      return p.readings.map((r) => `${p.device}/${r.point}@${r.ts}`);
    });
}

async function clearRetained(url: string, base: string): Promise<void> {
  const retained = await retainedUnder(url, `${base}/#`, 200);
  if (retained.size === 0) return;
  const rec = await Recorder.connect(url, `${base}/_cleanup`);
  for (const topic of retained.keys()) await rec.publish(topic, "", true);
  await rec.close();
}

const brokers: Array<[string, () => Promise<{ url: string; close?: () => Promise<void> }>]> = [
  ["our broker", () => startTestBroker()],
];
if (await mosquittoAvailable()) brokers.push(["mosquitto", async () => ({ url: MOSQUITTO_URL })]);

describe.each(brokers)("gateway process with %s", (_name, makeBroker) => {
  let broker: { url: string; close?: () => Promise<void> };
  beforeAll(async () => {
    broker = await makeBroker();
  });
  afterAll(async () => {
    await broker.close?.();
  });

  it("SIGKILL: the broker publishes the retained offline will with the connection's bd_seq; SIGTERM: offline, exit 0", async () => {
    const base = uniqueBase("kill");
    const root = `${base}/gw1`;
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    cleanups.push(() => clearRetained(broker.url, base));
    const rec = await Recorder.connect(broker.url, `${root}/bridge/state`);
    cleanups.push(() => rec.close());
    const config = writeConfig(tmp.dir, broker.url, base);

    type State = { state: string; bd_seq: number };
    const states = () => rec.json(`${root}/bridge/state`) as State[];
    const indexOf = (state: string, seq: number, from: number) =>
      states().findIndex((s, i) => i >= from && s.state === state && s.bd_seq === seq);

    const first = runGateway(config);
    await rec.waitFor(() => states().some((s) => s.state === "online"), "online", 20_000);
    const born = states().findIndex((s) => s.state === "online");
    const seq = (states()[born] as State).bd_seq;
    first.child.kill("SIGKILL");
    await first.exited;
    // The will: retained offline with the bd_seq of the connection that died.
    await rec.waitFor(() => indexOf("offline", seq, born + 1) >= 0, "will", 20_000);
    const retained = await retainedUnder(broker.url, `${root}/bridge/state`);
    expect(JSON.parse(retained.get(`${root}/bridge/state`)!)).toMatchObject({
      state: "offline",
      bd_seq: seq,
    });

    const second = runGateway(config);
    await rec.waitFor(() => indexOf("online", seq + 1, born + 1) >= 0, "online with the next bd_seq", 20_000);
    const reborn = indexOf("online", seq + 1, born + 1);
    second.child.kill("SIGTERM");
    expect(await second.exited).toBe(0);
    await rec.waitFor(() => indexOf("offline", seq + 1, reborn + 1) >= 0, "clean offline");
    expect(states().slice(reborn)).toEqual([
      expect.objectContaining({ state: "online", bd_seq: seq + 1 }),
      expect.objectContaining({ state: "offline", bd_seq: seq + 1 }),
    ]);
  }, 60_000);

  it("SIGKILL while the broker is unreachable: the next start delivers what was buffered, historical", async () => {
    const base = uniqueBase("buf");
    const root = `${base}/gw1`;
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    cleanups.push(() => clearRetained(broker.url, base));
    const link = new BrokerLink(hostPort(broker.url));
    await link.restore();
    cleanups.push(() => link.cut());
    const rec = await Recorder.connect(broker.url, `${root}/+/readings`);
    cleanups.push(() => rec.close());
    const config = writeConfig(tmp.dir, link.url, base);
    const dataDir = path.join(tmp.dir, "data");

    const first = runGateway(config);
    await rec.waitFor((m) => m.length >= 2, "live readings", 30_000);
    await link.cut();
    const deadline = Date.now() + 20_000;
    while (pendingOnDisk(dataDir).length < 40) {
      if (Date.now() > deadline) throw new Error(`buffer did not fill: ${first.stderr()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    first.child.kill("SIGKILL");
    await first.exited;
    const buffered = pendingOnDisk(dataDir);
    expect(buffered.length).toBeGreaterThanOrEqual(40);

    await link.restore();
    const mark = rec.messages.length;
    const second = runGateway(config);
    await rec.waitFor(
      () => {
        const got = new Set(readingKeys(rec, true, mark));
        return buffered.every((k) => got.has(k));
      },
      "every buffered reading, historical",
      30_000,
    );
    // In order: the historical messages replay the buffer front to back.
    const historical = readingKeys(rec, true, mark);
    expect(historical.slice(0, buffered.length)).toEqual(buffered);
    second.child.kill("SIGTERM");
    expect(await second.exited).toBe(0);
  }, 90_000);
});

describe("gateway process, signal while starting", () => {
  // The start waits for the broker's first answer (connect timeout + duplicate check). A SIGTERM in
  // that window used to take the default action: killed by the signal, exit code null. Now it is
  // held, the wait is cut short and the gateway stops cleanly: exit 0, buffer closed.
  it("SIGTERM while the broker does not answer yet: exit 0 within seconds, not after the wait", async () => {
    const silent = net.createServer(() => undefined); // accepts, never answers CONNECT
    const held = new Set<net.Socket>();
    silent.on("connection", (s) => held.add(s));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          for (const s of held) s.destroy();
          silent.close(() => resolve());
        }),
    );
    const port = (silent.address() as net.AddressInfo).port;
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    const config = writeConfig(tmp.dir, `mqtt://127.0.0.1:${port}`, uniqueBase("sig"), {
      connect_timeout_ms: 30_000,
    });
    const gw = runGateway(config, "info");
    const deadline = Date.now() + 20_000;
    while (!gw.stderr().includes("BACnet endpoint ready")) {
      if (Date.now() > deadline || gw.child.exitCode !== null) throw new Error(`no start: ${gw.stderr()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(held.size).toBeLessThanOrEqual(1);
    const sent = performance.now();
    gw.child.kill("SIGTERM");
    const code = await gw.exited;
    const tookMs = performance.now() - sent;
    expect({ code, signal: gw.child.signalCode }).toEqual({ code: 0, signal: null });
    // Far below the 30 s connect timeout the start would otherwise wait out.
    expect(tookMs).toBeLessThan(15_000);
    expect(gw.stderr()).toContain("stopping once started");
    expect(gw.stderr()).toContain("gateway stopped");
  }, 60_000);
});
