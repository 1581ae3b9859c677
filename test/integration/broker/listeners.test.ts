// Listeners: MQTT over WebSocket, MQTTS and WSS with a self-signed certificate made by openssl in
// the test, the Prometheus endpoint and `$SYS` statistics.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningBroker, startBroker } from "../../../broker/index.ts";
import { Filters } from "../../../contract/index.ts";
import {
  connackCode,
  connect,
  connectFailure,
  record,
  subscribe,
  uniqueId,
  user,
  waitFor,
} from "./helpers.ts";

describe("WebSocket, /metrics and $SYS", () => {
  let broker: RunningBroker;

  beforeAll(async () => {
    broker = await startBroker({
      port: 0,
      wsPort: 0,
      metricsPort: 0,
      users: [await user("admin", "pw", "admin"), await user("reader", "pw", "reader")],
      sysInterval: 200,
    });
  });

  afterAll(async () => {
    await broker?.close();
  });

  it("carries MQTT over WebSocket both ways with the same users", async () => {
    expect(broker.wsUrl).toBe(`ws://127.0.0.1:${broker.wsPort}`);
    const topic = `${uniqueId("ws")}/t`;
    const tcp = await connect(broker.url, { username: "admin", password: "pw" });
    const ws = await connect(`${broker.wsUrl}/mqtt`, { username: "admin", password: "pw" });
    const overWs = record(ws);
    const overTcp = record(tcp);
    await subscribe(ws, `${topic}/a`);
    await subscribe(tcp, `${topic}/b`);
    await tcp.publishAsync(`${topic}/a`, "tcp→ws", { qos: 1 });
    await ws.publishAsync(`${topic}/b`, "ws→tcp", { qos: 1 });
    await waitFor("both directions", () => overWs.length === 1 && overTcp.length === 1);
    expect(overWs[0]?.payload).toBe("tcp→ws");
    expect(overTcp[0]?.payload).toBe("ws→tcp");
    expect(await connackCode(broker.wsUrl as string, { username: "admin", password: "nope" })).toBe(4);
    await Promise.all([tcp.endAsync(), ws.endAsync()]);
  });

  it("answers a plain HTTP request on the WebSocket port with 426", async () => {
    const res = await fetch(`http://127.0.0.1:${broker.wsPort}/`);
    expect(res.status).toBe(426);
  });

  it("serves Prometheus metrics with clients, messages and bytes", async () => {
    const topic = `${uniqueId("metrics")}/t`;
    const sub = await connect(broker.url, { username: "admin", password: "pw" });
    const got = record(sub);
    await subscribe(sub, topic);
    const pub = await connect(broker.url, { username: "admin", password: "pw" });
    for (let i = 0; i < 5; i++) await pub.publishAsync(topic, "x".repeat(100), { qos: 1 });
    await waitFor("5 messages", () => got.length === 5);
    const res = await fetch(`http://127.0.0.1:${broker.metricsPort}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/plain");
    const text = await res.text();
    const value = (name: string) => Number(new RegExp(`^${name} (\\d+)`, "m").exec(text)?.[1]);
    expect(value("bacmqtt_broker_clients_connected")).toBe(2);
    expect(value("bacmqtt_broker_messages_received_total")).toBeGreaterThanOrEqual(5);
    expect(value("bacmqtt_broker_messages_sent_total")).toBeGreaterThanOrEqual(5);
    expect(value("bacmqtt_broker_bytes_received_total")).toBeGreaterThan(500);
    expect(value("bacmqtt_broker_bytes_sent_total")).toBeGreaterThan(500);
    expect(text).toContain("# TYPE bacmqtt_broker_messages_received_total counter");
    expect((await fetch(`http://127.0.0.1:${broker.metricsPort}/healthz`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${broker.metricsPort}/other`)).status).toBe(404);
    await Promise.all([sub.endAsync(), pub.endAsync()]);
  });

  it("publishes $SYS statistics that a reader may follow", async () => {
    const reader = await connect(broker.url, { username: "reader", password: "pw" });
    const got = record(reader);
    expect(await subscribe(reader, Filters.sys(), 0)).toBe(0);
    const connectedTopic = `$SYS/${broker.aedes.id}/clients/connected`;
    await waitFor("$SYS clients/connected", () => got.some((m) => m.topic === connectedTopic));
    const levels = new Set(got.map((m) => m.topic.split("/").slice(2).join("/")));
    for (const stat of [
      "clients/connected",
      "messages/received",
      "messages/sent",
      "bytes/received",
      "bytes/sent",
    ])
      expect(levels).toContain(stat);
    expect(Number(got.find((m) => m.topic === connectedTopic)?.payload)).toBeGreaterThanOrEqual(1);
    await reader.endAsync();
  });
});

describe("TLS", () => {
  let dir: string;
  let cert: Buffer;
  let broker: RunningBroker;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-tls-"));
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        path.join(dir, "key.pem"),
        "-out",
        path.join(dir, "cert.pem"),
      ],
      { stdio: "ignore" },
    );
    cert = readFileSync(path.join(dir, "cert.pem"));
    broker = await startBroker({
      port: 0,
      wsPort: 0,
      allowAnonymous: true,
      sysInterval: 0,
      // File paths, as the CLI passes them.
      tls: { cert: path.join(dir, "cert.pem"), key: path.join(dir, "key.pem") },
    });
  });

  afterAll(async () => {
    await broker?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("speaks MQTTS and WSS to a client that trusts the certificate", async () => {
    expect(broker.url).toBe(`mqtts://127.0.0.1:${broker.tcpPort}`);
    expect(broker.wsUrl).toBe(`wss://127.0.0.1:${broker.wsPort}`);
    const topic = `${uniqueId("tls")}/t`;
    const mqtts = await connect(broker.url, { ca: cert });
    const wss = await connect(broker.wsUrl as string, { ca: cert });
    const got = record(mqtts);
    await subscribe(mqtts, topic);
    await wss.publishAsync(topic, "over wss", { qos: 1 });
    await waitFor("message over TLS", () => got.length === 1);
    expect(got[0]?.payload).toBe("over wss");
    await Promise.all([mqtts.endAsync(), wss.endAsync()]);
  });

  it("fails the handshake for a client that does not trust it, and refuses plain MQTT", async () => {
    expect(await connectFailure(broker.url)).toMatch(/self[- ]signed|certificate/i);
    expect(await connectFailure(`mqtt://127.0.0.1:${broker.tcpPort}`, { connectTimeout: 2000 })).toBeTruthy();
  });
});
