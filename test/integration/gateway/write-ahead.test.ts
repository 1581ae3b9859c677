// The gateway process (`bin/bacmqtt.mjs gateway`) SIGKILLed while its live readings are published
// but not acknowledged: a TCP relay in front of the broker stops forwarding what the gateway sends,
// so the broker neither gets those PUBLISH packets nor answers them (no PUBACK). After the kill the
// held bytes are thrown away (they never reach the broker) and the gateway is started again with the
// same data dir: every reading it had handed to MQTT arrives, marked historical (the write-ahead
// journal in the disk buffer). Loopback only: the relay, the broker and the simulator are local.
import path from "node:path";
import { afterAll, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import { GatewayProcess, readingKey, readingsIn, writeGatewayConfig } from "../../faults/gateway-process.ts";
import { BrokerLink, hostPort, Recorder, startTestBroker, tempDir, uniqueBase } from "./helpers.ts";

const closers: (() => Promise<unknown> | undefined)[] = [];
afterAll(async () => {
  for (const c of closers.reverse()) await Promise.resolve(c()).catch(() => undefined);
});

/** PUBLISH packets (topic, payload) in a client→broker MQTT 3.1.1 byte stream; a cut-off tail is ignored. */
function publishesIn(stream: Buffer): { topic: string; payload: string }[] {
  const out: { topic: string; payload: string }[] = [];
  let at = 0;
  for (let n = 0; n < 1_000_000 && at < stream.length; n++) {
    const header = stream[at] as number;
    let length = 0;
    let i = at + 1;
    for (let shift = 0; shift < 28 && i < stream.length; shift += 7) {
      const b = stream[i++] as number;
      length += (b & 0x7f) << shift;
      if ((b & 0x80) === 0) break;
    }
    const end = i + length;
    if (end > stream.length) break;
    if (header >> 4 === 3) {
      const topicLength = stream.readUInt16BE(i);
      const topic = stream.toString("utf8", i + 2, i + 2 + topicLength);
      const qos = (header >> 1) & 3;
      out.push({ topic, payload: stream.toString("utf8", i + 2 + topicLength + (qos > 0 ? 2 : 0), end) });
    }
    at = end;
  }
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

it("SIGKILL with readings published but not acknowledged: the next start delivers them all, historical", {
  timeout: 120_000,
}, async () => {
  const tmp = tempDir("bacmqtt-gw-wal-");
  closers.push(async () => tmp.remove());
  const sim: Simulator = await startSimulator({
    devices: [1, 2].map((i) => ({
      instance: 896_000 + i,
      address: `127.0.96.${i}`,
      port: 0,
      objects: { analog_value: 5 },
      cov: false,
      changeIntervalMs: 0,
    })),
  });
  closers.push(() => sim.close());
  const broker = await startTestBroker();
  closers.push(() => broker.close());
  const relay = new BrokerLink(hostPort(broker.url));
  await relay.restore();
  closers.push(() => relay.cut());
  const base = uniqueBase("wal");
  const rec = await Recorder.connect(broker.url, `${base}/gw1/+/readings`);
  closers.push(() => rec.close());
  const gw = new GatewayProcess(
    writeGatewayConfig(tmp.dir, {
      gateway_id: "gw1",
      data_dir: path.join(tmp.dir, "data"),
      mqtt: { url: relay.url, base_topic: base, reconnect_period_ms: 200 },
      bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1 },
      discovery: {
        on_start: true,
        interval_s: 0,
        targets: sim.devices().map((d) => `${d.address}:${d.port}`),
      },
      polling: { interval_s: 0.5, cov: false },
      buffer: { fsync: "never" },
      metrics: { enabled: false },
    }),
  );
  closers.push(() => gw.stop("SIGKILL"));

  gw.start();
  await rec.waitFor((m) => readingsIn(m).length >= 20, "live readings", 60_000);
  relay.hold();
  const withheld = () =>
    publishesIn(Buffer.concat(relay.held)).filter((p) => p.topic.endsWith("/readings")).length;
  for (let i = 0; i < 400 && withheld() < 4; i++) await sleep(25);
  await gw.stop("SIGKILL");
  const held = publishesIn(Buffer.concat(relay.held))
    .filter((p) => p.topic.endsWith("/readings"))
    .map((p) => ({ ...p, retain: false }));
  relay.discard();
  const heldKeys = readingsIn(held).map(readingKey);
  const atKill = rec.messages.length;
  const seenBefore = new Set(readingsIn(rec.messages).map(readingKey));
  expect(held.length).toBeGreaterThanOrEqual(4);
  expect(heldKeys.length).toBeGreaterThan(0);
  // Published by the gateway, never on the broker: without the journal these die with the process.
  expect(heldKeys.filter((k) => seenBefore.has(k))).toEqual([]);

  gw.start();
  // The replay runs before live publishing resumes: the first live message after the restart means
  // the journal has been replayed.
  await rec.waitFor(
    (m) => readingsIn(m, atKill).some((r) => !r.historical),
    "live readings after the restart",
    60_000,
  );
  await gw.stop("SIGTERM");
  const after = readingsIn(rec.messages, atKill);
  const historical = new Set(after.filter((r) => r.historical).map(readingKey));
  expect(heldKeys.filter((k) => !historical.has(k))).toEqual([]);
  // Nothing after the restart comes out of order: historical first, then live.
  const firstLive = after.findIndex((r) => !r.historical);
  expect(after.slice(firstLive).every((r) => !r.historical)).toBe(true);
});
