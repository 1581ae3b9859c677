// COV fallback rules and availability over real UDP on loopback, engine ↔ our simulator: a
// subscription the device acknowledges but never serves (silent) or refuses with an Error PDU goes
// back to polling; per-point COV from the catalogue (the configuration) is honoured; an all-COV
// device is noticed offline by the liveness probe, long before its subscriptions would be renewed;
// availability is unknown until the first answer. Timings are printed, never asserted: the
// waitFor bounds are fail-safes.
import { afterEach, describe, expect, it } from "vitest";
import { createEngine, type Engine } from "../../../gateway/bacnet/index.ts";
import type { DeviceCatalogue, DiscoveredDevice, EngineOptions } from "../../../gateway/bacnet/types.ts";
import { type SimDeviceConfig, type Simulator, startSimulator } from "../../../simulator/index.ts";
import { waitFor } from "./support/wait.ts";

const BASE: EngineOptions = {
  interface: "127.0.0.1",
  port: 0,
  broadcast: "",
  apduTimeoutMs: 300,
  retries: 1,
};
const engines: Engine[] = [];
const sims: Simulator[] = [];

afterEach(async () => {
  await Promise.allSettled(engines.splice(0).map((e) => e.stop()));
  await Promise.allSettled(sims.splice(0).map((s) => s.close()));
});

async function setup(
  device: Omit<SimDeviceConfig, "address" | "port">,
  options: EngineOptions,
): Promise<{ s: Simulator; e: Engine; cat: DeviceCatalogue }> {
  const s = await startSimulator({
    seed: 11,
    devices: [{ changeIntervalMs: 0, ...device, address: "127.0.0.1", port: 0 }],
  });
  sims.push(s);
  const e = await createEngine({ ...BASE, ...options });
  engines.push(e);
  const [h] = s.devices();
  const found = await e.discover({ targets: [`${h?.address}:${h?.port}`], timeoutS: 0.5 });
  expect(found.map((d) => d.deviceInstance)).toEqual([device.instance]);
  const cat = await e.readCatalogue(found[0] as DiscoveredDevice);
  return { s, e, cat };
}

interface Seen {
  cov: { point: string; value: unknown; at: number }[];
  poll: { point: string; value: unknown; at: number }[];
  fallbacks: { point: string; reason: string; at: number }[];
  availability: { state: string; reason: string; at: number }[];
}

function record(e: Engine, device: number): Seen {
  const seen: Seen = { cov: [], poll: [], fallbacks: [], availability: [] };
  e.on("readings", (dev, readings, source) => {
    if (dev !== device) return;
    for (const r of readings) seen[source].push({ point: r.point, value: r.value, at: Date.now() });
  });
  e.on("covFallback", (dev, point, reason) => {
    if (dev === device) seen.fallbacks.push({ point, reason, at: Date.now() });
  });
  e.on("availability", (dev, state, reason) => {
    if (dev === device) seen.availability.push({ state, reason, at: Date.now() });
  });
  return seen;
}

