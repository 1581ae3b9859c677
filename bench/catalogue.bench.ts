// Catalogue: device properties + object list + metadata of every point, for N devices × 50 points.
// Ours: engine.readCatalogue() for every device, 32 devices at a time (engine limits 4/device,
// 64 total). Baseline: the same reads as a bare loop on the stock library (ReadProperty of
// protocol-services and object-list, RPM of device properties and of point metadata in batches of
// 10 objects), with the same 32 devices at a time and at most 4 requests per device.
// Run: npx tsx bench/catalogue.bench.ts [devices=1000]
import { Engine } from "../gateway/bacnet/engine.ts";
import { emit, guard, libraryClient, sleep, startDevices } from "./bacnet-support.ts";

const DEVICES = Number(process.argv[2] ?? 1000);
const RUNS = 3;
const PARALLEL_DEVICES = 32;
guard();

const cluster = await startDevices(DEVICES, 2);
const devices = cluster.devices();
process.stdout.write(
  `catalogue: ${DEVICES} devices × 50 points in ${cluster.pids.length} simulator processes\n`,
);

async function pool<T>(items: T[], n: number, fn: (t: T) => Promise<void>): Promise<void> {
  const q = [...items];
  await Promise.all(
    Array.from({ length: n }, async () => {
      for (let t = q.shift(); t !== undefined; t = q.shift()) await fn(t);
    }),
  );
}

async function ours(): Promise<{ s: number; points: number }> {
  const e = new Engine({ interface: "127.0.0.1", port: 0, broadcast: "", cov: false });
  await e.start();
  let points = 0;
  try {
    const t0 = performance.now();
    await pool(devices, PARALLEL_DEVICES, async (d) => {
      const cat = await e.readCatalogue({
        deviceInstance: d.instance,
        address: `${d.address}:${d.port}`,
        network: null,
        mac: null,
        maxApdu: 1476,
        segmentation: "both",
        vendorId: 999,
      });
      points += cat.points.length;
    });
    return { s: (performance.now() - t0) / 1000, points };
  } finally {
    await e.stop();
  }
}

const P = {
  OBJECT_NAME: 77,
  DESCRIPTION: 28,
  PRESENT_VALUE: 85,
  STATUS_FLAGS: 111,
  OUT_OF_SERVICE: 81,
  UNITS: 117,
};
const metaFor = (type: number) => {
  const ids = [P.OBJECT_NAME, P.DESCRIPTION, P.PRESENT_VALUE, P.STATUS_FLAGS, P.OUT_OF_SERVICE];
  if ([0, 1, 2].includes(type)) ids.push(P.UNITS, 22);
  if ([3, 4, 5].includes(type)) ids.push(4, 46);
  if ([13, 14, 19].includes(type)) ids.push(110);
  if ([1, 2, 4, 5, 14, 19].includes(type)) ids.push(104);
  return ids.map((id) => ({ id }));
};

/** The library can leave a promise unsettled; the baseline races every call against 5 s. */
function within<T>(p: Promise<T>): Promise<T> {
  return Promise.race([p, sleep(5000).then(() => Promise.reject(new Error("unsettled")))]);
}

async function baseline(): Promise<{ s: number; points: number; failed: number }> {
  const c = libraryClient();
  await sleep(50);
  let points = 0;
  let failed = 0;
  try {
    const t0 = performance.now();
    await pool(devices, PARALLEL_DEVICES, async (d) => {
      const addr = { address: `${d.address}:${d.port}` };
      const dev = { type: 8, instance: d.instance };
      try {
        await within(c.readProperty(addr, dev, 97));
        await within(
          c.readPropertyMultiple(addr, [
            { objectId: dev, properties: [77, 28, 58, 121, 120, 70, 44, 12, 62, 107].map((id) => ({ id })) },
          ]),
        );
        const list = (await within(c.readProperty(addr, dev, 76))) as {
          values: { value: { type: number; instance: number } }[];
        };
        const objs = list.values.map((v) => v.value).filter((o) => o.type !== 8);
        const batches: (typeof objs)[] = [];
        for (let i = 0; i < objs.length; i += 10) batches.push(objs.slice(i, i + 10));
        await pool(batches, 4, async (b) => {
          await within(
            c.readPropertyMultiple(
              addr,
              b.map((o) => ({ objectId: o, properties: metaFor(o.type) })),
            ),
          );
        });
        points += objs.length;
      } catch {
        failed++;
      }
    });
    return { s: (performance.now() - t0) / 1000, points, failed };
  } finally {
    c.close();
  }
}

const o: number[] = [];
const b: number[] = [];
let baseFailed = 0;
try {
  const started = performance.now();
  for (let r = 0; r < RUNS; r++) {
    // Stay inside the 2-minute bound on a busy machine: a third run only if there is time for it.
    if (r >= 2 && performance.now() - started > 70_000) {
      process.stdout.write("skipping run 3: not enough time left in the 2-minute bound\n");
      break;
    }
    // Alternate which side goes first: the simulator warms up (JIT) and the machine's load drifts.
    let x: Awaited<ReturnType<typeof ours>>;
    let y: Awaited<ReturnType<typeof baseline>>;
    if (r % 2 === 0) {
      x = await ours();
      y = await baseline();
    } else {
      y = await baseline();
      x = await ours();
    }
    if (x.points !== DEVICES * 50)
      throw new Error(`engine catalogued ${x.points} points, expected ${DEVICES * 50}`);
    o.push(x.s);
    baseFailed += y.failed;
    b.push(y.s);
    process.stdout.write(
      `run ${r + 1}: engine ${x.s.toFixed(2)} s, library loop ${y.s.toFixed(2)} s (${y.failed} devices failed)\n`,
    );
  }
} finally {
  await cluster.close();
}

emit({
  benchmark: "catalogue",
  row: `catalogue of ${DEVICES} devices × 50 points`,
  unit: "s",
  ours: o,
  base: b,
  baseline:
    "bare library loop: RP protocol-services + RPM device props + RP object-list + RPM metadata (10 objects/request), same parallelism",
  target: "< 60 s",
  higherIsBetter: false,
  paired: true,
  met: (v) => v < 60,
  saturated: "CPU: simulator processes and client share 2 cores",
  notes: `engine also reads priority-array size and is robust to RPM/segmentation fallbacks; baseline device failures over all runs: ${baseFailed}`,
});
emit({
  benchmark: "catalogue",
  row: "points catalogued/s",
  unit: "points/s",
  ours: o.map((s) => (DEVICES * 50) / s),
  base: b.map((s) => (DEVICES * 50) / s),
  baseline: "bare library loop, same reads, same parallelism",
  target: "≥ 1,000 points/s",
  higherIsBetter: true,
  paired: true,
  met: (v) => v >= 1000,
  saturated: "CPU: simulator processes and client share 2 cores",
  notes: "derived from the row above",
});
process.exit(0);
