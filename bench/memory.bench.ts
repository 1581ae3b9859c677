// Gateway memory: resident set size of a `bacmqtt gateway` process (started as users start it)
// while it polls 10,000 and then 100,000 simulated points and publishes them to a broker, against
// the same process with no devices (the runtime's own footprint) in the same run. RSS is sampled
// from /proc once a second after every point has been read at least once; the row is the peak.
// Runs alone: `npx tsx bench/memory.bench.ts` (bounded, under two minutes). BENCH_MEMORY_DEFAULT_HEAP=1
// adds a run without the heap cap (V8 default sizing), for comparison.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import { stringify } from "yaml";
import { startBroker } from "../broker/index.ts";
import { createLogger } from "../common/logger.ts";
import { createEngine } from "../gateway/bacnet/index.ts";
import type { DeviceCatalogue } from "../gateway/bacnet/types.ts";
import { CatalogueStore } from "../gateway/catalogue-store.ts";
import { spawnSimulatorProcesses } from "../simulator/processes.ts";

const POINTS_PER_DEVICE = 100;
const SIZES = (process.env.BENCH_MEMORY_POINTS ?? "10000,100000").split(",").map(Number);
const POLL_S = 10;
const STEADY_MS = Number(process.env.BENCH_STEADY_MS ?? 10_000);
const TARGET_MB = 300;
/** The heap cap docs/gateway.md recommends for the gateway service (NODE_OPTIONS). */
const HEAP_FLAG = "--max-old-space-size=256";
const bin = fileURLToPath(new URL("../bin/bacmqtt.mjs", import.meta.url));
const log = createLogger("bench");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN);
  return kb / 1024;
}

interface Measured {
  peakMb: number;
  seenPoints: number;
  valuesPerS: number;
  reachedAll: boolean;
}

