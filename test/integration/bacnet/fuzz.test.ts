// 100,000+ random and mutated-valid datagrams at the engine's real socket, from a fake "device" the
// engine has requests pending with (so mutated answers hit the request-matching path too). The
// process must not throw, every request must settle, and the engine must still read a real device.
import { createSocket, type Socket } from "node:dgram";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createEngine, type Engine } from "../../../gateway/bacnet/index.ts";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import { mulberry32 as rng } from "../../../simulator/objects.ts"; // deterministic: a failure can be replayed
import { waitFor } from "./support/wait.ts";

let engine: Engine;
let sim: Simulator;
let fuzzer: Socket;

beforeAll(async () => {
  sim = await startSimulator({
    devices: [{ instance: 3_910_001, address: "127.0.0.1", port: 0, changeIntervalMs: 0 }],
  });
  engine = await createEngine({
    interface: "127.0.0.1",
    port: 0,
    broadcast: "",
    apduTimeoutMs: 300,
    retries: 1,
    perDeviceInFlight: 32,
  });
  fuzzer = createSocket("udp4");
  await new Promise<void>((r) => fuzzer.bind(0, "127.0.0.1", () => r()));
});

afterAll(async () => {
  await engine?.stop();
  await sim?.close();
  await new Promise<void>((r) => (fuzzer ? fuzzer.close(() => r()) : r()));
});

function bvll(fn: number, hexNpdu: string): Buffer {
  const body = Buffer.from(hexNpdu, "hex");
  const b = Buffer.concat([Buffer.from([0x81, fn, 0, 0]), body]);
  b.writeUInt16BE(b.length, 2);
  return b;
}

// Valid datagrams of every kind the engine parses (hand-encoded from clause 20/21 and Annex J).
const CORPUS = [
  bvll(0x0a, "01001000c4023b8b8c2205c491032203e7"), // I-Am
  bvll(0x0b, "01080015010210 00c4023b8b8c2205c491002203e7".replace(/ /g, "")), // routed I-Am, broadcast
  bvll(0x0a, "01003000 0c 0c0000000119553e4441a800003f".replace(/ /g, "")), // RP ack AI1 PV 21.0
  bvll(0x0a, "01003001 0e 0c000000011e2955 3e4441a800003f 296f 3e8204003f1f".replace(/ /g, "")), // RPM ack
  bvll(0x0a, "0100" + "3c0200100c" + "0c02000001194c3ec400000001c400000002"), // segmented ack, more follows
  bvll(0x0a, "0100" + "380201100c" + "c4004000013f"), // last segment
  bvll(0x0a, "0100" + "50030c9102911f"), // Error unknown-object
  bvll(0x0a, "0100" + "600409"), // Reject unrecognized-service
  bvll(0x0a, "0100" + "710504"), // Abort segmentation-not-supported
  bvll(0x0a, "0100" + "200605"), // SimpleACK SubscribeCOV
  bvll(
    0x0a,
    "0100" +
      "1002" +
      "0901 1c023b8b8c 2c00000001 3900 4e09552e4441a800002f09 6f2e8204002f4f".replace(/ /g, ""),
  ), // unconf COV
  bvll(0x0a, "0104" + "0005070101 0901 1c023b8b8c 2c00000001 3900 4e09552e4441a800002f4f".replace(/ /g, "")), // conf COV
  Buffer.concat([
    Buffer.from("8104001c7f00000bbac0", "hex"),
    Buffer.from("01001000c4023b8b8c2205c491032203e7", "hex"),
  ]), // Forwarded I-Am
  bvll(0x00, "0000"), // BVLC-Result
  bvll(0x0a, "0180" + "01" + "0005"), // network layer message Who-Is-Router
];
for (const c of CORPUS) c.writeUInt16BE(c.length, 2);

