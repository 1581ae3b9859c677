// The gateway against our broker with authentication and topic ACLs (credentials carried in the
// MQTT URL, role `gateway`) and over TLS (`mqtts://` with a private CA). Secrets never appear in
// what the gateway publishes. Uses a stand-in engine: this is about the MQTT side only.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { hashPassword, startBroker } from "../../../broker/index.ts";
import { startGateway } from "../../../gateway/index.ts";
import { catalogue, FakeEngine } from "../../unit/gateway/fake-engine.ts";
import { Recorder, retainedUnder, tempDir, uniqueBase } from "./helpers.ts";

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

describe("gateway authentication and TLS", () => {
  it("connects with user:pass in the URL under the gateway role and never publishes the secret", async () => {
    const base = uniqueBase("auth");
    const broker = await startBroker({
      port: 0,
      host: "127.0.0.1",
      sysInterval: 0,
      baseTopic: base,
      users: [
        {
          username: "gw-user",
          role: "gateway",
          gateway: "gw1",
          password_hash: await hashPassword("s3cret-pw"),
        },
        { username: "watcher", role: "admin", password_hash: await hashPassword("watch") },
      ],
    });
    cleanups.push(() => broker.close());
    const port = new URL(broker.url).port;
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    const rec = await Recorder.connect(`mqtt://watcher:watch@127.0.0.1:${port}`, `${base}/#`);
    cleanups.push(() => rec.close());
    const engine = new FakeEngine();
    engine.devicesOnNetwork.set(1001, catalogue(1001));
    const gw = await startGateway(
      {
        gateway_id: "gw1",
        data_dir: tmp.dir,
        mqtt: {
          url: `mqtt://gw-user:s3cret-pw@127.0.0.1:${port}`,
          base_topic: base,
          reconnect_period_ms: 200,
        },
        metrics: { enabled: false },
        discovery: { on_start: true, interval_s: 0 },
      },
      { engine },
    );
    cleanups.push(() => gw.stop());
    await rec.waitFor((m) => m.some((x) => x.topic === `${base}/gw1/1001/meta`), "meta through the ACL");
    // Requests reach it (its subscription is allowed) and are answered.
    await rec.publish(`${base}/gw1/bridge/request/health_check`, { transaction: "h" });
    await rec.waitFor(
      (m) => m.some((x) => x.topic === `${base}/gw1/bridge/response/health_check`),
      "response",
    );
    const retained = await retainedUnder(`mqtt://watcher:watch@127.0.0.1:${port}`, `${base}/#`);
    const info = JSON.parse(retained.get(`${base}/gw1/bridge/info`)!) as { mqtt: { url: string } };
    expect(info.mqtt.url).toBe(`mqtt://127.0.0.1:${port}`);
    for (const m of rec.messages) {
      expect(m.payload).not.toContain("s3cret-pw");
      expect(m.payload).not.toContain("gw-user");
    }
  });

  it("refuses wrong credentials without crashing and keeps readings for later", async () => {
    const base = uniqueBase("auth-bad");
    const broker = await startBroker({
      port: 0,
      host: "127.0.0.1",
      sysInterval: 0,
      baseTopic: base,
      users: [
        { username: "gw-user", role: "gateway", gateway: "gw1", password_hash: await hashPassword("right") },
      ],
    });
    cleanups.push(() => broker.close());
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    const engine = new FakeEngine();
    const gw = await startGateway(
      {
        gateway_id: "gw1",
        data_dir: tmp.dir,
        mqtt: {
          url: broker.url.replace("mqtt://", "mqtt://gw-user:wrong@"),
          base_topic: base,
          reconnect_period_ms: 200,
        },
        metrics: { enabled: false },
        discovery: { on_start: false, interval_s: 0 },
      },
      { engine },
    );
    cleanups.push(() => gw.stop());
    engine.emit(
      "readings",
      1001,
      [{ point: "analog_input_1", value: 1, ts: "2026-11-27T08:00:00.000Z" }],
      "poll",
    );
    expect(gw.mqtt.connected).toBe(false);
    const deadline = Date.now() + 10_000;
    while (gw.buffer.depth === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(gw.buffer.depth).toBe(1);
  });

  it("speaks mqtts:// to a broker whose certificate is signed by the configured CA", async () => {
    const tmp = tempDir();
    cleanups.push(() => tmp.remove());
    const key = path.join(tmp.dir, "key.pem");
    const cert = path.join(tmp.dir, "cert.pem");
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
      ],
      { stdio: "ignore" },
    );
    const broker = await startBroker({
      port: 0,
      host: "127.0.0.1",
      sysInterval: 0,
      allowAnonymous: true,
      tls: { cert: readFileSync(cert), key: readFileSync(key) },
    });
    cleanups.push(() => broker.close());
    expect(broker.url).toMatch(/^mqtts:\/\//);
    const base = uniqueBase("tls");
    const engine = new FakeEngine();
    const gw = await startGateway(
      {
        gateway_id: "gw1",
        data_dir: path.join(tmp.dir, "data"),
        mqtt: { url: broker.url, base_topic: base, ca: cert, reconnect_period_ms: 200 },
        metrics: { enabled: false },
        discovery: { on_start: false, interval_s: 0 },
      },
      { engine },
    );
    cleanups.push(() => gw.stop());
    const deadline = Date.now() + 10_000;
    while (!gw.mqtt.connected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(gw.mqtt.connected).toBe(true);
    // Birth went out over TLS: state, info, devices, health acknowledged by the broker.
    while (gw.mqtt.stats.published < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(gw.mqtt.stats.published).toBeGreaterThanOrEqual(4);
    expect(gw.mqtt.stats.failed).toBe(0);
  });
});
