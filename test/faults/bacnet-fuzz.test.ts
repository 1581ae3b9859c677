// 1,000,000 fuzzed datagrams at the BACnet socket of a real gateway process (`bacmqtt gateway`)
// while it polls the simulator: random bytes, truncated/extended/bit-flipped valid frames, wrong
// BVLC lengths and types. The process must not crash, must keep publishing readings, and its RSS
// (from /proc) must stay bounded. The engine-level fuzz with a fake device that has requests
// pending (request-matching path) is test/integration/bacnet/fuzz.test.ts; its corpus is not
// exported, so the few valid frames below are re-encoded from the same clauses.
import { type ChildProcess, spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { stringify } from "yaml";
import { type RunningBroker, startBroker } from "../../broker/index.ts";
import { type Simulator, startSimulator } from "../../simulator/index.ts";
import { mulberry32 as rng } from "../../simulator/objects.ts"; // deterministic: a failure can be replayed
import { Recorder, tempDir } from "../integration/gateway/helpers.ts";
import { report, sleep } from "./support.ts";

const BIN = fileURLToPath(new URL("../../bin/bacmqtt.mjs", import.meta.url));
const GW_ADDR = "127.0.186.1";
const GW_PORT = 47_901;
const PACE_MS = Number(process.env.FAULTS_FUZZ_PACE_MS ?? 20);
const TOTAL = Number(process.env.FAULTS_FUZZ_DATAGRAMS ?? 1_000_000);

let sim: Simulator;
let broker: RunningBroker;
let child: ChildProcess | undefined;
const tmp = tempDir("bacmqtt-faults-fuzz-");

beforeAll(async () => {
  sim = await startSimulator({
    devices: [1, 2].map((i) => ({
      instance: 886_000 + i,
      address: `127.0.186.${10 + i}`,
      port: 0,
      objects: { analog_value: 10 },
      cov: false,
      changeIntervalMs: 0,
    })),
  });
  broker = await startBroker({ port: 0, host: "127.0.0.1", allowAnonymous: true, sysInterval: 0 });
});
afterAll(async () => {
  if (child && child.exitCode === null && child.signalCode === null) {
    const c = child;
    c.kill("SIGKILL");
    await new Promise((r) => c.once("exit", r));
  }
  await broker?.close();
  await sim?.close();
  tmp.remove();
});

function bvll(fn: number, hex: string): Buffer {
  const b = Buffer.concat([Buffer.from([0x81, fn, 0, 0]), Buffer.from(hex, "hex")]);
  b.writeUInt16BE(b.length, 2);
  return b;
}
const CORPUS = [
  bvll(0x0b, "01001000c4023b8b8c2205c491032203e7"), // I-Am (broadcast)
  bvll(0x0a, "010030000c0c0000000119553e4441a800003f"), // ReadProperty ack
  bvll(0x0a, "01003001 0e 0c000000011e2955 3e4441a800003f 296f 3e8204003f1f".replace(/ /g, "")), // RPM ack
  bvll(0x0a, "010050030c9102911f"), // Error
  bvll(0x0a, "0100600409"), // Reject
  bvll(0x0a, "0100710504"), // Abort
  bvll(0x0a, "0100200605"), // SimpleACK
  bvll(0x0a, "010010020901 1c023b8b8c 2c00000001 3900 4e09552e4441a800002f4f".replace(/ /g, "")), // COV
  bvll(0x0a, "01080015010210 00c4023b8b8c2205c491002203e7".replace(/ /g, "")), // routed I-Am
  bvll(0x00, "0000"), // BVLC-Result
  bvll(0x0a, "0180010005"), // network layer Who-Is-Router
];

function datagram(r: () => number): Buffer {
  const kind = Math.floor(r() * 8);
  if (kind === 0) {
    const b = Buffer.alloc(Math.floor(r() * 600));
    for (let i = 0; i < b.length; i++) b[i] = Math.floor(r() * 256);
    return b;
  }
  const b = Buffer.from(CORPUS[Math.floor(r() * CORPUS.length)] as Buffer);
  if (kind === 1) return b.subarray(0, Math.floor(r() * b.length)); // truncated
  if (kind === 2) {
    const extra = Buffer.alloc(1 + Math.floor(r() * 64));
    for (let i = 0; i < extra.length; i++) extra[i] = Math.floor(r() * 256);
    const x = Buffer.concat([b, extra]);
    x.writeUInt16BE(x.length, 2);
    return x;
  }
  if (kind === 3) {
    b.writeUInt16BE(Math.floor(r() * 65536), 2); // wrong BVLC length
    return b;
  }
  if (kind === 4) {
    b[0] = Math.floor(r() * 256); // wrong BVLC type
    return b;
  }
  if (kind === 5) {
    for (let i = 0; i < 1 + Math.floor(r() * 4); i++) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
    return b;
  }
  if (kind === 6) {
    for (let i = 4; i < b.length; i++) if (r() < 0.1) b[i] = (b[i] as number) ^ (1 << Math.floor(r() * 8));
    return b;
  }
  return b; // valid, unsolicited
}

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Math.round(Number(m?.[1] ?? 0) / 1024);
}