async function measure(
  brokerUrl: string,
  dir: string,
  catalogues: DeviceCatalogue[],
  expectPoints: number,
  deadlineMs: number,
  heapFlag: string | null,
  steadyMs = STEADY_MS,
): Promise<Measured> {
  const dataDir = path.join(dir, "data");
  mkdirSync(dataDir, { recursive: true });
  const store = new CatalogueStore(dataDir, log);
  for (const catalogue of catalogues) store.save({ catalogue, options: {} });
  const base = `mem${expectPoints}${heapFlag ? "c" : "d"}`;
  const config = path.join(dir, "gateway.yaml");
  writeFileSync(
    config,
    stringify({
      gateway_id: "gw",
      data_dir: dataDir,
      mqtt: { url: brokerUrl, base_topic: base },
      bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 3000, retries: 1 },
      discovery: { on_start: false, interval_s: 0 },
      polling: { interval_s: POLL_S, cov: false },
      metrics: { enabled: false },
    }),
  );
  const seen = new Set<string>();
  let values = 0;
  const sub = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
  let online = false;
  sub.on("message", (topic, payload) => {
    if (topic.endsWith("/bridge/state")) {
      online ||= payload.toString().includes('"online"');
      return;
    }
    const p = JSON.parse(payload.toString()) as { device: number; readings: { point: string }[] };
    values += p.readings.length;
    for (const r of p.readings) seen.add(`${p.device}/${r.point}`);
  });
  await sub.subscribeAsync([`${base}/gw/+/readings`, `${base}/gw/bridge/state`], { qos: 0 });
  const child: ChildProcess = spawn(process.execPath, [bin, "gateway", "--config", config], {
    env: {
      ...process.env,
      BACMQTT_LOG_LEVEL: "error",
      NODE_OPTIONS: [process.env.NODE_OPTIONS, heapFlag].filter(Boolean).join(" "),
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  try {
    const pid = child.pid as number;
    // Started (connected and born), then every point read once (or the deadline), then a steady window.
    const startBy = Date.now() + 30_000;
    while (!online && Date.now() < startBy) await sleep(100);
    while (seen.size < expectPoints && Date.now() < deadlineMs) await sleep(250);
    const reachedAll = seen.size >= expectPoints;
    let peak = rssMb(pid);
    const v0 = values;
    const t0 = Date.now();
    const until = Date.now() + steadyMs;
    while (Date.now() < until) {
      await sleep(1000);
      peak = Math.max(peak, rssMb(pid));
    }
    return {
      peakMb: peak,
      seenPoints: seen.size,
      valuesPerS: ((values - v0) * 1000) / (Date.now() - t0),
      reachedAll,
    };
  } finally {
    child.kill("SIGTERM");
    await Promise.race([exited, sleep(10_000)]);
    if (child.exitCode === null) child.kill("SIGKILL");
    await sub.endAsync(true);
  }
}

async function main(): Promise<void> {
  const started = Date.now();
  const hardStop = setTimeout(() => {
    process.stderr.write("memory bench: over its time bound, aborting\n");
    process.exit(2);
  }, 170_000);
  hardStop.unref();
  const tmp = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-mem-bench-"));
  const maxDevices = Math.max(...SIZES) / POINTS_PER_DEVICE;
  const sim = await spawnSimulatorProcesses(
    {
      devices: Array.from({ length: maxDevices }, (_, i) => ({
        instance: 100_000 + i,
        address: `127.0.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`,
        port: 0,
        objects: { analog_input: POINTS_PER_DEVICE },
        cov: false,
        changeIntervalMs: 0,
      })),
    },
    2,
  );
  const broker = await startBroker({ port: 0, host: "127.0.0.1", allowAnonymous: true, sysInterval: 0 });
  try {
    // One catalogue read from a real device; the others have the same objects, so their catalogues
    // are that one with their own instance and address (reading 1,000 catalogues would not fit the bound).
    const handles = sim.devices();
    const reader = await createEngine({ interface: "127.0.0.1", port: 0 });
    const first = handles[0] as (typeof handles)[number];
    const [found] = await reader.discover({ targets: [`${first.address}:${first.port}`], timeoutS: 2 });
    if (!found) throw new Error("the first simulated device did not answer");
    const template = await reader.readCatalogue(found);
    await reader.stop();
    const catalogueOf = (h: (typeof handles)[number]): DeviceCatalogue => ({
      ...template,
      deviceInstance: h.instance,
      address: `${h.address}:${h.port}`,
      objectName: `SIM-${h.instance}`,
    });

    const idle = await measure(broker.url, path.join(tmp, "idle"), [], 0, Date.now(), HEAP_FLAG, 6000);
    process.stdout.write(`idle gateway: ${idle.peakMb.toFixed(0)} MB\n`);
    const runs: { points: number; heapFlag: string | null }[] = SIZES.map((points) => ({
      points,
      heapFlag: HEAP_FLAG,
    }));
    if (process.env.BENCH_MEMORY_DEFAULT_HEAP === "1")
      runs.push({ points: Math.max(...SIZES), heapFlag: null });
    let uncapped: Measured | undefined;
    for (const { points, heapFlag } of runs) {
      const devices = handles.slice(0, points / POINTS_PER_DEVICE).map(catalogueOf);
      const budgetLeft = 160_000 - (Date.now() - started);
      if (budgetLeft < STEADY_MS + 20_000) {
        process.stdout.write(`skipping ${points} points (${heapFlag ?? "default heap"}): out of time\n`);
        continue;
      }
      const m = await measure(
        broker.url,
        path.join(tmp, `p${points}${heapFlag ? "c" : "d"}`),
        devices,
        points,
        Date.now() + Math.min(60_000, budgetLeft - STEADY_MS - 10_000),
        heapFlag,
      );
      process.stdout.write(
        `${points} points (${heapFlag ?? "default V8 heap sizing"}): peak RSS ${m.peakMb.toFixed(0)} MB, ${m.seenPoints} points seen, ${m.valuesPerS.toFixed(0)} values/s\n`,
      );
      if (!heapFlag) {
        uncapped = m;
        continue;
      }
      const row = {
        benchmark: "memory",
        row: `gateway RSS at ${points.toLocaleString("en-US")} points polled`,
        unit: "MB",
        value: Math.round(m.peakMb),
        min: null,
        max: Math.round(m.peakMb),
        baseline: "the same gateway process with no devices",
        baseline_value: Math.round(idle.peakMb),
        ratio: Math.round((m.peakMb / idle.peakMb) * 100) / 100,
        target: `< ${TARGET_MB} MB`,
        met: m.reachedAll && m.peakMb < TARGET_MB,
        saturated: m.reachedAll ? null : `only ${m.seenPoints} of ${points} points read within the bound`,
        notes: `${points / POINTS_PER_DEVICE} simulated devices × ${POINTS_PER_DEVICE} analog inputs in 2 simulator processes, polled every ${POLL_S} s with RPM and published to the broker (${Math.round(m.valuesPerS)} values/s in the window); gateway run as \`bacmqtt gateway\` with NODE_OPTIONS=${HEAP_FLAG} (the documented service setting); peak of 1 s /proc samples over ${STEADY_MS / 1000} s after every point was read once; catalogues seeded from one device's real catalogue`,
      };
      process.stdout.write(`BENCH_ROW ${JSON.stringify(row)}\n`);
    }
    if (uncapped)
      process.stdout.write(
        `note: without the heap cap V8 lets RSS reach ${uncapped.peakMb.toFixed(0)} MB at ${Math.max(...SIZES)} points (heap growth, not live data)\n`,
      );
  } finally {
    await broker.close();
    await sim.close();
    rmSync(tmp, { recursive: true, force: true });
    clearTimeout(hardStop);
  }
}

await main();
