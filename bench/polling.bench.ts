// Polling: point values per second delivered by the engine's scheduler (every device managed, poll
// interval shorter than a cycle so schedules stretch and run back to back) against a bare RPM loop
// on the stock library (present-value + status-flags of all 50 points per request, 64 requests in
// flight, cycling over the same devices). Both count values over the same measurement window.
// Run: npx tsx bench/polling.bench.ts [devices=1000]
import { Engine } from "../gateway/bacnet/engine.ts";
import type { DeviceCatalogue } from "../gateway/bacnet/types.ts";
import { BENCH_OBJECTS, emit, guard, libraryClient, sleep, startDevices } from "./bacnet-support.ts";

const DEVICES = Number(process.argv[2] ?? 1000);
const RUNS = 3;
const WARMUP_MS = 3000;
const WINDOW_MS = 5000;
const IN_FLIGHT = 64;
guard();

const cluster = await startDevices(DEVICES, 2);
const devices = cluster.devices();
process.stdout.write(
  `polling: ${DEVICES} devices × 50 points in ${cluster.pids.length} simulator processes\n`,
);

const TYPE = {
  analog_input: 0,
  analog_value: 2,
  binary_input: 3,
  binary_value: 5,
  multi_state_value: 19,
} as const;
const objects: { type: number; instance: number; point: string }[] = [];
for (const [name, count] of Object.entries(BENCH_OBJECTS))
  for (let i = 1; i <= count; i++)
    objects.push({ type: TYPE[name as keyof typeof TYPE], instance: i, point: `${name}_${i}` });

/** A catalogue without reading one: the same 50 points on every device. */
function catalogue(d: (typeof devices)[number]): DeviceCatalogue {
  return {
    deviceInstance: d.instance,
    address: `${d.address}:${d.port}`,
    network: null,
    mac: null,
    maxApdu: 1476,
    segmentation: "both",
    vendorId: 999,
    objectName: null,
    description: null,
    location: null,
    vendorName: null,
    modelName: null,
    firmwareRevision: null,
    applicationSoftwareVersion: null,
    supportsRpm: true,
    supportsCov: false,
    readAt: new Date().toISOString(),
    points: objects.map((o) => ({
      point: o.point,
      object_type: o.point.replace(/_\d+$/, "").replace(/_/g, "-"),
      object_instance: o.instance,
      name: o.point,
      description: null,
      units: null,
      units_code: null,
      writable: false,
      state_texts: null,
      active_text: null,
      inactive_text: null,
      cov_increment: null,
    })),
  };
}

async function ours(): Promise<{ rate: number; overruns: number; errors: number }> {
  const e = new Engine({
    interface: "127.0.0.1",
    port: 0,
    broadcast: "",
    cov: false,
    // The engine's shortest interval: 1000 devices × 50 points at 0.1 s cap the scheduler at
    // 500k values/s, which it reaches; at 0.05 s the cap (1M) is above what the machine can do,
    // so schedules stretch and the figure is throughput, not the schedule.
    pollIntervalS: 0.05,
    globalInFlight: IN_FLIGHT,
    perDeviceInFlight: 4,
  });
  await e.start();
  let values = 0;
  let counting = false;
  e.on("readings", (_d, readings) => {
    if (counting) for (const r of readings) if (r.error === undefined) values++;
  });
  try {
    for (const d of devices) e.manage(catalogue(d));
    await sleep(WARMUP_MS);
    counting = true;
    const t0 = performance.now();
    await sleep(WINDOW_MS);
    counting = false;
    const rate = values / ((performance.now() - t0) / 1000);
    const st = e.stats();
    const ts = e.transportStats();
    process.stdout.write(
      `  engine transport: ${ts?.requests} requests, ${ts?.retries} retries, ${ts?.timeouts} timeouts, ${ts?.lateOrUnmatched} late\n`,
    );
    return { rate, overruns: st.overrunsTotal, errors: st.errorsTotal };
  } finally {
    await e.stop();
  }
}

async function baseline(): Promise<number> {
  // The library's timeout sweep settles the wrong request: once its apduTimeout has passed since the
  // first request, every sweep (each ≥ 100 ms) deletes the live request that reuses the invoke id of
  // an expired, long-answered one, and that promise never settles (BACNET-NOTES, "request
  // bookkeeping"). With the default 3 s the first sweep lands exactly where the window starts and
  // stalls all 64 workers for their 3.5 s race: the baseline measured that bug (35k–156k values/s
  // between runs), not the library's RPM path. A timeout longer than the client lives means the
  // sweep never runs; a lost answer is still bounded by each worker's own race below.
  const c = libraryClient({ apduTimeoutMs: 60_000 });
  await sleep(50);
  let values = 0;
  let counting = false;
  let running = true;
  const spec = objects.map((o) => ({
    objectId: { type: o.type, instance: o.instance },
    properties: [{ id: 85 }, { id: 111 }],
  }));
  let next = 0;
  const worker = async () => {
    while (running) {
      const d = devices[next++ % devices.length] as (typeof devices)[number];
      try {
        // The library can leave a promise unsettled; race it so a worker never hangs.
        const res = (await Promise.race([
          c.readPropertyMultiple({ address: `${d.address}:${d.port}` }, spec),
          sleep(3500).then(() => null),
        ])) as { values: { values: unknown[] }[] } | null;
        if (res && counting) values += res.values.length;
      } catch {
        // errors count as no values
      }
    }
  };
  const workers = Array.from({ length: IN_FLIGHT }, worker);
  await sleep(WARMUP_MS);
  counting = true;
  const t0 = performance.now();
  await sleep(WINDOW_MS);
  counting = false;
  const rate = values / ((performance.now() - t0) / 1000);
  running = false;
  await Promise.race([Promise.all(workers), sleep(4000)]);
  c.close();
  return rate;
}

const o: number[] = [];
const b: number[] = [];
let overruns = 0;
let errors = 0;
try {
  // Warm both sides and the simulator processes up (JIT, sockets) before anything is measured.
  await baseline();
  await ours();
  for (let r = 0; r < RUNS; r++) {
    // Alternate which side goes first: the simulator warms up (JIT) and the machine's load drifts.
    let x: Awaited<ReturnType<typeof ours>>;
    let y: number;
    if (r % 2 === 0) {
      x = await ours();
      await sleep(1000);
      y = await baseline();
    } else {
      y = await baseline();
      await sleep(1000);
      x = await ours();
    }
    o.push(x.rate);
    overruns += x.overruns;
    errors += x.errors;
    b.push(y);
    process.stdout.write(
      `run ${r + 1}: scheduler ${Math.round(x.rate)} values/s (${x.overruns} overruns), bare RPM loop ${Math.round(y)} values/s\n`,
    );
  }
} finally {
  await cluster.close();
}

emit({
  benchmark: "polling",
  row: "RPM values/s",
  unit: "values/s",
  ours: o,
  base: b,
  baseline: "bare RPM loop, same library, same devices (50 points × PV+SF per request, 64 in flight)",
  target: "≥ 0.8×",
  higherIsBetter: true,
  met: (_v, ratio) => ratio >= 0.8,
  paired: true,
  saturated: "CPU: 2 cores shared by the client under test and 2 simulator processes",
  notes: `${DEVICES} devices; ratio = median of per-run ratios (order alternates per run); scheduler interval 0.05 s (the engine's minimum) so schedules stretch (overruns reported: ${overruns}); engine read errors: ${errors}; values counted only when read without error`,
});
process.exit(0);
