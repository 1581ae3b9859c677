// Engine ↔ simulator over real UDP on loopback. Devices bind free ports on 127.0.0.1 (never
// 47808, so parallel suites do not collide); the engine never broadcasts here (`broadcast: ""`),
// it finds devices by unicast targets, ranges and routers.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createEngine, type Engine } from "../../../gateway/bacnet/index.ts";
import type { DiscoveredDevice, EngineOptions } from "../../../gateway/bacnet/types.ts";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import { startTestBbmd } from "./support/bbmd.ts";
import { waitFor } from "./support/wait.ts";

const BASE: EngineOptions = {
  interface: "127.0.0.1",
  port: 0,
  broadcast: "",
  apduTimeoutMs: 500,
  retries: 2,
};
const engines: Engine[] = [];
const sims: Simulator[] = [];

async function engine(extra: EngineOptions = {}): Promise<Engine> {
  const e = await createEngine({ ...BASE, ...extra });
  engines.push(e);
  return e;
}

async function sim(config: Parameters<typeof startSimulator>[0]): Promise<Simulator> {
  const s = await startSimulator({ seed: 7, ...config });
  sims.push(s);
  return s;
}

const targetsOf = (s: Simulator) => [...new Set(s.devices().map((d) => `${d.address}:${d.port}`))];

afterEach(async () => {
  await Promise.allSettled(engines.splice(0).map((e) => e.stop()));
  await Promise.allSettled(sims.splice(0).map((s) => s.close()));
});

describe("discovery", () => {
  it("finds devices by unicast Who-Is, honours ranges and de-duplicates repeated answers", async () => {
    const s = await sim({
      devices: [3_900_001, 3_900_002, 3_900_003, 3_900_050].map((instance) => ({
        instance,
        address: "127.0.0.1",
        port: 0,
      })),
    });
    const e = await engine();
    const all = await e.discover({ targets: targetsOf(s), timeoutS: 1, repeats: 3 });
    expect(all.map((d) => d.deviceInstance)).toEqual([3_900_001, 3_900_002, 3_900_003, 3_900_050]);
    const handle = s.devices().find((d) => d.instance === 3_900_002);
    expect(all.find((d) => d.deviceInstance === 3_900_002)?.address).toBe(
      `${handle?.address}:${handle?.port}`,
    );

    const e2 = await engine();
    const some = await e2.discover({ targets: targetsOf(s), low: 3_900_002, high: 3_900_003, timeoutS: 1 });
    expect(some.map((d) => d.deviceInstance)).toEqual([3_900_002, 3_900_003]);

    // Chunked: a range split into Who-Is of 10 instances each still finds everything once.
    const e3 = await engine();
    const progress: number[] = [];
    e3.on("progress", (p) => progress.push(p.sent));
    const chunked = await e3.discover({
      targets: targetsOf(s),
      low: 3_900_000,
      high: 3_900_099,
      chunkSize: 10,
      timeoutS: 1,
      repeats: 1,
    });
    expect(chunked.map((d) => d.deviceInstance)).toEqual([3_900_001, 3_900_002, 3_900_003, 3_900_050]);
    expect(Math.max(...progress)).toBeGreaterThanOrEqual(10 * 4);
  });

  it("reports a device instance answering from two addresses", async () => {
    // Two simulators, because one refuses a duplicate instance: as on a site with two controllers
    // commissioned with the same number.
    const a = await sim({ devices: [{ instance: 3_900_100, address: "127.0.0.1", port: 0 }] });
    const b = await sim({ devices: [{ instance: 3_900_100, address: "127.0.0.1", port: 0 }] });
    const e = await engine();
    const dups: number[] = [];
    e.on("duplicate", (d, addrs) => {
      dups.push(d);
      expect(addrs).toHaveLength(2);
    });
    const found = await e.discover({ targets: [...targetsOf(a), ...targetsOf(b)], timeoutS: 1 });
    expect(found.map((d) => d.deviceInstance)).toEqual([3_900_100]);
    expect(dups).toEqual([3_900_100]);
  });

  it("discovers, reads and writes devices behind a BACnet router (DNET/DADR)", async () => {
    const s = await sim({
      routers: [
        {
          address: "127.0.0.1",
          port: 0,
          networks: [
            { network: 21, devices: [{ instance: 3_900_201 }, { instance: 3_900_202 }] },
            { network: 22, devices: [{ instance: 3_900_203, rpm: false }] },
          ],
        },
      ],
    });
    const e = await engine({ writeAllowlist: ["*"] });
    const found = await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    expect(found.map((d) => [d.deviceInstance, d.network, d.mac])).toEqual([
      [3_900_201, 21, "01"],
      [3_900_202, 21, "02"],
      [3_900_203, 22, "01"],
    ]);
    const cat = await e.readCatalogue(found[2] as DiscoveredDevice);
    expect(cat.objectName).toBe("SIM-3900203");
    expect(cat.supportsRpm).toBe(false);
    expect(cat.points.length).toBeGreaterThan(5);
    const w = await e.write(3_900_202, "analog_output_1", 12.5, 10);
    expect(w.presentValue).toBe(12.5);
    expect(s.presentValue(3_900_202, "analog_output_1")).toBe(12.5);
    // The same point on the sibling device (same router, other MAC) is untouched.
    expect(s.presentValue(3_900_201, "analog_output_1")).not.toBe(12.5);
  });

  it("registers with a BBMD as a foreign device, re-registers before the TTL ends and discovers through it", async () => {
    const s = await sim({
      devices: [3_900_301, 3_900_302].map((instance) => ({ instance, address: "127.0.0.1", port: 0 })),
    });
    const bbmd = await startTestBbmd(
      "127.0.0.1",
      s.devices().map((d) => ({ address: d.address, port: d.port })),
    );
    try {
      const e = await engine({ bbmd: { address: bbmd.address, port: bbmd.port, ttlSeconds: 2 } });
      expect(bbmd.fdt()).toHaveLength(1);
      const found = await e.discover({ timeoutS: 1 });
      expect(found.map((d) => d.deviceInstance)).toEqual([3_900_301, 3_900_302]);
      // TTL 2 s → re-registration every second.
      await waitFor("re-registration", () => bbmd.registrations.length >= 3, 8000);
      expect(bbmd.registrations.every((r) => r.ttl === 2)).toBe(true);
    } finally {
      await bbmd.close();
    }
  });
});

