// The gateway end to end: the real BACnet engine against the simulator over loopback UDP, and a
// real broker — ours on port 0 and the Mosquitto broker on 127.0.0.1:1883 (each test under its own
// base topic). Birth order, retained state, every request endpoint (ok and error, transaction
// echoed), write audit, removal clearing, and a 30 s broker outage while polling. Crash behaviour
// (SIGKILL) is in crash.test.ts.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Responses, validate } from "../../../contract/index.ts";
import { type Gateway, type GatewayConfigInput, startGateway } from "../../../gateway/index.ts";
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

const OUTAGE_S = Number(process.env.BACMQTT_TEST_OUTAGE_S ?? 30);

let sim: Simulator;
let targets: string[];
beforeAll(async () => {
  sim = await startSimulator({
    devices: [
      { instance: 3101, address: "127.0.0.21", port: 0, changeIntervalMs: 200 },
      { instance: 3102, address: "127.0.0.22", port: 0, changeIntervalMs: 200 },
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
  for (const d of sim.devices()) sim.setOnline(d.instance, true);
});

interface Ctx {
  gw: Gateway;
  rec: Recorder;
  root: string;
  brokerUrl: string;
}

function gatewayConfig(
  mqttUrl: string,
  base: string,
  dataDir: string,
  extra: GatewayConfigInput = {},
): GatewayConfigInput {
  return {
    gateway_id: "gw1",
    data_dir: dataDir,
    mqtt: { url: mqttUrl, base_topic: base, reconnect_period_ms: 200, state_throttle_ms: 200 },
    bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1, offline_after_failures: 1 },
    discovery: { on_start: false, interval_s: 0, targets, timeout_s: 1 },
    polling: { interval_s: 1, cov: false },
    write: {
      allowlist: ["3101:analog_output_*", "3101:binary_output_*"],
      min_priority: 8,
      default_priority: 16,
    },
    metrics: { enabled: false },
    ...extra,
  };
}

async function start(brokerUrl: string, extra: GatewayConfigInput = {}, mqttUrl = brokerUrl): Promise<Ctx> {
  const base = uniqueBase("it");
  const root = `${base}/gw1`;
  const tmp = tempDir();
  cleanups.push(() => tmp.remove());
  const rec = await Recorder.connect(brokerUrl, `${base}/#`);
  cleanups.push(() => rec.close());
  // Leave nothing retained behind on a shared broker.
  cleanups.push(() => clearRetained(brokerUrl, `${base}/#`));
  const gw = await startGateway(gatewayConfig(mqttUrl, base, tmp.dir, extra));
  cleanups.push(() => gw.stop());
  await rec.waitFor((m) => m.some((x) => x.topic === `${root}/bridge/health`), "birth");
  return { gw, rec, root, brokerUrl };
}

async function clearRetained(url: string, filter: string): Promise<void> {
  const retained = await retainedUnder(url, filter, 200);
  if (retained.size === 0) return;
  const rec = await Recorder.connect(url, `${filter.replace(/#$/, "")}_cleanup`);
  for (const topic of retained.keys()) await rec.publish(topic, "", true);
  await rec.close();
}

async function request(c: Ctx, endpoint: string, payload: object | string): Promise<Record<string, unknown>> {
  const topic = `${c.root}/bridge/response/${endpoint}`;
  const before = c.rec.messages.filter((m) => m.topic === topic).length;
  await c.rec.publish(`${c.root}/bridge/request/${endpoint}`, payload);
  await c.rec.waitFor(
    (m) => m.filter((x) => x.topic === topic).length > before,
    `response on ${endpoint}`,
    20_000,
  );
  const response = JSON.parse(c.rec.messages.filter((m) => m.topic === topic)[before]!.payload) as Record<
    string,
    unknown
  >;
  const check = validate(Responses[endpoint as keyof typeof Responses], response);
  expect(check.ok ? [] : check.errors).toEqual([]);
  return response;
}

const brokers: Array<[string, () => Promise<{ url: string; close?: () => Promise<void> }>]> = [
  ["our broker", () => startTestBroker()],
];
if (await mosquittoAvailable()) brokers.push(["mosquitto", async () => ({ url: MOSQUITTO_URL })]);

describe.each(brokers)("gateway with simulator and %s", (_name, makeBroker) => {
  let broker: { url: string; close?: () => Promise<void> };
  beforeAll(async () => {
    broker = await makeBroker();
  });
  afterAll(async () => {
    await broker.close?.();
  });

  it("discovers, publishes meta/availability/state retained, and a rebirth repeats the birth in order", async () => {
    const c = await start(broker.url);
    const d = await request(c, "discover", { transaction: "d1", targets, timeout_s: 2 });
    expect(d).toMatchObject({
      status: "ok",
      transaction: "d1",
      data: { devices_found: 2, new_devices: [3101, 3102] },
    });
    await c.rec.waitFor(
      (m) => [3101, 3102].every((dev) => m.some((x) => x.topic === `${c.root}/${dev}/state`)),
      "state of both devices",
    );
    // Availability is unknown until a device first answers; the inventory follows it (coalesced).
    await c.rec.waitFor(
      (m) =>
        m.some(
          (x) =>
            x.topic === `${c.root}/bridge/devices` &&
            (JSON.parse(x.payload) as { online: number }).online === 2,
        ),
      "inventory with both devices online",
    );
    const retained = await retainedUnder(broker.url, `${c.root}/#`);
    const keys = [...retained.keys()].map((k) => k.slice(c.root.length + 1)).sort();
    expect(keys).toEqual([
      "3101/availability",
      "3101/meta",
      "3101/state",
      "3102/availability",
      "3102/meta",
      "3102/state",
      "bridge/devices",
      "bridge/health",
      "bridge/info",
      "bridge/state",
    ]);
    const meta = JSON.parse(retained.get(`${c.root}/3101/meta`)!) as {
      points: { point: string }[];
      object_name: string;
    };
    expect(meta.object_name).toBe("SIM-3101");
    expect(meta.points.map((p) => p.point)).toContain("analog_output_1");
    expect(JSON.parse(retained.get(`${c.root}/3101/availability`)!)).toMatchObject({ state: "online" });
    expect(JSON.parse(retained.get(`${c.root}/bridge/devices`)!)).toMatchObject({
      count: 2,
      online: 2,
      offline: 0,
      device_instances: [3101, 3102],
    });
    const info = JSON.parse(retained.get(`${c.root}/bridge/info`)!) as { bacnet: { address: string } };
    expect(info.bacnet.address).toBe("127.0.0.1");

    const late = await Recorder.connect(broker.url, `${c.root}/#`);
    cleanups.push(() => late.close());
    const r = await request(c, "rebirth", { transaction: "b1" });
    expect(r).toEqual({ status: "ok", data: { devices: 2 }, transaction: "b1" });
    await late.waitFor(
      (m) => m.some((x) => !x.retain && x.topic === `${c.root}/bridge/health`),
      "rebirth health",
    );
    const order = late.messages
      .filter(
        (m) =>
          !m.retain &&
          /\/(bridge\/(state|info|devices|health)|\d+\/(meta|availability|state))$/.test(m.topic),
      )
      .map((m) => m.topic.slice(c.root.length + 1))
      .filter((t, i, all) => all.indexOf(t) === i);
    expect(order.slice(0, 3)).toEqual(["bridge/state", "bridge/info", "bridge/devices"]);
    expect(order.slice(3, 9)).toEqual([
      "3101/meta",
      "3101/availability",
      "3101/state",
      "3102/meta",
      "3102/availability",
      "3102/state",
    ]);
  });

  it("answers every endpoint with the transaction echoed, ok and error", async () => {
    const c = await start(broker.url);
    await request(c, "discover", { targets, timeout_s: 2 });

    const pts = await request(c, "device/points", { transaction: "p1", device: 3101 });
    expect(pts).toMatchObject({ status: "ok", transaction: "p1", data: { device: 3101 } });
    expect((pts.data as { points: number }).points).toBeGreaterThan(5);

    const read = await request(c, "device/read", {
      transaction: "r1",
      device: 3101,
      point: "analog_output_1",
    });
    expect(read).toMatchObject({
      status: "ok",
      transaction: "r1",
      data: { device: 3101, point: "analog_output_1", property: "present_value" },
    });
    expect(typeof (read.data as { value: unknown }).value).toBe("number");
    const name = await request(c, "device/read", {
      transaction: "r2",
      device: 3101,
      point: "analog_output_1",
      property: "object_name",
    });
    expect(name).toMatchObject({ status: "ok", transaction: "r2", data: { property: "object_name" } });
    expect(typeof (name.data as { value: unknown }).value).toBe("string");
    const noSuch = await request(c, "device/read", {
      transaction: "r3",
      device: 3101,
      point: "analog_input_999",
    });
    expect(noSuch).toMatchObject({
      status: "error",
      transaction: "r3",
      error: { code: "GW_ERR_UNKNOWN_POINT" },
    });
    expect(
      await request(c, "device/read", { transaction: "r4", device: 999, point: "analog_input_1" }),
    ).toMatchObject({
      status: "error",
      transaction: "r4",
      error: { code: "GW_ERR_UNKNOWN_DEVICE" },
    });

    const w = await request(c, "device/write", {
      transaction: "w1",
      device: 3101,
      point: "analog_output_1",
      value: 33.5,
      priority: 8,
    });
    expect(w).toMatchObject({
      status: "ok",
      transaction: "w1",
      data: { device: 3101, point: "analog_output_1", value: 33.5, priority: 8, present_value: 33.5 },
    });
    expect((w.data as { priority_array: unknown[] }).priority_array[7]).toBe(33.5);
    expect(sim.presentValue(3101, "analog_output_1")).toBe(33.5);
    const rel = await request(c, "device/write", {
      transaction: "w2",
      device: 3101,
      point: "analog_output_1",
      value: null,
      priority: 8,
    });
    expect(rel).toMatchObject({ status: "ok", transaction: "w2", data: { value: null, priority: 8 } });
    expect((rel.data as { priority_array: unknown[] }).priority_array[7]).toBeNull();
    expect(
      await request(c, "device/write", {
        transaction: "w3",
        device: 3101,
        point: "analog_output_1",
        value: 1,
        priority: 2,
      }),
    ).toEqual({
      status: "error",
      transaction: "w3",
      error: {
        code: "GW_ERR_WRITE_NOT_ALLOWED",
        message: "priority 2 is above the configured minimum priority 8",
      },
    });
    expect(
      await request(c, "device/write", {
        transaction: "w4",
        device: 3102,
        point: "analog_output_1",
        value: 1,
      }),
    ).toMatchObject({
      status: "error",
      transaction: "w4",
      error: { code: "GW_ERR_WRITE_NOT_ALLOWED" },
    });
    await c.rec.waitFor(
      (m) =>
        m.filter((x) => x.topic === `${c.root}/bridge/event` && x.payload.includes('"type":"write"'))
          .length >= 4,
      "write audit events",
    );
    const audit = c.rec
      .json(`${c.root}/bridge/event`)
      .filter((e) => (e as { type: string }).type === "write")
      .map((e) => {
        const d = (e as { data: Record<string, unknown> }).data;
        return [d.transaction, d.device, d.point, d.value, d.priority, d.result];
      });
    expect(audit).toEqual([
      ["w1", 3101, "analog_output_1", 33.5, 8, "accepted"],
      ["w2", 3101, "analog_output_1", null, 8, "accepted"],
      ["w3", 3101, "analog_output_1", 1, 2, "refused"],
      ["w4", 3102, "analog_output_1", 1, 16, "refused"],
    ]);

    expect(
      await request(c, "device/options", {
        transaction: "o1",
        device: 3102,
        poll_interval_s: 2,
        exclude: ["type:binary_value", "name:*3*"],
      }),
    ).toEqual({
      status: "ok",
      transaction: "o1",
      data: {
        device: 3102,
        poll_interval_s: 2,
        cov: false,
        include: [],
        exclude: ["type:binary_value", "name:*3*"],
      },
    });

    expect(await request(c, "health_check", { transaction: 7 })).toEqual({
      status: "ok",
      transaction: 7,
      data: { healthy: true, problems: [] },
    });

    // Error answers of the endpoints whose only failure is a bad request.
    for (const [endpoint, payload] of [
      ["discover", { transaction: "e1", timeout_s: 0, low: -1 }],
      ["rebirth", { transaction: "e2", now: true }],
      ["health_check", { transaction: "e3", verbose: 1 }],
      ["device/points", { transaction: "e4" }],
    ] as const) {
      const r = await request(c, endpoint, payload);
      expect(r).toMatchObject({
        status: "error",
        transaction: payload.transaction,
        error: { code: "GW_ERR_INVALID_REQUEST" },
      });
    }
    const bad = await request(c, "device/options", { transaction: "bad", device: "x", poll_interval_s: 0 });
    expect(bad).toMatchObject({
      status: "error",
      transaction: "bad",
      error: { code: "GW_ERR_INVALID_REQUEST" },
    });
    expect((bad.error as { details: { problems: string[] } }).details.problems.length).toBeGreaterThanOrEqual(
      2,
    );

    // An offline device is answered at once with that, not after BACnet timeouts.
    sim.setOnline(3102, false);
    await c.rec.waitFor(
      (m) => m.some((x) => x.topic === `${c.root}/3102/availability` && x.payload.includes('"offline"')),
      "3102 offline",
      15_000,
    );
    const started = Date.now();
    expect(
      await request(c, "device/read", { transaction: "off", device: 3102, point: "analog_input_1" }),
    ).toEqual({
      status: "error",
      transaction: "off",
      error: { code: "GW_ERR_DEVICE_OFFLINE", message: "device 3102 is offline" },
    });
    expect(Date.now() - started).toBeLessThan(2000);
    expect(await request(c, "health_check", { transaction: 8 })).toEqual({
      status: "ok",
      transaction: 8,
      data: { healthy: false, problems: ["1 of 2 devices offline"] },
    });
  });

  it("clears a removed device's retained topics with empty payloads", async () => {
    const c = await start(broker.url);
    await request(c, "discover", { targets, timeout_s: 2 });
    await c.rec.waitFor((m) => m.some((x) => x.topic === `${c.root}/3102/state`), "3102 state");
    await c.gw.discovery.remove(3102, "removed by test");
    const after = await retainedUnder(broker.url, `${c.root}/3102/#`);
    expect([...after.keys()]).toEqual([]);
    expect(
      c.rec.messages
        .filter((m) => m.topic.startsWith(`${c.root}/3102/`) && m.payload === "")
        .map((m) => m.topic.slice(c.root.length + 1))
        .sort(),
    ).toEqual(["3102/availability", "3102/meta", "3102/state"]);
    await c.rec.waitFor((m) => m.some((x) => x.payload.includes('"device_removed"')), "device_removed event");
    const devices = JSON.parse(
      (await retainedUnder(broker.url, `${c.root}/bridge/devices`)).get(`${c.root}/bridge/devices`)!,
    );
    expect(devices.device_instances).toEqual([3101]);
  });

  it(
    `delivers every reading after a ${OUTAGE_S} s broker outage, in order, none twice`,
    async () => {
      const link = new BrokerLink(hostPort(broker.url));
      await link.restore();
      cleanups.push(() => link.cut());
      const c = await start(broker.url, {}, link.url);
      const produced: string[] = [];
      c.gw.engine.on("readings", (device, readings) => {
        for (const r of readings) produced.push(`${device}/${r.point}@${r.ts}`);
      });
      await request(c, "discover", { targets, timeout_s: 2 });
      await c.rec.waitFor((m) => m.filter((x) => x.topic.endsWith("/readings")).length >= 4, "live readings");
      await link.cut();
      const outageStart = produced.length;
      await new Promise((r) => setTimeout(r, OUTAGE_S * 1000));
      expect(produced.length - outageStart).toBeGreaterThan(OUTAGE_S); // ≥ one cycle per second per device
      expect(c.gw.buffer.depth).toBeGreaterThan(0);
      await link.restore();
      await c.rec.waitFor(
        (m) => m.some((x) => x.topic.endsWith("/readings") && x.payload.includes('"historical":true')),
        "replay",
        20_000,
      );
      await c.gw.stop();
      const receivedMsgs = c.rec.messages.filter((m) => m.topic.endsWith("/readings"));
      const received = receivedMsgs.flatMap((m) => {
        const p = JSON.parse(m.payload) as { device: number; readings: { point: string; ts: string }[] };
        return p.readings.map((r) => `${p.device}/${r.point}@${r.ts}`);
      });
      // None twice (same device, point and time).
      expect(received.length - new Set(received).size).toBe(0);
      // Every reading produced arrived, in the order produced.
      await c.rec.waitFor(() => true, "noop");
      expect(received).toEqual(produced);
      const historical = receivedMsgs.filter((m) => m.payload.includes('"historical":true')).length;
      expect(historical).toBeGreaterThan(0);
    },
    OUTAGE_S * 1000 + 60_000,
  );
});
