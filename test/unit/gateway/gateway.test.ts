// The gateway's MQTT side driven by a stand-in engine (so it runs without BACnet) against a real
// broker on port 0: birth order, every request endpoint (ok and error, transaction echoed), write
// audit, removal clearing, store-and-forward across a broker outage. The same behaviours against
// the real engine and simulator are in test/integration/gateway/.
import { afterEach, describe, expect, it } from "vitest";
import { validate } from "../../../contract/index.ts";
import { Responses } from "../../../contract/schemas.ts";
import { type Gateway, startGateway } from "../../../gateway/index.ts";
import {
  Recorder,
  retainedUnder,
  startTestBroker,
  type TestBroker,
  tempDir,
  uniqueBase,
} from "../../integration/gateway/helpers.ts";
import { catalogue, FakeEngine } from "./fake-engine.ts";

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

interface Setup {
  broker: TestBroker;
  engine: FakeEngine;
  gw: Gateway;
  rec: Recorder;
  root: string;
  dataDir: string;
}

async function setup(
  opts: { devices?: number[]; config?: Record<string, unknown>; dataDir?: string; broker?: TestBroker } = {},
): Promise<Setup> {
  const broker = opts.broker ?? (await startTestBroker());
  if (!opts.broker) cleanups.push(() => broker.close());
  let dataDir = opts.dataDir;
  if (!dataDir) {
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    dataDir = tmp.dir;
  }
  const base = uniqueBase("gw");
  const root = `${base}/gw1`;
  const rec = await Recorder.connect(broker.url, `${base}/#`);
  cleanups.push(() => rec.close());
  const engine = new FakeEngine();
  for (const d of opts.devices ?? [1001, 1002]) engine.devicesOnNetwork.set(d, catalogue(d));
  const gw = await startGateway(
    {
      gateway_id: "gw1",
      data_dir: dataDir,
      mqtt: { url: broker.url, base_topic: base, reconnect_period_ms: 100, state_throttle_ms: 0 },
      metrics: { enabled: false },
      discovery: { on_start: false, interval_s: 0 },
      write: { allowlist: ["1001:analog_output_*"], min_priority: 8, default_priority: 16 },
      ...opts.config,
    },
    { engine },
  );
  cleanups.push(() => gw.stop());
  await rec.waitFor((m) => m.some((x) => x.topic === `${root}/bridge/health`), "birth");
  return { broker, engine, gw, rec, root, dataDir };
}

async function request(
  s: Setup,
  endpoint: string,
  payload: object | string,
): Promise<Record<string, unknown>> {
  const topic = `${s.root}/bridge/response/${endpoint}`;
  const before = s.rec.messages.filter((m) => m.topic === topic).length;
  await s.rec.publish(`${s.root}/bridge/request/${endpoint}`, payload);
  await s.rec.waitFor((m) => m.filter((x) => x.topic === topic).length > before, `response on ${endpoint}`);
  const response = JSON.parse(s.rec.messages.filter((m) => m.topic === topic)[before]!.payload) as Record<
    string,
    unknown
  >;
  const schema = Responses[endpoint as keyof typeof Responses];
  const check = validate(schema, response);
  expect(check.ok ? [] : check.errors).toEqual([]);
  return response;
}