describe("catalogue", () => {
  it("reads a 320-object list whole in segments and point metadata with RPM", async () => {
    const s = await sim({
      devices: [
        {
          instance: 3_900_401,
          address: "127.0.0.1",
          port: 0,
          maxApdu: 480,
          objects: { analog_value: 300, binary_output: 10, multi_state_value: 10 },
        },
      ],
    });
    const e = await engine();
    const [d] = await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    const cat = await e.readCatalogue(d as DiscoveredDevice);
    expect(cat.points).toHaveLength(320);
    expect(cat.supportsRpm).toBe(true);
    const bo = cat.points.find((p) => p.point === "binary_output_3");
    expect(bo).toMatchObject({ object_type: "binary-output", writable: true });
    expect(typeof bo?.active_text).toBe("string");
    const msv = cat.points.find((p) => p.point === "multi_state_value_1");
    expect(msv?.state_texts?.length).toBeGreaterThan(1);
    const av = cat.points.find((p) => p.point === "analog_value_300");
    expect(av?.units_code).not.toBeNull();
    expect(s.stats().segmentsSent).toBeGreaterThan(0);
  });

  it("reads the object list index by index from a device that cannot segment, and falls back to ReadProperty", async () => {
    const s = await sim({
      devices: [
        {
          instance: 3_900_402,
          address: "127.0.0.1",
          port: 0,
          maxApdu: 206,
          segmentation: false,
          rpm: false,
          objects: { analog_input: 310 },
        },
      ],
    });
    const e = await engine({ perDeviceInFlight: 8 });
    const [d] = await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    const cat = await e.readCatalogue(d as DiscoveredDevice);
    expect(cat.supportsRpm).toBe(false);
    expect(cat.points).toHaveLength(310);
    expect(cat.points.map((p) => p.point)).toContain("analog_input_310");
    const r = await e.readPoints(3_900_402, ["analog_input_1", "analog_input_310", "analog_input_999"]);
    expect(typeof r[0]?.value).toBe("number");
    expect(typeof r[1]?.value).toBe("number");
    expect(r[2]).toMatchObject({ value: null, quality: "bad", error: "GW_ERR_BACNET_UNKNOWN_OBJECT" });
  });

  it("shrinks RPM batches for a small-APDU device without segmentation", async () => {
    const s = await sim({
      devices: [
        {
          instance: 3_900_403,
          address: "127.0.0.1",
          port: 0,
          maxApdu: 128,
          segmentation: false,
          objects: { multi_state_value: 20, analog_value: 20 },
        },
      ],
    });
    const e = await engine();
    const [d] = await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    const cat = await e.readCatalogue(d as DiscoveredDevice);
    expect(cat.points).toHaveLength(40);
    expect(cat.points.every((p) => p.name.length > 0)).toBe(true);
  });
});

