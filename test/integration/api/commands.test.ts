// The command routes end to end: HTTP → api → real broker → real gateway (BACnet engine) → the
// simulator over loopback UDP, and back. Ok, refused, gateway-error, unknown and timeout paths,
// the write audit, and the live event stream (discovery progress, point values) over real HTTP.

import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { FastifyInstance } from "fastify";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { buildApp } from "../../../api/app.ts";
import { startBroker } from "../../../broker/index.ts";
import { type Gateway, startGateway } from "../../../gateway/index.ts";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import type { TestDatabase } from "../../support/db-postgres.ts";
import { auth, createDatabase, createKeys, type Keys } from "./fixture.ts";

// Whole-stack steps wait on real BACnet, MQTT and database round trips; a busy CI box is slow.
vi.setConfig({ testTimeout: 90_000, hookTimeout: 120_000 });
const BASE = `api-it-${process.pid}`;

let sim: Simulator;
let broker: Awaited<ReturnType<typeof startBroker>>;
let gw: Gateway;
let dataDir: string;
let db: TestDatabase;
let pool: pg.Pool;
let keys: Keys;
let app: FastifyInstance;
let targets: string[];

beforeAll(async () => {
  sim = await startSimulator({
    devices: [
      { instance: 4101, address: "127.0.0.61", port: 0, changeIntervalMs: 200 },
      { instance: 4102, address: "127.0.0.62", port: 0, changeIntervalMs: 200 },
    ],
  });
  targets = sim.devices().map((d) => `${d.address}:${d.port}`);
  broker = await startBroker({ port: 0, host: "127.0.0.1", allowAnonymous: true, sysInterval: 0 });
  dataDir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-api-gw-"));
  gw = await startGateway({
    gateway_id: "gw1",
    data_dir: dataDir,
    mqtt: { url: broker.url, base_topic: BASE, reconnect_period_ms: 200, state_throttle_ms: 200 },
    bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1, offline_after_failures: 1 },
    discovery: { on_start: false, interval_s: 0, targets, timeout_s: 1 },
    polling: { interval_s: 1, cov: false },
    write: {
      allowlist: ["4101:analog_output_*", "4101:binary_output_*"],
      min_priority: 8,
      default_priority: 16,
    },
    metrics: { enabled: false },
  });
  ({ db, pool } = await createDatabase("portable"));
  keys = await createKeys(pool);
  // A gateway the database knows that never answers: the timeout path.
  await pool.query(
    "INSERT INTO gateways (gateway_id, base_topic, state) VALUES ('gw-silent', $1, 'offline')",
    [BASE],
  );
  app = await buildApp({
    pool,
    mqttUrl: broker.url,
    baseTopic: BASE,
    defaultMetrics: false,
    timeouts: { commandMs: 8000, pointsMs: 20_000, discoveryDefaultS: 2 },
  });
  await app.listen({ host: "127.0.0.1", port: 0 });
  // bridge/state is retained: the relay knows gw1 once subscribed.
  for (let i = 0; i < 100 && !app.relay.gatewayStates.has("gw1"); i++)
    await new Promise((r) => setTimeout(r, 50));
});

afterAll(async () => {
  await app?.close();
  await gw?.stop();
  await broker?.close();
  await sim?.close();
  await pool?.end();
  await db?.drop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

const post = (url: string, payload: object = {}, key = keys.operator) =>
  app.inject({ method: "POST", url, headers: auth(key), payload });
const P = (device: number, point: string) => `/api/gateways/gw1/devices/${device}/points/${point}`;

async function lastAudit() {
  const { rows } = await pool.query("SELECT * FROM write_audit ORDER BY id DESC LIMIT 1");
  return rows[0];
}

/** Reads an SSE stream until `done` says so (bounded by maxMs); returns the events seen. */
async function collectEvents(
  url: string,
  done: (events: { event: string; data: Record<string, unknown> }[]) => boolean,
  maxMs: number,
  during?: () => Promise<unknown>,
) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), maxMs);
  const events: { event: string; data: Record<string, unknown> }[] = [];
  const res = await fetch(url, { headers: auth(keys.viewer), signal: ctrl.signal });
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
  // Security headers set by hooks survive the hijacked stream.
  expect(res.headers.get("content-security-policy")).toContain("default-src 'self'");
  const pending = during?.();
  const reader = (res.body as ReadableStream<Uint8Array>).pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    while (!done(events)) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buffer += value;
      for (let at = buffer.indexOf("\n\n"); at >= 0; at = buffer.indexOf("\n\n")) {
        const chunk = buffer.slice(0, at);
        buffer = buffer.slice(at + 2);
        const event = /^event: (.*)$/m.exec(chunk)?.[1];
        const data = /^data: (.*)$/m.exec(chunk)?.[1];
        if (event && data) events.push({ event, data: JSON.parse(data) });
      }
    }
  } catch (err) {
    if (!ctrl.signal.aborted) throw err;
  } finally {
    clearTimeout(timer);
    ctrl.abort();
    await pending;
  }
  return events;
}

