// Network-layer refusals over real UDP on loopback: our simulator in router mode answers a request
// for a network it does not know with Reject-Message-To-Network (clause 6.4.4). The engine must
// report that at once as GW_ERR_BACNET_NETWORK_REJECT — not wait for its timeouts and retries —
// and count it toward the device going offline, since the device itself was never reached.
import { afterEach, expect, it } from "vitest";
import { createEngine, type Engine } from "../../../gateway/bacnet/index.ts";
import type { DeviceCatalogue, DiscoveredDevice } from "../../../gateway/bacnet/types.ts";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import { waitFor } from "./support/wait.ts";

let engine: Engine | undefined;
let sim: Simulator | undefined;

afterEach(async () => {
  await engine?.stop();
  await sim?.close();
  engine = undefined;
  sim = undefined;
});

it("maps a router's Reject-Message-To-Network to GW_ERR_BACNET_NETWORK_REJECT and counts it toward offline", async () => {
  sim = await startSimulator({
    seed: 3,
    routers: [
      { address: "127.0.0.1", port: 0, networks: [{ network: 5, devices: [{ instance: 3_920_001 }] }] },
    ],
  });
  const [routed] = sim.devices();
  expect(routed).toMatchObject({ network: 5, mac: "01" });
  const router = `${routed?.address}:${routed?.port}`;
  // Long timeouts: answered by timeouts, each request would take 3 × 2 s.
  engine = await createEngine({
    interface: "127.0.0.1",
    port: 0,
    broadcast: "",
    apduTimeoutMs: 2000,
    retries: 2,
    offlineAfterFailures: 2,
    pollIntervalS: 0.2,
    cov: false,
  });
  const e = engine;
  // The reachable device behind the router answers as usual.
  const good: DiscoveredDevice = {
    deviceInstance: 3_920_001,
    address: router,
    network: 5,
    mac: "01",
    maxApdu: 1476,
    segmentation: "both",
    vendorId: 999,
  };
  e.addDevice(good);
  expect(typeof (await e.read(3_920_001, "analog_input_1"))).toBe("number");

  // Same router, a network it does not route to.
  const lost: DiscoveredDevice = { ...good, deviceInstance: 3_920_099, network: 9 };
  e.addDevice(lost);
  const t0 = Date.now();
  const err = await e.read(3_920_099, "analog_input_1").then(
    () => undefined,
    (x: unknown) => x as { code: string; message: string; kind: string },
  );
  console.log(`network reject reported after ${Date.now() - t0} ms (a timeout would take 6000 ms)`);
  expect(err).toMatchObject({ code: "GW_ERR_BACNET_NETWORK_REJECT", kind: "network" });
  expect(err?.message).toMatch(/network 9/);
  expect(e.transportStats()).toMatchObject({ timeouts: 0 });
  expect(e.transportStats()?.networkRejects).toBeGreaterThan(0);

  // Managed, it goes from unknown straight to offline with the router's reason.
  const states: { state: string; reason: string }[] = [];
  e.on("availability", (dev, state, reason) => {
    if (dev === 3_920_099) states.push({ state, reason });
  });
  const cat: DeviceCatalogue = {
    ...lost,
    objectName: null,
    description: null,
    location: null,
    vendorName: null,
    modelName: null,
    firmwareRevision: null,
    applicationSoftwareVersion: null,
    supportsRpm: true,
    supportsCov: false,
    points: [
      {
        point: "analog_input_1",
        object_type: "analog-input",
        object_instance: 1,
        name: "analog_input_1",
        description: null,
        units: null,
        units_code: null,
        writable: false,
        state_texts: null,
        active_text: null,
        inactive_text: null,
        cov_increment: null,
      },
    ],
    readAt: new Date().toISOString(),
  };
  e.manage(cat);
  await waitFor("offline through network rejects", () => states.length > 0);
  expect(states[0]).toMatchObject({ state: "offline" });
  expect(states[0]?.reason).toMatch(/rejected the message to network 9/);
  expect(e.stats().errorsByCode.GW_ERR_BACNET_NETWORK_REJECT).toBeGreaterThan(0);
  expect(e.transportStats()).toMatchObject({ timeouts: 0 });
});
