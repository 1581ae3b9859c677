// The field tools as a user runs them: `node bin/bacmqtt.mjs scan|read|write|interfaces` against
// simulated devices on loopback (free ports; broadcasts disabled with --broadcast "").
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import { run } from "./support/run.ts";

let sim: Simulator;
let direct: string;
let router: string;

const NET = ["--interface", "127.0.0.1", "--port", "0", "--broadcast", "", "--timeout", "1"];
const bacmqtt = (...args: string[]) => run(process.execPath, ["bin/bacmqtt.mjs", ...args], 60_000);

beforeAll(async () => {
  sim = await startSimulator({
    seed: 3,
    devices: [
      {
        instance: 3_920_001,
        address: "127.0.0.1",
        port: 0,
        changeIntervalMs: 0,
        vendorName: "Acme",
        modelName: "AHU-X",
      },
    ],
    routers: [
      {
        address: "127.0.0.1",
        port: 0,
        networks: [{ network: 33, devices: [{ instance: 3_920_101, changeIntervalMs: 0 }] }],
      },
    ],
  });
  const d = sim.devices().find((x) => x.instance === 3_920_001);
  const r = sim.devices().find((x) => x.instance === 3_920_101);
  direct = `${d?.address}:${d?.port}`;
  router = `${r?.address}:${r?.port}`;
});

afterAll(async () => {
  await sim?.close();
});

describe("bacmqtt scan", () => {
  it("prints {devices:[…]} with direct and routed devices", async () => {
    const r = await bacmqtt("scan", ...NET, "--target", direct, "--target", router, "--json");
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { devices: Record<string, unknown>[] };
    expect(out.devices.map((d) => d.device_instance)).toEqual([3_920_001, 3_920_101]);
    expect(out.devices[0]).toMatchObject({
      device_instance: 3_920_001,
      address: direct,
      network: null,
      mac: null,
      object_name: "SIM-3920001",
      vendor_name: "Acme",
      model_name: "AHU-X",
      max_apdu: 1476,
    });
    expect(typeof out.devices[0]?.vendor_id).toBe("number");
    expect(typeof out.devices[0]?.segmentation).toBe("string");
    expect(out.devices[1]).toMatchObject({
      device_instance: 3_920_101,
      address: router,
      network: 33,
      mac: "01",
    });
    expect(out.devices[0]?.points).toBeUndefined();
  }, 120_000);

  it("lists points with --points", async () => {
    const r = await bacmqtt(
      "scan",
      ...NET,
      "--target",
      direct,
      "--low",
      "3920001",
      "--high",
      "3920001",
      "--points",
      "--json",
    );
    expect(r.code, r.stderr).toBe(0);
    const [dev] = (JSON.parse(r.stdout) as { devices: { points: Record<string, unknown>[] }[] }).devices;
    const ao = dev?.points.find((p) => p.point === "analog_output_1");
    expect(ao).toMatchObject({ object_type: "analog-output", object_instance: 1, writable: true });
    expect(ao?.present_value).toBe(sim.presentValue(3_920_001, "analog_output_1"));
    expect(typeof ao?.name).toBe("string");
    expect(dev?.points.find((p) => p.point === "analog_input_1")).toMatchObject({
      writable: false,
      units: "degrees-celsius",
    });
  }, 120_000);

  it("prints a table without --json and fails clearly on a bad option", async () => {
    const r = await bacmqtt("scan", ...NET, "--target", direct);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/3920001\s+127\.0\.0\.1:\d+/);
    const bad = await bacmqtt("scan", "--port", "x", "--target", "1.2.3");
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--port/);
    expect(bad.stderr).toMatch(/--target/);
  }, 120_000);
});

describe("bacmqtt read / write", () => {
  it("reads a present value as JSON", async () => {
    sim.setPresentValue(3_920_001, "analog_value_1", 12.25);
    const r = await bacmqtt("read", "3920001", "analog_value_1", ...NET, "--target", direct, "--json");
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      device: 3_920_001,
      point: "analog_value_1",
      property: "present_value",
      value: 12.25,
    });
  }, 120_000);

  it("writes with priority and reads back, relinquishes with null, and exits non-zero on a refused write", async () => {
    const w = await bacmqtt(
      "write",
      "3920101",
      "analog_output_1",
      "42.5",
      "--priority",
      "9",
      ...NET,
      "--target",
      router,
      "--json",
    );
    expect(w.code, w.stderr).toBe(0);
    const out = JSON.parse(w.stdout);
    expect(out).toMatchObject({
      device: 3_920_101,
      point: "analog_output_1",
      value: 42.5,
      priority: 9,
      present_value: 42.5,
    });
    expect(out.priority_array[8]).toBe(42.5);
    expect(sim.presentValue(3_920_101, "analog_output_1")).toBe(42.5);
    const rel = await bacmqtt(
      "write",
      "3920101",
      "analog_output_1",
      "null",
      "--priority",
      "9",
      ...NET,
      "--target",
      router,
      "--json",
    );
    expect(rel.code, rel.stderr).toBe(0);
    expect(JSON.parse(rel.stdout).priority_array.every((v: unknown) => v === null)).toBe(true);
    const denied = await bacmqtt(
      "write",
      "3920001",
      "analog_input_1",
      "1",
      ...NET,
      "--target",
      direct,
      "--json",
    );
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toMatch(/GW_ERR_BACNET_WRITE_ACCESS_DENIED/);
    const missing = await bacmqtt("read", "3920999", "analog_input_1", ...NET, "--target", direct);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/GW_ERR_BACNET_DEVICE_UNKNOWN/);
  }, 180_000);
});

describe("bacmqtt interfaces", () => {
  it("lists the loopback interface with netmask and broadcast", async () => {
    const r = await bacmqtt("interfaces", "--json");
    expect(r.code).toBe(0);
    const lo = (JSON.parse(r.stdout) as { interfaces: Record<string, unknown>[] }).interfaces.find(
      (i) => i.address === "127.0.0.1",
    );
    expect(lo).toMatchObject({ netmask: "255.0.0.0", broadcast: "127.255.255.255", internal: true });
  }, 120_000);
});