describe("command routes against a real gateway, broker and simulator", () => {
  it("starts a discovery, streams its progress and answers with the gateway's result", async () => {
    const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
    let res: Awaited<ReturnType<typeof post>> | undefined;
    const events = await collectEvents(
      `${base}/api/events?gateway=gw1&types=discovery,gateway`,
      (e) =>
        e.some((x) => x.event === "discovery" && (x.data.data as { type: string }).type === "scan_finished"),
      30_000,
      async () => {
        res = await post("/api/gateways/gw1/discover", { targets, timeout_s: 1 });
      },
    );
    expect(res?.statusCode).toBe(200);
    expect(res?.json()).toMatchObject({
      gateway_id: "gw1",
      data: { devices_found: 2, new_devices: [4101, 4102] },
    });
    expect(res?.json().transaction).toMatch(/^api-/);
    const types = events
      .filter((e) => e.event === "discovery")
      .map((e) => (e.data.data as { type: string }).type);
    expect(types[0]).toBe("scan_started");
    expect(types).toContain("scan_finished");
  });

  it("streams point values of a device as they are read", async () => {
    const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
    const events = await collectEvents(
      `${base}/api/events?gateway=gw1&device=4101&types=reading`,
      (e) => e.filter((x) => x.event === "reading").length >= 2,
      20_000,
    );
    expect(events[0]?.event).toBe("hello");
    const readingEvents = events.slice(1);
    expect(readingEvents.length).toBeGreaterThanOrEqual(2);
    expect(readingEvents.every((e) => e.event === "reading" && e.data.device === 4101)).toBe(true);
    const first = readingEvents[0]?.data.data as { readings: { point: string; value: unknown }[] };
    expect(first.readings.length).toBeGreaterThan(0);
    expect(first.readings[0]?.point).toMatch(/^[a-z_]+_\d+$/);
  });

  it("re-reads a device's points and reads a point now", async () => {
    const pts = await post("/api/gateways/gw1/devices/4101/refresh");
    expect(pts.statusCode).toBe(200);
    expect(pts.json().data).toMatchObject({ device: 4101 });
    expect(pts.json().data.points).toBeGreaterThan(5);
    const read = await post(`${P(4101, "analog_input_1")}/read`);
    expect(read.statusCode).toBe(200);
    expect(read.json().data).toMatchObject({
      device: 4101,
      point: "analog_input_1",
      property: "present_value",
    });
    expect(typeof read.json().data.value).toBe("number");
    const name = await post(`${P(4101, "analog_input_1")}/read`, { property: "object_name" });
    expect(name.json().data.value).toEqual(expect.any(String));
  });

  it("writes with a priority, relinquishes, and audits both", async () => {
    const w = await post(`${P(4101, "analog_output_1")}/write`, { value: 42.5, priority: 9 });
    expect(w.statusCode).toBe(200);
    expect(w.json().data).toMatchObject({
      device: 4101,
      point: "analog_output_1",
      value: 42.5,
      priority: 9,
      present_value: 42.5,
    });
    expect(w.json().data.priority_array[8]).toBe(42.5);
    expect(await lastAudit()).toMatchObject({
      gateway_id: "gw1",
      device_instance: 4101,
      point: "analog_output_1",
      value: 42.5,
      priority: 9,
      source: "api",
      actor: "operator-1",
      result: "ok",
      error_code: null,
      transaction: w.json().transaction,
    });
    const back = await post(`${P(4101, "analog_output_1")}/read`);
    expect(back.json().data.value).toBe(42.5);

    const r = await post(`${P(4101, "analog_output_1")}/relinquish`, { priority: 9 });
    expect(r.statusCode).toBe(200);
    expect(r.json().data.priority_array[8]).toBeNull();
    expect(await lastAudit()).toMatchObject({ value: null, priority: 9, result: "ok" });

    const bin = await post(`${P(4101, "binary_output_1")}/write`, { value: true, priority: 8 });
    expect(bin.statusCode).toBe(200);
    expect(bin.json().data.present_value).toBe(true);
    // Default priority comes from the gateway (16) and is recorded from its answer.
    const dflt = await post(`${P(4101, "analog_output_2")}/write`, { value: 7 });
    expect(dflt.statusCode).toBe(200);
    expect(await lastAudit()).toMatchObject({ priority: 16, result: "ok" });
  });

  it("answers 403 for a write the gateway refuses, and audits the refusal", async () => {
    const high = await post(`${P(4101, "analog_output_1")}/write`, { value: 1, priority: 3 });
    expect(high.statusCode).toBe(403);
    expect(high.json().error).toMatchObject({
      code: "API_ERR_WRITE_REFUSED",
      details: { gateway_error: { code: "GW_ERR_WRITE_NOT_ALLOWED" } },
    });
    expect(await lastAudit()).toMatchObject({
      priority: 3,
      result: "refused",
      error_code: "GW_ERR_WRITE_NOT_ALLOWED",
    });
    const notListed = await post(`${P(4102, "analog_output_1")}/write`, { value: 1, priority: 8 });
    expect(notListed.statusCode).toBe(403);
    expect(await lastAudit()).toMatchObject({ device_instance: 4102, result: "refused" });
  });

  it("answers 404 for a device or point the gateway does not know", async () => {
    const dev = await post(`${P(4999, "analog_input_1")}/read`);
    expect(dev.statusCode).toBe(404);
    expect(dev.json().error.details.gateway_error.code).toBe("GW_ERR_UNKNOWN_DEVICE");
    const pt = await post(`${P(4101, "analog_input_99")}/read`);
    expect(pt.statusCode).toBe(404);
  });

  it("answers 502 when the gateway fails (device gone silent)", async () => {
    sim.setOnline(4102, false);
    try {
      const res = await post(`${P(4102, "analog_input_1")}/read`);
      expect(res.statusCode).toBe(502);
      expect(res.json().error.code).toBe("API_ERR_GATEWAY_ERROR");
      expect(res.json().error.details.gateway_error.code).toMatch(/^GW_ERR_(BACNET_TIMEOUT|DEVICE_OFFLINE)$/);
    } finally {
      sim.setOnline(4102, true);
    }
  });

  it("answers 504 when no gateway answers, and audits the timeout", async () => {
    const quick = await buildApp({
      pool,
      mqttUrl: broker.url,
      baseTopic: BASE,
      defaultMetrics: false,
      timeouts: { commandMs: 800 },
    });
    try {
      const res = await quick.inject({
        method: "POST",
        url: "/api/gateways/gw-silent/devices/1/points/analog_output_1/write",
        headers: auth(keys.operator),
        payload: { value: 5, priority: 10 },
      });
      expect(res.statusCode).toBe(504);
      expect(res.json().error.code).toBe("API_ERR_GATEWAY_TIMEOUT");
      expect(await lastAudit()).toMatchObject({
        gateway_id: "gw-silent",
        result: "timeout",
        error_code: "API_ERR_GATEWAY_TIMEOUT",
      });
      const health = (await quick.inject({ method: "GET", url: "/api/health" })).json();
      expect(health).toMatchObject({ status: "ok", broker: { connected: true } });
      expect(health.gateways).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ gateway_id: "gw1", state: "online", source: "mqtt" }),
          expect.objectContaining({ gateway_id: "gw-silent", source: "database" }),
        ]),
      );
    } finally {
      await quick.close();
    }
  });

  it("lists the audit trail newest first with filters", async () => {
    const res = await app.inject({
      method: "GET",
      url: "/api/audit?gateway=gw1&result=refused",
      headers: auth(keys.viewer),
    });
    const items = res.json().items;
    expect(items.length).toBe(2);
    expect(items.every((a: { result: string }) => a.result === "refused")).toBe(true);
    expect(items[0].id).toBeGreaterThan(items[1].id);
  });
});
