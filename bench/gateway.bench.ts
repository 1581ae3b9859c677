// Gateway → MQTT throughput end to end: point values per second arriving at an MQTT subscriber,
// against the BACnet engine's raw polling rate (values/s from its `readings` events, no MQTT) in
// the same run, same simulated site, same poll settings. Both poll as fast as they can (0.1 s
// interval, more work than the engine can finish), so the figure is each one's ceiling.
// Runs alone: `npx tsx bench/gateway.bench.ts` (bounded, about a minute and a half).
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import mqtt from "mqtt";
import { startBroker } from "../broker/index.ts";
import { createLogger } from "../common/logger.ts";
import { createEngine } from "../gateway/bacnet/index.ts";
import type { DeviceCatalogue } from "../gateway/bacnet/types.ts";
import { CatalogueStore } from "../gateway/catalogue-store.ts";
import { startGateway } from "../gateway/index.ts";
import { spawnSimulatorProcesses } from "../simulator/processes.ts";
import { BrokerLink, hostPort } from "../test/integration/gateway/helpers.ts";

const DEVICES = Number(process.env.BENCH_DEVICES ?? 40);
const POINTS = Number(process.env.BENCH_POINTS ?? 50);
const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const WARMUP_MS = 2000;
const WINDOW_MS = Number(process.env.BENCH_WINDOW_MS ?? 4000);
const OUTAGE_MS = Number(process.env.BENCH_OUTAGE_MS ?? 8000);
const ENGINE = {
  interface: "127.0.0.1",
  port: 0,
  pollIntervalS: 0.1,
  cov: false,
  apduTimeoutMs: 2000,
  retries: 1,
} as const;

const log = createLogger("bench");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main(): Promise<void> {
  const hardStop = setTimeout(() => {
    process.stderr.write("gateway bench: over its time bound, aborting\n");
    process.exit(2);
  }, 150_000);
  hardStop.unref();

  const sim = await spawnSimulatorProcesses(
    {
      devices: Array.from({ length: DEVICES }, (_, i) => ({
        instance: 50_001 + i,
        address: `127.0.0.${60 + (i % 100)}`,
        port: 0,
        objects: { analog_input: POINTS },
        cov: false,
      })),
    },
    1,
  );
  const broker = await startBroker({ port: 0, host: "127.0.0.1", allowAnonymous: true, sysInterval: 0 });
  const tmp = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-gw-bench-"));
  try {
    // Catalogues once, reused by every run (the gateway resumes from its stored catalogue).
    const reader = await createEngine(ENGINE);
    const found = await reader.discover({
      targets: sim.devices().map((d) => `${d.address}:${d.port}`),
      timeoutS: 2,
    });
    if (found.length !== DEVICES) throw new Error(`found ${found.length} of ${DEVICES} devices`);
    const catalogues: DeviceCatalogue[] = [];
    for (const d of found) catalogues.push(await reader.readCatalogue(d));
    await reader.stop();
    const points = catalogues.reduce((n, c) => n + c.points.length, 0);

    const baseline: number[] = [];
    const ours: number[] = [];
    for (let run = 0; run < RUNS; run++) {
      baseline.push(await engineRun(catalogues));
      ours.push(await gatewayRun(catalogues, broker.url, path.join(tmp, `run${run}`)));
      process.stdout.write(
        `run ${run + 1}: engine ${baseline.at(-1)?.toFixed(0)} values/s, gateway→MQTT ${ours.at(-1)?.toFixed(0)} values/s\n`,
      );
    }
    const value = median(ours);
    const base = median(baseline);
    const ratio = value / base;
    const row = {
      benchmark: "gateway",
      row: "readings/s published end to end",
      unit: "readings/s",
      value: Math.round(value),
      min: Math.round(Math.min(...ours)),
      max: Math.round(Math.max(...ours)),
      baseline: "engine raw read rate",
      baseline_value: Math.round(base),
      ratio: Math.round(ratio * 100) / 100,
      target: "≥ 0.9×",
      met: ratio >= 0.9,
      saturated:
        "BACnet polling (0.1 s interval, more points than a cycle can read); simulator in its own process, broker and subscriber in the bench process",
      notes: `${DEVICES} simulated devices × ${POINTS} points (${points} points), RPM polling, ${RUNS} runs of ${WINDOW_MS / 1000} s after ${WARMUP_MS / 1000} s warm-up; values counted at an MQTT subscriber (QoS 1) vs the engine's readings events; median (min–max) engine ${Math.round(base)} (${Math.round(Math.min(...baseline))}–${Math.round(Math.max(...baseline))})`,
    };
    process.stdout.write(`BENCH_ROW ${JSON.stringify(row)}\n`);

    const replay = await replayRun(catalogues, broker.url, path.join(tmp, "replay"));
    process.stdout.write(
      `replay: ${replay.values} values buffered in ${OUTAGE_MS / 1000} s, replayed at ${replay.rate.toFixed(0)} values/s\n`,
    );
    const replayRow = {
      benchmark: "gateway",
      row: "buffered readings replayed/s after a broker outage",
      unit: "readings/s",
      value: Math.round(replay.rate),
      min: null,
      max: null,
      baseline: "live end-to-end rate (row above)",
      baseline_value: Math.round(value),
      ratio: Math.round((replay.rate / value) * 100) / 100,
      target: "> 1× (the backlog shrinks while polling goes on)",
      met: replay.rate > value,
      saturated: "polling continues at full rate during the replay",
      notes: `${OUTAGE_MS / 1000} s outage (TCP relay cut) while polling ${points} points at 0.1 s: ${replay.values} values (${replay.messages} messages of ${POINTS} values) went to the disk buffer; rate = buffered values / time from reconnect until the buffer was empty`,
    };
    process.stdout.write(`BENCH_ROW ${JSON.stringify(replayRow)}\n`);
  } finally {
    await broker.close();
    await sim.close();
    rmSync(tmp, { recursive: true, force: true });
    clearTimeout(hardStop);
  }
}