function mutate(r: () => number, base: Buffer): Buffer {
  const b = Buffer.from(base);
  const kind = Math.floor(r() * 6);
  if (kind === 0) {
    for (let i = 0; i < 1 + Math.floor(r() * 4); i++) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
  } else if (kind === 1) {
    const cut = Math.max(0, Math.floor(r() * b.length));
    return fixLength(b.subarray(0, cut), r);
  } else if (kind === 2) {
    const extra = Buffer.alloc(1 + Math.floor(r() * 40));
    for (let i = 0; i < extra.length; i++) extra[i] = Math.floor(r() * 256);
    return fixLength(Buffer.concat([b, extra]), r);
  } else if (kind === 3 && b.length > 6) {
    // Random invoke id on a reply so it may match a pending request.
    b[b.length > 8 ? 7 : 5] = Math.floor(r() * 256);
  } else if (kind === 4) {
    for (let i = 4; i < b.length; i++) if (r() < 0.1) b[i] = (b[i] as number) ^ (1 << Math.floor(r() * 8));
  }
  return fixLength(b, r);
}

/** Mostly keep the BVLL length right, so mutations get past the first check and into deeper parsing. */
function fixLength(b: Buffer, r: () => number): Buffer {
  if (b.length >= 4 && r() < 0.9) b.writeUInt16BE(b.length, 2);
  return b;
}

it("survives 100,000 random and mutated datagrams and keeps answering", async () => {
  const r = rng(20261127);
  const { port } = engine.endpoint();
  const fake = fuzzer.address();
  engine.addDevice({
    deviceInstance: 3_910_999,
    address: `${fake.address}:${fake.port}`,
    network: null,
    mac: null,
    maxApdu: 1476,
    segmentation: "both",
    vendorId: 1,
  });
  const routed = {
    deviceInstance: 3_910_998,
    address: `${fake.address}:${fake.port}`,
    network: 21,
    mac: "02",
    maxApdu: 480,
    segmentation: "none" as const,
    vendorId: 1,
  };
  engine.addDevice(routed);
  let settled = 0;
  let issued = 0;
  const issue = () => {
    issued++;
    const dev = issued % 2 ? 3_910_999 : 3_910_998;
    engine.read(dev, `analog_input_${issued % 5}`).then(
      () => settled++,
      () => settled++,
    );
  };
  const before = engine.transportStats()?.datagramsIn ?? 0;
  const TOTAL = 110_000;
  for (let sent = 0; sent < TOTAL; ) {
    if (sent % 2000 < 25) for (let i = 0; i < 16; i++) issue();
    const batch = Math.min(25, TOTAL - sent);
    for (let i = 0; i < batch; i++) {
      const p = r();
      let dgram: Buffer;
      if (p < 0.3) {
        dgram = Buffer.alloc(Math.floor(r() * 64));
        for (let j = 0; j < dgram.length; j++) dgram[j] = Math.floor(r() * 256);
        if (dgram.length > 0 && r() < 0.5) dgram[0] = 0x81;
      } else dgram = mutate(r, CORPUS[Math.floor(r() * CORPUS.length)] as Buffer);
      fuzzer.send(dgram, port, "127.0.0.1");
    }
    sent += batch;
    // Sender and engine share one event loop, and libuv reads at most 32 datagrams per socket
    // wake-up: small batches let the receive side keep up instead of the kernel dropping them.
    await new Promise((res) => setImmediate(res));
  }
  await waitFor(
    "datagrams processed",
    () => (engine.transportStats()?.datagramsIn ?? 0) - before >= 100_000,
    20_000,
  ).catch((err) => {
    throw new Error(`${err.message}: ${(engine.transportStats()?.datagramsIn ?? 0) - before} received`);
  });
  await waitFor("every request settled", () => settled === issued, 20_000);
  expect(engine.transportStats()?.malformed).toBeGreaterThan(10_000);
  // Still alive and correct with a real device.
  const h = sim.devices()[0];
  engine.addDevice({
    deviceInstance: 3_910_001,
    address: `${h?.address}:${h?.port}`,
    network: null,
    mac: null,
    maxApdu: 1476,
    segmentation: "both",
    vendorId: 999,
  });
  sim.setPresentValue(3_910_001, "analog_value_1", 64);
  expect(await engine.read(3_910_001, "analog_value_1")).toBe(64);
  const pts = await engine.readPoints(3_910_001, ["analog_input_1", "binary_input_1"]);
  expect(pts.every((x) => x.error === undefined)).toBe(true);
}, 120_000);