it(`survives ${TOTAL.toLocaleString("en")} fuzzed datagrams while polling`, {
  timeout: 300_000,
}, async () => {
  const started = Date.now();
  const config = path.join(tmp.dir, "gateway.yaml");
  writeFileSync(
    config,
    stringify({
      gateway_id: "faults-fuzz",
      data_dir: path.join(tmp.dir, "data"),
      mqtt: { url: broker.url, reconnect_period_ms: 200 },
      bacnet: { interface: GW_ADDR, port: GW_PORT, apdu_timeout_ms: 500, retries: 1 },
      discovery: { targets: sim.devices().map((d) => `${d.address}:${d.port}`), timeout_s: 2, interval_s: 0 },
      polling: { interval_s: 1, cov: false },
      buffer: { fsync: "never" },
      metrics: { enabled: false },
    }),
  );
  const gw = spawn(process.execPath, [BIN, "gateway", "--config", config], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, BACMQTT_LOG_LEVEL: "error" },
  });
  child = gw;
  let stderr = "";
  gw.stderr?.on("data", (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const pid = gw.pid as number;
  const rec = await Recorder.connect(broker.url, "bacmqtt/faults-fuzz/+/readings");
  const avail = await Recorder.connect(broker.url, "bacmqtt/faults-fuzz/+/availability");
  try {
    await rec.waitFor((m) => m.length >= 10, "readings before fuzzing", 60_000);
    await sleep(3000); // past start-up allocations
    const rssBefore = rssMb(pid);
    const readingsBefore = rec.messages.length;
    const availBefore = avail.messages.length;
    const fuzzer = createSocket("udp4");
    await new Promise<void>((r) => fuzzer.bind(0, "127.0.186.2", () => r()));
    const r = rng(20261127);
    const samples: number[] = [];
    const fuzzStarted = Date.now();
    let sendErrors = 0;
    for (let sent = 0; sent < TOTAL; ) {
      const batch = Math.min(200, TOTAL - sent);
      await Promise.all(
        Array.from(
          { length: batch },
          () =>
            new Promise<void>((res) =>
              fuzzer.send(datagram(r), GW_PORT, GW_ADDR, (err) => {
                if (err) sendErrors++;
                res();
              }),
            ),
        ),
      );
      sent += batch;
      await sleep(PACE_MS); // about 10,000 datagrams/s: a flood that leaves the loopback room to poll
      if (sent % 100_000 === 0) {
        samples.push(rssMb(pid));
        expect(gw.exitCode, stderr).toBeNull();
      }
    }
    await new Promise<void>((res) => fuzzer.close(() => res()));
    const fuzzSeconds = (Date.now() - fuzzStarted) / 1000;
    const readingsDuring = rec.messages.length - readingsBefore;
    const availabilityDuring = avail.messages
      .slice(availBefore)
      .map((m) => `${m.topic.split("/")[2]}:${m.payload}`);
    const pollErrors = rec.messages
      .slice(readingsBefore)
      .flatMap((m) => (JSON.parse(m.payload) as { readings: { error?: unknown }[] }).readings)
      .filter((x) => x.error !== undefined).length;
    const afterFuzz = rec.messages.length;
    await rec.waitFor((m) => m.length >= afterFuzz + 4, "readings after fuzzing", 30_000);
    const rssAfter = rssMb(pid);
    report("BACnet fuzz at the gateway process", {
      datagrams: TOTAL,
      send_errors: sendErrors,
      readings_messages_during_fuzz: readingsDuring,
      reading_errors_during_fuzz: pollErrors,
      availability_changes_during_fuzz: availabilityDuring,
      rss_mb_before: rssBefore,
      rss_mb_max: Math.max(...samples, rssAfter),
      rss_mb_after: rssAfter,
      rss_samples_per_100k: samples,
      crashed: gw.exitCode !== null || gw.signalCode !== null,
      fuzz_s: Math.round(fuzzSeconds),
      datagrams_per_s: Math.round(TOTAL / fuzzSeconds),
      duration_s: Math.round((Date.now() - started) / 1000),
    });
    expect(gw.exitCode, stderr).toBeNull();
    expect(gw.signalCode).toBeNull();
    expect(readingsDuring).toBeGreaterThan(0);
    expect(Math.max(...samples, rssAfter) - rssBefore).toBeLessThan(150);
  } finally {
    await rec.close();
    await avail.close();
  }
});