describe("gateway (stand-in engine, real broker)", () => {
  it("publishes the birth sequence in order, then answers requests", async () => {
    const s = await setup();
    const d = await request(s, "discover", { transaction: "d1", timeout_s: 1 });
    expect(d).toMatchObject({
      status: "ok",
      transaction: "d1",
      data: { devices_found: 2, new_devices: [1001, 1002] },
    });
    expect(s.engine.managed().map((c) => c.deviceInstance)).toEqual([1001, 1002]);
    const rec2 = await Recorder.connect(s.broker.url, `${s.root}/#`);
    cleanups.push(() => rec2.close());
    // A fresh birth (rebirth) lists every retained topic in contract order.
    const r = await request(s, "rebirth", { transaction: "b1" });
    expect(r).toEqual({ status: "ok", data: { devices: 2 }, transaction: "b1" });
    await rec2.waitFor(
      (m) => m.filter((x) => !x.retain).some((x) => x.topic.endsWith("1002/availability")),
      "rebirth",
    );
    const order = rec2.messages
      .filter((m) => !m.retain && /\/(bridge\/(state|info|devices|health)|\d+\/\w+)$/.test(m.topic))
      .map((m) => m.topic.slice(s.root.length + 1));
    expect(order).toEqual([
      "bridge/state",
      "bridge/info",
      "bridge/devices",
      "1001/meta",
      "1001/availability",
      "1002/meta",
      "1002/availability",
      "bridge/health",
    ]);
    expect(
      JSON.parse(rec2.messages.find((m) => m.topic === `${s.root}/bridge/devices` && !m.retain)!.payload),
    ).toMatchObject({
      count: 2,
      online: 2,
      offline: 0,
      points: 6,
      device_instances: [1001, 1002],
    });
  });

  it("answers every endpoint, ok and error, echoing the transaction", async () => {
    const s = await setup();
    await request(s, "discover", { transaction: 1 });

    expect(
      await request(s, "device/read", { transaction: "r1", device: 1001, point: "analog_output_1" }),
    ).toMatchObject({
      status: "ok",
      transaction: "r1",
      data: { device: 1001, point: "analog_output_1", property: "present_value", value: 42.5 },
    });
    expect(
      await request(s, "device/read", { transaction: "r2", device: 4242, point: "analog_output_1" }),
    ).toEqual({
      status: "error",
      transaction: "r2",
      error: { code: "GW_ERR_UNKNOWN_DEVICE", message: "device 4242 is not known to this gateway" },
    });
    expect(
      await request(s, "device/read", { transaction: "r3", device: 1001, point: "analog_input_7" }),
    ).toMatchObject({
      status: "error",
      transaction: "r3",
      error: { code: "GW_ERR_UNKNOWN_POINT" },
    });

    s.engine.offline.add(1002);
    expect(await request(s, "device/points", { transaction: "p1", device: 1002 })).toEqual({
      status: "error",
      transaction: "p1",
      error: { code: "GW_ERR_DEVICE_OFFLINE", message: "device 1002 is offline" },
    });
    expect(await request(s, "device/points", { transaction: "p2", device: 1001 })).toMatchObject({
      status: "ok",
      transaction: "p2",
      data: { device: 1001, points: 3 },
    });

    expect(
      await request(s, "device/options", {
        transaction: "o1",
        device: 1001,
        poll_interval_s: 5,
        exclude: ["analog_value_*"],
      }),
    ).toEqual({
      status: "ok",
      transaction: "o1",
      data: { device: 1001, poll_interval_s: 5, cov: true, include: [], exclude: ["analog_value_*"] },
    });
    expect(s.engine.managedDevices.get(1001)?.options).toMatchObject({
      pollIntervalS: 5,
      exclude: ["analog_value_*"],
    });

    const h = await request(s, "health_check", { transaction: 42 });
    expect(h).toEqual({
      status: "ok",
      transaction: 42,
      data: { healthy: false, problems: ["1 of 2 devices offline"] },
    });

    // Invalid: every problem listed, transaction still echoed.
    const bad = await request(s, "device/write", {
      transaction: "x",
      device: -1,
      point: "AO1",
      priority: 99,
    });
    expect(bad).toMatchObject({
      status: "error",
      transaction: "x",
      error: { code: "GW_ERR_INVALID_REQUEST" },
    });
    const problems = (bad.error as { details: { problems: string[] } }).details.problems;
    expect(problems.length).toBeGreaterThanOrEqual(3);
    expect(await request(s, "rebirth", "not json")).toMatchObject({
      status: "error",
      error: { code: "GW_ERR_INVALID_REQUEST" },
    });
    const rejected = s.rec
      .json(`${s.root}/bridge/event`)
      .filter((e) => (e as { type: string }).type === "request_rejected");
    expect(rejected).toHaveLength(2);
  });

  it("applies the write allowlist and minimum priority, and audits every write on bridge/event", async () => {
    const s = await setup();
    await request(s, "discover", {});
    const ok = await request(s, "device/write", {
      transaction: "t1",
      device: 1001,
      point: "analog_output_1",
      value: 22.5,
      priority: 8,
    });
    expect(ok).toEqual({
      status: "ok",
      transaction: "t1",
      data: {
        device: 1001,
        point: "analog_output_1",
        value: 22.5,
        priority: 8,
        present_value: 22.5,
        priority_array: [
          null,
          null,
          null,
          null,
          null,
          null,
          null,
          22.5,
          null,
          null,
          null,
          null,
          null,
          null,
          null,
          null,
        ],
        ts: "2026-11-27T08:03:00.000Z",
      },
    });
    const relinquish = await request(s, "device/write", {
      transaction: "t2",
      device: 1001,
      point: "analog_output_1",
      value: null,
      priority: 8,
    });
    expect(relinquish).toMatchObject({ status: "ok", data: { value: null, priority: 8 } });
    expect(
      await request(s, "device/write", {
        transaction: "t3",
        device: 1001,
        point: "analog_output_1",
        value: 1,
        priority: 3,
      }),
    ).toEqual({
      status: "error",
      transaction: "t3",
      error: {
        code: "GW_ERR_WRITE_NOT_ALLOWED",
        message: "priority 3 is above the configured minimum priority 8",
      },
    });
    expect(
      await request(s, "device/write", {
        transaction: "t4",
        device: 1002,
        point: "analog_output_1",
        value: 1,
      }),
    ).toMatchObject({
      status: "error",
      error: { code: "GW_ERR_WRITE_NOT_ALLOWED" },
    });
    expect(s.engine.writes).toEqual([
      { device: 1001, point: "analog_output_1", value: 22.5, priority: 8 },
      { device: 1001, point: "analog_output_1", value: null, priority: 8 },
    ]);
    await s.rec.waitFor(
      (m) =>
        m.filter((x) => x.topic === `${s.root}/bridge/event` && x.payload.includes('"write"')).length >= 4,
      "4 write events",
    );
    const writes = s.rec
      .json(`${s.root}/bridge/event`)
      .filter((e) => (e as { type: string }).type === "write")
      .map((e) => (e as { data: Record<string, unknown> }).data);
    expect(writes.map((w) => [w.transaction, w.result, w.error_code])).toEqual([
      ["t1", "accepted", undefined],
      ["t2", "accepted", undefined],
      ["t3", "refused", "GW_ERR_WRITE_NOT_ALLOWED"],
      ["t4", "refused", "GW_ERR_WRITE_NOT_ALLOWED"],
    ]);
  });

  it("publishes readings and retained state; clears a removed device's retained topics", async () => {
    const s = await setup();
    await request(s, "discover", {});
    const readings = [
      { point: "analog_output_1", value: 1.5, ts: "2026-11-27T08:00:10.000Z", quality: "good" as const },
      {
        point: "analog_output_2",
        value: null,
        ts: "2026-11-27T08:00:10.001Z",
        quality: "bad" as const,
        error: "GW_ERR_BACNET_TIMEOUT",
      },
    ];
    s.engine.emit("readings", 1001, readings, "poll");
    await s.rec.waitFor((m) => m.some((x) => x.topic === `${s.root}/1001/state`), "state");
    expect(s.rec.json(`${s.root}/1001/readings`)).toEqual([{ device: 1001, source: "poll", readings }]);
    expect(s.rec.json(`${s.root}/1001/state`)[0]).toMatchObject({ values: { analog_output_1: 1.5 } });
    const before = await retainedUnder(s.broker.url, `${s.root}/1001/#`);
    expect([...before.keys()].sort()).toEqual([
      `${s.root}/1001/availability`,
      `${s.root}/1001/meta`,
      `${s.root}/1001/state`,
    ]);
    await s.gw.discovery.remove(1001, "test");
    const after = await retainedUnder(s.broker.url, `${s.root}/1001/#`);
    expect([...after.keys()]).toEqual([]);
    expect(
      s.rec.messages
        .filter((m) => m.topic.startsWith(`${s.root}/1001/`) && m.payload === "")
        .map((m) => m.topic)
        .sort(),
    ).toEqual([`${s.root}/1001/availability`, `${s.root}/1001/meta`, `${s.root}/1001/state`]);
    await s.rec.waitFor((m) => m.some((x) => x.payload.includes('"device_removed"')), "device_removed event");
  });

  it("buffers readings while the broker is down and replays them in order, marked historical", async () => {
    const first = await startTestBroker();
    const port = Number(new URL(first.url).port);
    const s = await setup({ broker: first });
    await request(s, "discover", {});
    await s.rec.close();
    await first.close();
    await waitUntil(() => !s.gw.mqtt.connected, "gateway notices the broker is gone");
    const sent: string[] = [];
    for (let i = 0; i < 50; i++) {
      const ts = new Date(Date.UTC(2026, 10, 27, 8, 0, i)).toISOString();
      sent.push(ts);
      s.engine.emit("readings", 1001, [{ point: "analog_output_1", value: i, ts }], "poll");
    }
    expect(s.gw.buffer.depth).toBe(50);
    const second = await startTestBroker(port);
    cleanups.push(() => second.close());
    const rec = await Recorder.connect(second.url, `${s.root}/1001/readings`);
    cleanups.push(() => rec.close());
    await rec.waitFor((m) => m.length >= 50, "50 replayed readings", 15_000);
    const got = rec.messages.map(
      (m) => JSON.parse(m.payload) as { historical?: boolean; readings: { ts: string }[] },
    );
    expect(got.map((g) => g.readings[0]!.ts)).toEqual(sent);
    expect(got.every((g) => g.historical === true)).toBe(true);
    await waitUntil(() => s.gw.buffer.depth === 0, "buffer empty");
    // Live again: not historical.
    s.engine.emit(
      "readings",
      1001,
      [{ point: "analog_output_1", value: 99, ts: "2026-11-27T09:00:00.000Z" }],
      "poll",
    );
    await rec.waitFor((m) => m.length >= 51, "live reading");
    expect(JSON.parse(rec.messages[50]!.payload)).toEqual({
      device: 1001,
      source: "poll",
      readings: [{ point: "analog_output_1", value: 99, ts: "2026-11-27T09:00:00.000Z" }],
    });
  });

  it("resumes polling from the stored catalogue at restart, and clears devices disabled in configuration", async () => {
    const broker = await startTestBroker();
    cleanups.push(() => broker.close());
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    const s = await setup({ broker, dataDir: tmp.dir });
    await request(s, "discover", {});
    await s.gw.stop();
    const engine = new FakeEngine();
    const gw = await startGateway(
      {
        gateway_id: "gw1",
        data_dir: tmp.dir,
        mqtt: { url: broker.url, base_topic: s.root.split("/")[0], reconnect_period_ms: 100 },
        metrics: { enabled: false },
        discovery: { on_start: false, interval_s: 0 },
        devices: { "1002": { enabled: false } },
      },
      { engine },
    );
    cleanups.push(() => gw.stop());
    expect(engine.managed().map((c) => c.deviceInstance)).toEqual([1001]);
    await waitUntil(
      async () => !(await retainedUnder(broker.url, `${s.root}/1002/#`, 100)).size,
      "1002 cleared",
    );
    const retained = await retainedUnder(broker.url, `${s.root}/#`);
    expect(JSON.parse(retained.get(`${s.root}/bridge/state`)!)).toMatchObject({ state: "online", bd_seq: 2 });
    expect(JSON.parse(retained.get(`${s.root}/bridge/devices`)!)).toMatchObject({ device_instances: [1001] });
  });

  it("applies per-device and per-point options: friendly names, poll intervals, COV, name patterns", async () => {
    const s = await setup({
      config: {
        devices: {
          "1001": {
            name: "AHU-1",
            poll_interval_s: 30,
            exclude: ["name:AO 3"],
            points: {
              analog_output_1: { cov: false },
              analog_output_2: { name: "Fan speed", poll_interval_s: 5 },
            },
          },
        },
      },
    });
    await request(s, "discover", {});
    const managed = s.engine.managedDevices.get(1001)!;
    expect(managed.options).toMatchObject({ pollIntervalS: 30, exclude: ["analog_output_3"] });
    expect(managed.catalogue.points.map((p) => p.poll_interval_s)).toEqual([undefined, 5, undefined]);
    // The engine reads a point's own COV setting from the catalogue it is handed.
    expect(managed.catalogue.points.map((p) => p.cov)).toEqual([false, undefined, undefined]);
    await s.rec.waitFor((m) => m.some((x) => x.topic === `${s.root}/1001/meta`), "meta");
    const meta = s.rec.json(`${s.root}/1001/meta`).at(-1) as {
      friendly_name: string;
      points: { point: string; poll_interval_s: number; friendly_name?: string }[];
    };
    expect(meta.friendly_name).toBe("AHU-1");
    expect(meta.points.map((p) => [p.point, p.poll_interval_s, p.friendly_name])).toEqual([
      ["analog_output_1", 30, undefined],
      ["analog_output_2", 5, "Fan speed"],
      ["analog_output_3", 30, undefined],
    ]);
  });

  it("reports a device lost after it misses the configured number of full scans while offline", async () => {
    const s = await setup({ config: { discovery: { on_start: false, interval_s: 0, lost_after_scans: 2 } } });
    await request(s, "discover", {});
    s.engine.devicesOnNetwork.delete(1002);
    s.engine.offline.add(1002);
    await request(s, "discover", {});
    expect(
      s.rec.json(`${s.root}/bridge/event`).some((e) => (e as { type: string }).type === "device_lost"),
    ).toBe(false);
    // A scan limited to a range says nothing about devices outside it.
    await request(s, "discover", { low: 1001, high: 1001 });
    await request(s, "discover", {});
    await s.rec.waitFor((m) => m.some((x) => x.payload.includes('"device_lost"')), "device_lost");
    const lost = s.rec
      .json(`${s.root}/bridge/event`)
      .filter((e) => (e as { type: string }).type === "device_lost");
    expect(lost.map((e) => (e as { data: unknown }).data)).toEqual([{ device: 1002, missed_scans: 2 }]);
  });

  it("counts readings dropped at the buffer's size limit and reports them in bridge/health after reconnecting", async () => {
    const first = await startTestBroker();
    const port = Number(new URL(first.url).port);
    const s = await setup({ broker: first, config: { buffer: { max_bytes: 8192, segment_bytes: 2048 } } });
    await request(s, "discover", {});
    await s.rec.close();
    await first.close();
    await waitUntil(() => !s.gw.mqtt.connected, "disconnected");
    for (let i = 0; i < 200; i++)
      s.engine.emit(
        "readings",
        1001,
        [
          {
            point: "analog_output_1",
            value: i,
            ts: new Date(Date.UTC(2026, 10, 27, 8, 0, 0, i)).toISOString(),
          },
        ],
        "poll",
      );
    const dropped = s.gw.buffer.stats.dropped;
    expect(dropped).toBeGreaterThan(0);
    expect(s.gw.buffer.depth + dropped).toBe(200);
    const second = await startTestBroker(port);
    cleanups.push(() => second.close());
    const rec = await Recorder.connect(second.url, `${s.root}/bridge/health`);
    cleanups.push(() => rec.close());
    await rec.waitFor((m) => m.length > 0, "health after reconnect", 15_000);
    const health = rec.json(`${s.root}/bridge/health`).at(-1) as { buffer: { dropped_total: number } };
    expect(health.buffer.dropped_total).toBe(dropped);
  });

  it("serves Prometheus metrics", async () => {
    const s = await setup({ config: { metrics: { enabled: true, host: "127.0.0.1", port: 0 } } });
    await request(s, "discover", {});
    s.engine.offline.add(1002);
    expect(s.gw.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const res = await fetch(s.gw.metricsUrl!);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain('bacmqtt_gateway_devices{state="online"} 1');
    expect(text).toContain('bacmqtt_gateway_devices{state="offline"} 1');
    expect(text).toContain('bacmqtt_gateway_devices{state="unknown"} 0');
    expect(text).toContain("bacmqtt_gateway_cov_fallbacks 0");
    expect(text).toContain("bacmqtt_gateway_points 6");
    expect(text).toContain("bacmqtt_gateway_reads_total 10");
    expect(text).toContain("bacmqtt_gateway_buffer_depth 0");
    expect(text).toContain("bacmqtt_gateway_mqtt_connected 1");
    expect(text).toMatch(/bacmqtt_gateway_cov_subscriptions 0/);
    expect(text).toMatch(/bacmqtt_gateway_poll_lag_seconds 0/);
  });
});

async function waitUntil(
  cond: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