describe("reading and writing", () => {
  it("never hands one request another request's answer with far more than 256 requests in flight", async () => {
    const s = await sim({
      devices: [
        {
          instance: 3_900_501,
          address: "127.0.0.1",
          port: 0,
          changeIntervalMs: 0,
          objects: { analog_value: 600 },
        },
      ],
    });
    for (let i = 1; i <= 600; i++) s.setPresentValue(3_900_501, `analog_value_${i}`, i * 10);
    const e = await engine({ perDeviceInFlight: 255, globalInFlight: 2000, apduTimeoutMs: 2000, retries: 3 });
    await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    const reads = Array.from({ length: 600 }, (_, i) => e.read(3_900_501, `analog_value_${i + 1}`));
    const values = await Promise.all(reads);
    expect(values).toEqual(Array.from({ length: 600 }, (_, i) => (i + 1) * 10));
  });

  it("writes with priority, refuses priorities and points it must not touch, and relinquishes with null", async () => {
    const s = await sim({
      devices: [{ instance: 3_900_601, address: "127.0.0.1", port: 0, changeIntervalMs: 0 }],
    });
    const e = await engine({
      writeAllowlist: ["3900601:analog_output_*", "3900601:binary_output_1", "3900601:analog_input_1"],
      minWritePriority: 8,
    });
    await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    const w = await e.write(3_900_601, "analog_output_1", 42.5, 9);
    expect(w.presentValue).toBe(42.5);
    expect(w.priorityArray?.[8]).toBe(42.5);
    expect(w.priorityArray?.filter((v) => v !== null)).toHaveLength(1);
    const b = await e.write(3_900_601, "binary_output_1", true);
    expect(b.priority).toBe(8);
    expect(b.presentValue).toBe(true);
    expect(s.presentValue(3_900_601, "binary_output_1")).toBeTruthy();
    await expect(e.write(3_900_601, "analog_output_1", 1, 5)).rejects.toMatchObject({
      code: "GW_ERR_WRITE_PRIORITY",
    });
    await expect(e.write(3_900_601, "analog_value_1", 1, 9)).rejects.toMatchObject({
      code: "GW_ERR_WRITE_NOT_ALLOWED",
    });
    await expect(e.write(3_900_601, "analog_input_1", 1, 9)).rejects.toMatchObject({
      code: "GW_ERR_BACNET_WRITE_ACCESS_DENIED",
    });
    await expect(e.write(3_900_601, "binary_output_1", "maybe")).rejects.toMatchObject({
      code: "GW_ERR_WRITE_VALUE",
    });
    const r = await e.write(3_900_601, "analog_output_1", null, 9);
    expect(r.priorityArray?.every((v) => v === null)).toBe(true);
    expect(r.presentValue).not.toBe(42.5);
    await expect(e.read(3_900_601, "analog_input_77")).rejects.toMatchObject({
      code: "GW_ERR_BACNET_UNKNOWN_OBJECT",
    });
    await expect(e.read(3_900_601, "analog_input_1", "no_such_property")).rejects.toMatchObject({
      code: "GW_ERR_BACNET_PROPERTY_NAME",
    });
  });

  it("polls on schedule, marks a silent device offline, probes it and brings it back", async () => {
    const s = await sim({ devices: [{ instance: 3_900_701, address: "127.0.0.1", port: 0 }] });
    const e = await engine({
      apduTimeoutMs: 200,
      retries: 0,
      offlineAfterFailures: 2,
      pollIntervalS: 0.2,
      cov: false,
      probeMaxS: 1,
    });
    const [d] = await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    const cat = await e.readCatalogue(d as DiscoveredDevice);
    const states: string[] = [];
    let polls = 0;
    e.on("availability", (_dev, state) => states.push(state));
    e.on("readings", (_dev, readings, source) => {
      if (source === "poll") polls++;
      expect(readings.length).toBeGreaterThan(0);
    });
    e.manage(cat);
    await waitFor("polled readings", () => polls >= 3);
    s.setOnline(3_900_701, false);
    await waitFor("offline", () => states.includes("offline"));
    expect(e.isOnline(3_900_701)).toBe(false);
    s.setOnline(3_900_701, true);
    await waitFor("back online", () => states.lastIndexOf("online") > states.indexOf("offline"));
    const before = polls;
    await waitFor("polling resumed", () => polls > before + 2);
    expect(e.stats().errorsByCode.GW_ERR_BACNET_TIMEOUT).toBeGreaterThan(0);
  });

  it("takes a lost device back when it announces itself with I-Am", async () => {
    const s = await sim({ devices: [{ instance: 3_900_702, address: "127.0.0.1", port: 0 }] });
    const e = await engine({
      apduTimeoutMs: 200,
      retries: 0,
      offlineAfterFailures: 1,
      pollIntervalS: 0.2,
      cov: false,
      probeMaxS: 600,
    });
    const [d] = await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    const cat = await e.readCatalogue(d as DiscoveredDevice);
    const events: string[] = [];
    e.on("availability", (_dev, state) => events.push(state));
    e.on("discovered", (dev) => events.push(`discovered ${dev.deviceInstance}`));
    e.manage(cat);
    s.setOnline(3_900_702, false);
    await waitFor("offline", () => events.includes("offline"));
    s.setOnline(3_900_702, true);
    await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    await waitFor("online again", () => e.isOnline(3_900_702));
    const off = events.indexOf("offline");
    expect(events.indexOf("discovered 3900702", off)).toBeGreaterThan(off);
  });

  it("keeps reading correctly through 20% packet loss with retries", async () => {
    const s = await sim({
      devices: [{ instance: 3_900_801, address: "127.0.0.1", port: 0, lossRate: 0.2, changeIntervalMs: 0 }],
    });
    const e = await engine({ apduTimeoutMs: 150, retries: 8 });
    e.addDevice({
      deviceInstance: 3_900_801,
      address: targetsOf(s)[0] as string,
      network: null,
      mac: null,
      maxApdu: 1476,
      segmentation: "both",
      vendorId: 999,
    });
    for (let i = 0; i < 30; i++) {
      const r = await e.readPoints(3_900_801, ["analog_input_1", "analog_output_1", "binary_input_1"]);
      expect(r.every((x) => x.error === undefined && x.value !== null)).toBe(true);
    }
    expect(e.transportStats()?.retries).toBeGreaterThan(0);
  });
});