/** The engine alone: values/s delivered by its readings events. */
async function engineRun(catalogues: DeviceCatalogue[]): Promise<number> {
  const engine = await createEngine(ENGINE);
  let values = 0;
  engine.on("readings", (_d, readings) => {
    values += readings.length;
  });
  engine.on("error", () => undefined);
  for (const c of catalogues) engine.manage(c, { pollIntervalS: ENGINE.pollIntervalS, cov: false });
  await sleep(WARMUP_MS);
  const start = values;
  const t0 = performance.now();
  await sleep(WINDOW_MS);
  const rate = ((values - start) * 1000) / (performance.now() - t0);
  await engine.stop();
  return rate;
}

/** The whole gateway: values/s arriving at an MQTT subscriber of {base}/{gw}/+/readings. */
async function gatewayRun(catalogues: DeviceCatalogue[], url: string, dataDir: string): Promise<number> {
  const store = new CatalogueStore(dataDir, log);
  for (const catalogue of catalogues) store.save({ catalogue, options: {} });
  const sub = await mqtt.connectAsync(url, { reconnectPeriod: 0 });
  let values = 0;
  sub.on("message", (_t, payload) => {
    // Counting without a full parse keeps the subscriber's own cost small: one "ts" per value.
    const text = payload.toString("latin1");
    let at = text.indexOf('"ts":');
    while (at >= 0) {
      values += 1;
      at = text.indexOf('"ts":', at + 5);
    }
  });
  await sub.subscribeAsync("bench/gw/+/readings", { qos: 1 });
  const gw = await startGateway({
    gateway_id: "gw",
    data_dir: dataDir,
    mqtt: { url, base_topic: "bench" },
    bacnet: {
      interface: ENGINE.interface,
      port: 0,
      apdu_timeout_ms: ENGINE.apduTimeoutMs,
      retries: ENGINE.retries,
    },
    discovery: { on_start: false, interval_s: 0 },
    polling: { interval_s: ENGINE.pollIntervalS, cov: false },
    metrics: { enabled: false },
  });
  await sleep(WARMUP_MS);
  const start = values;
  const t0 = performance.now();
  await sleep(WINDOW_MS);
  const rate = ((values - start) * 1000) / (performance.now() - t0);
  const es = gw.engine.stats();
  process.stderr.write(
    `  gateway: buffered ${gw.buffer.stats.appended}, replayed ${gw.buffer.stats.replayed}, depth ${gw.buffer.depth}, published ${gw.mqtt.stats.published}, failed ${gw.mqtt.stats.failed}, engine reads/s ${es.readsPerS.toFixed(0)} lag ${es.lagMs} errors ${es.errorsTotal}\n`,
  );
  await gw.stop();
  await sub.endAsync(true);
  return rate;
}

/** Polls through an outage, then times how long the backlog takes to reach the broker. */
async function replayRun(
  catalogues: DeviceCatalogue[],
  url: string,
  dataDir: string,
): Promise<{ rate: number; values: number; messages: number }> {
  const store = new CatalogueStore(dataDir, log);
  for (const catalogue of catalogues) store.save({ catalogue, options: {} });
  const link = new BrokerLink(hostPort(url));
  await link.restore();
  const gw = await startGateway({
    gateway_id: "gwr",
    data_dir: dataDir,
    mqtt: { url: link.url, base_topic: "bench", reconnect_period_ms: 100 },
    bacnet: {
      interface: ENGINE.interface,
      port: 0,
      apdu_timeout_ms: ENGINE.apduTimeoutMs,
      retries: ENGINE.retries,
    },
    discovery: { on_start: false, interval_s: 0 },
    polling: { interval_s: ENGINE.pollIntervalS, cov: false },
    buffer: { fsync: "interval" },
    metrics: { enabled: false },
  });
  try {
    await sleep(WARMUP_MS);
    await link.cut();
    await sleep(OUTAGE_MS);
    const messages = gw.buffer.depth;
    const values = gw.bridge.counters.buffered > 0 ? Math.round(messages * POINTS) : 0;
    const t0 = performance.now();
    await link.restore();
    const deadline = Date.now() + 60_000;
    while (gw.buffer.depth > 0 && Date.now() < deadline) await sleep(20);
    const seconds = (performance.now() - t0) / 1000;
    return { rate: gw.buffer.depth === 0 ? values / seconds : 0, values, messages };
  } finally {
    await gw.stop();
    await link.cut();
  }
}

await main();