describe("COV fallback", () => {
  it("falls back to polling for a point whose acknowledged subscription stays silent", async () => {
    const dev = 3_910_001;
    const { s, e, cat } = await setup(
      { instance: dev, covFaults: { analog_value_1: "silent" } },
      { covSilenceS: 1, covLifetimeS: 60, pollIntervalS: 0.3 },
    );
    const seen = record(e, dev);
    const t0 = Date.now();
    e.manage(cat, { include: ["analog_value_1", "binary_value_1"] });
    await waitFor("fallback of the silent point", () => seen.fallbacks.length > 0);
    console.log(`silent COV detected after ${Date.now() - t0} ms (silence window 1 s)`);
    expect(seen.fallbacks.map((f) => f.point)).toEqual(["analog_value_1"]);
    expect(seen.fallbacks[0]?.reason).toMatch(/no COV notification/);
    // The healthy point keeps its subscription and got its initial notification.
    expect(seen.cov.some((c) => c.point === "binary_value_1")).toBe(true);
    expect(seen.cov.some((c) => c.point === "analog_value_1")).toBe(false);
    expect(e.stats()).toMatchObject({ covSubscriptions: 1, covFallbacks: 1 });
    // Values of the silent point keep flowing, now by polling.
    const tFallback = Date.now();
    s.setPresentValue(dev, "analog_value_1", 42.5);
    await waitFor("polled value of the silent point", () =>
      seen.poll.find((p) => p.point === "analog_value_1" && p.value === 42.5 && p.at >= tFallback),
    );
    const flipped = s.presentValue(dev, "binary_value_1") !== true;
    s.setPresentValue(dev, "binary_value_1", flipped);
    await waitFor("COV value of the healthy point", () =>
      seen.cov.find((c) => c.point === "binary_value_1" && c.value === flipped && c.at >= tFallback),
    );
    expect(seen.fallbacks).toHaveLength(1);
    expect(e.isOnline(dev)).toBe(true);
  });

  it("falls back to polling when the device refuses SubscribeCOV with an Error PDU", async () => {
    const dev = 3_910_002;
    const { s, e, cat } = await setup(
      { instance: dev, covFaults: { "*": "refuse" } },
      { covLifetimeS: 60, pollIntervalS: 0.3 },
    );
    // The device advertises SubscribeCOV in protocol-services-supported; it refuses per object.
    expect(cat.supportsCov).toBe(true);
    const seen = record(e, dev);
    e.manage(cat, { include: ["analog_value_1", "binary_value_1"] });
    await waitFor("both points refused", () => seen.fallbacks.length >= 2);
    expect(seen.fallbacks.map((f) => f.point).sort()).toEqual(["analog_value_1", "binary_value_1"]);
    for (const f of seen.fallbacks) expect(f.reason).toMatch(/GW_ERR_BACNET_SERVICE_NOT_SUPPORTED/);
    // A refusal is an answer: the device is online.
    expect(seen.availability[0]?.state).toBe("online");
    const t = Date.now();
    s.setPresentValue(dev, "analog_value_1", -3.25);
    await waitFor("polled value after refusal", () =>
      seen.poll.find((p) => p.point === "analog_value_1" && p.value === -3.25 && p.at >= t),
    );
    expect(seen.cov).toEqual([]);
    expect(e.stats()).toMatchObject({ covSubscriptions: 0, covFallbacks: 2 });
  });

  it("honours a point's own cov setting over the device's", async () => {
    const dev = 3_910_003;
    const { s, e, cat } = await setup({ instance: dev }, { covLifetimeS: 60, pollIntervalS: 0.3 });
    const seen = record(e, dev);
    // As the gateway hands it over from `devices.<id>.points.<point>.cov`: analog_value_1 is never
    // on COV although its device is.
    const scheduled: DeviceCatalogue = {
      ...cat,
      points: cat.points.map((p) => (p.point === "analog_value_1" ? { ...p, cov: false } : p)),
    };
    e.manage(scheduled, { cov: true, include: ["analog_value_1", "binary_value_1"] });
    await waitFor("binary_value_1 on COV", () => seen.cov.some((c) => c.point === "binary_value_1"));
    const t = Date.now();
    s.setPresentValue(dev, "analog_value_1", 12.75);
    await waitFor("analog_value_1 polled", () =>
      seen.poll.find((p) => p.point === "analog_value_1" && p.value === 12.75 && p.at >= t),
    );
    expect(e.stats().covSubscriptions).toBe(1);
    expect(seen.cov.some((c) => c.point === "analog_value_1")).toBe(false);

    // The other way round: COV off for the device, on for one point.
    const cov2: DeviceCatalogue = {
      ...cat,
      points: cat.points.map((p) => (p.point === "analog_value_2" ? { ...p, cov: true } : p)),
    };
    const seen2 = record(e, dev);
    e.manage(cov2, { cov: false, include: ["analog_value_2", "binary_value_2"] });
    await waitFor("analog_value_2 on COV", () => seen2.cov.some((c) => c.point === "analog_value_2"));
    await waitFor("binary_value_2 polled", () => seen2.poll.some((p) => p.point === "binary_value_2"));
    expect(seen2.cov.some((c) => c.point === "binary_value_2")).toBe(false);
    expect(e.stats().covSubscriptions).toBe(1);
  });
});