describe("COV", () => {
  it("subscribes, receives changes, renews before the lifetime ends and cancels on stop", async () => {
    const s = await sim({
      devices: [{ instance: 3_900_901, address: "127.0.0.1", port: 0, changeIntervalMs: 0 }],
    });
    const e = await engine({ covLifetimeS: 2, pollIntervalS: 60 });
    const [d] = await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    const cat = await e.readCatalogue(d as DiscoveredDevice);
    const cov: { point: string; value: unknown; at: number }[] = [];
    e.on("readings", (_dev, readings, source) => {
      if (source === "cov")
        for (const r of readings) cov.push({ point: r.point, value: r.value, at: Date.now() });
    });
    e.manage(cat, { include: ["analog_value_1", "binary_value_1"] });
    await waitFor(
      "initial notifications",
      () => cov.some((c) => c.point === "analog_value_1") && cov.some((c) => c.point === "binary_value_1"),
    );
    expect(e.stats().covSubscriptions).toBe(2);
    const t0 = Date.now();
    // Past the 2 s lifetime: only a renewed subscription still delivers.
    await new Promise((r) => setTimeout(r, 3000));
    s.setPresentValue(3_900_901, "analog_value_1", 77);
    await waitFor("notification after renewal", () =>
      cov.find((c) => c.point === "analog_value_1" && c.value === 77 && c.at > t0),
    );
    const sent = s.stats().covNotificationsSent;
    await e.stop();
    s.setPresentValue(3_900_901, "analog_value_1", 78);
    await new Promise((r) => setTimeout(r, 300));
    expect(s.stats().covNotificationsSent).toBe(sent);
  });

  it("acknowledges confirmed notifications and falls back to polling where COV is refused", async () => {
    const s = await sim({
      devices: [
        { instance: 3_900_902, address: "127.0.0.1", port: 0, changeIntervalMs: 0 },
        { instance: 3_900_903, address: "127.0.0.1", port: 0, cov: false },
      ],
    });
    const e = await engine({ covConfirmed: true, covLifetimeS: 60, pollIntervalS: 0.3 });
    const found = await e.discover({ targets: targetsOf(s), timeoutS: 1 });
    const cov: string[] = [];
    const polled = new Set<number>();
    const fallbacks: string[] = [];
    e.on("readings", (dev, readings, source) => {
      if (source === "cov") cov.push(...readings.map((r) => r.point));
      else polled.add(dev);
    });
    e.on("covFallback", (dev, point) => fallbacks.push(`${dev}:${point}`));
    for (const d of found) {
      const cat = await e.readCatalogue(d);
      // The second device says it does not support COV; force a try to exercise the refusal path.
      e.manage({ ...cat, supportsCov: true }, { include: ["analog_value_1"] });
    }
    await waitFor("confirmed notification", () => cov.includes("analog_value_1"));
    s.setPresentValue(3_900_902, "analog_value_1", 55);
    await waitFor(
      "second confirmed notification",
      () => cov.filter((p) => p === "analog_value_1").length >= 2,
    );
    await waitFor("fallback", () => fallbacks.includes("3900903:analog_value_1"));
    await waitFor("polling the refused device", () => polled.has(3_900_903));
  });
});

afterAll(async () => {
  await Promise.allSettled(engines.map((e) => e.stop()));
  await Promise.allSettled(sims.map((s) => s.close()));
});

beforeAll(() => {
  // Fail fast if the loopback range is unusable (e.g. a container without lo).
  expect(BASE.interface).toBe("127.0.0.1");
});