describe("availability", () => {
  it("notices a silent all-COV device offline by the liveness probe and re-subscribes when it returns", async () => {
    const dev = 3_910_004;
    const { s, e, cat } = await setup(
      { instance: dev },
      {
        apduTimeoutMs: 200,
        retries: 0,
        offlineAfterFailures: 2,
        livenessS: 1,
        probeMaxS: 1,
        // Renewal would come at 45 s: far beyond every bound below, so it is not what notices.
        covLifetimeS: 60,
        pollIntervalS: 60,
      },
    );
    const seen = record(e, dev);
    e.manage(cat, { include: ["analog_value_1", "binary_value_1"] });
    await waitFor("initial notifications", () =>
      ["analog_value_1", "binary_value_1"].every((p) => seen.cov.some((c) => c.point === p)),
    );
    expect(seen.availability.map((a) => a.state)).toEqual(["online"]);
    expect(e.stats().covSubscriptions).toBe(2);
    // Quiet but alive for several liveness periods: probes are answered, it stays online.
    const requestsBefore = s.stats().requestsReceived;
    await new Promise((r) => setTimeout(r, 3000));
    expect(seen.availability.map((a) => a.state)).toEqual(["online"]);
    const probes = s.stats().requestsReceived - requestsBefore;
    console.log(`liveness probes answered in 3 s of a quiet all-COV device: ${probes}`);
    expect(probes).toBeGreaterThan(0);
    expect(seen.poll).toEqual([]);

    const tOff = Date.now();
    s.setOnline(dev, false);
    await waitFor("offline", () => seen.availability.some((a) => a.state === "offline"), 20_000);
    console.log(`all-COV device offline after ${Date.now() - tOff} ms (liveness 1 s, 2 failures × 200 ms)`);
    expect(e.availability(dev)).toBe("offline");
    expect(e.stats().covSubscriptions).toBe(0);

    const covBefore = seen.cov.length;
    const tOn = Date.now();
    s.setOnline(dev, true);
    await waitFor("online again", () => seen.availability.at(-1)?.state === "online", 20_000);
    console.log(`back online after ${Date.now() - tOn} ms (probe backoff capped at 1 s)`);
    // The values did not change: new notifications can only be the initial ones of new subscriptions.
    await waitFor("re-subscribed", () =>
      ["analog_value_1", "binary_value_1"].every((p) => seen.cov.slice(covBefore).some((c) => c.point === p)),
    );
    await waitFor("both subscriptions active", () => e.stats().covSubscriptions === 2);
    const t = Date.now();
    s.setPresentValue(dev, "analog_value_1", 61.5);
    await waitFor("COV after return", () =>
      seen.cov.find((c) => c.point === "analog_value_1" && c.value === 61.5 && c.at >= t),
    );
    expect(seen.availability.map((a) => a.state)).toEqual(["online", "offline", "online"]);
  });

  it("starts unknown and becomes online only with the first answer, or offline without one", async () => {
    const live = 3_910_005;
    const { s, e, cat } = await setup(
      { instance: live },
      { apduTimeoutMs: 200, retries: 0, offlineAfterFailures: 2, pollIntervalS: 0.3, cov: false },
    );
    const seen = record(e, live);
    e.manage(cat);
    expect(e.availability(live)).toBe("unknown");
    expect(e.isOnline(live)).toBe(false);
    expect(e.stats().devices).toEqual({ total: 1, online: 0, offline: 0 });
    expect(seen.availability).toEqual([]);
    await waitFor("online", () => seen.availability.length > 0);
    expect(seen.availability[0]).toMatchObject({ state: "online", reason: "answered poll" });
    expect(e.stats().devices).toEqual({ total: 1, online: 1, offline: 0 });
    // Managed again (new options): still online, not announced a second time.
    const polls = seen.poll.length;
    e.manage(cat, { pollIntervalS: 0.2 });
    expect(e.availability(live)).toBe("online");
    await waitFor("polling with the new options", () => seen.poll.length > polls + 3);
    expect(seen.availability).toHaveLength(1);

    // A device that never answers after manage(): unknown, then offline — never online first.
    await e.unmanage(live);
    s.setOnline(live, false);
    const seenDead = record(e, live);
    e.manage(cat);
    expect(e.availability(live)).toBe("unknown");
    await waitFor("offline without an answer", () => seenDead.availability.length > 0);
    expect(seenDead.availability.map((a) => a.state)).toEqual(["offline"]);
    expect(e.stats().devices).toEqual({ total: 1, online: 0, offline: 1 });
  });
});
