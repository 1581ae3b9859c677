// The client side of segmentation (clause 5.4.5) against a hand-written server peer: window sizes
// above 1, a lost segment that must be NAKed and resent, two segmented transfers at once with the
// same device, and a network that reverses every window (reordering): the peer then treats a NAK
// for what it already had acknowledged as a duplicate and resends nothing (DuplicateACK_Received),
// so the client must keep the early segments. The peer follows the standard directly, not our
// codec and not the simulator.
import { createSocket, type Socket } from "node:dgram";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createEngine, type Engine } from "../../../gateway/bacnet/index.ts";

const DEVICE = 3_940_001;
const ENTRIES = 400;
let engine: Engine;
let peer: Socket;
const acks: { invokeId: number; seq: number; window: number; nak: boolean }[] = [];

/** RP-ACK body of Device,object-list with ENTRIES analog-value object ids (clause 15.5.1.3). */
function objectListAck(): Buffer {
  const parts: Buffer[] = [
    Buffer.from([0x0c, 0x02, (DEVICE >> 16) & 0x3f, (DEVICE >> 8) & 0xff, DEVICE & 0xff]),
    Buffer.from([0x19, 76, 0x3e]),
  ];
  parts[0]?.writeUInt32BE(((8 << 22) | DEVICE) >>> 0, 1);
  for (let i = 1; i <= ENTRIES; i++) {
    const b = Buffer.alloc(5);
    b[0] = 0xc4;
    b.writeUInt32BE(((2 << 22) | i) >>> 0, 1);
    parts.push(b);
  }
  parts.push(Buffer.from([0x3f]));
  return Buffer.concat(parts);
}

let reverseWindows = false;

interface Transfer {
  segments: Buffer[];
  window: number;
  dropped: boolean;
  acked: number;
  to: { address: string; port: number };
  invokeId: number;
}

beforeAll(async () => {
  peer = createSocket("udp4");
  await new Promise<void>((r) => peer.bind(0, "127.0.0.1", () => r()));
  const body = objectListAck();
  const SEG = 120;
  const transfers = new Map<number, Transfer>();
  const send = (t: Transfer, seq: number) => {
    const more = seq < t.segments.length - 1;
    const apdu = Buffer.concat([
      Buffer.from([0x38 | (more ? 0x04 : 0), t.invokeId, seq, 3, 12]),
      t.segments[seq] as Buffer,
    ]);
    const dgram = Buffer.concat([Buffer.from([0x81, 0x0a, 0, 0, 0x01, 0x00]), apdu]);
    dgram.writeUInt16BE(dgram.length, 2);
    peer.send(dgram, t.to.port, t.to.address);
  };
  peer.on("message", (msg, rinfo) => {
    const apdu = msg.subarray(6);
    const type = (apdu[0] as number) & 0xf0;
    if (type === 0x00 && apdu[3] === 12) {
      // Confirmed ReadProperty: the client must accept segments ((apdu[0] & 0x02) = SA).
      expect((apdu[0] as number) & 0x02).toBe(0x02);
      const invokeId = apdu[2] as number;
      const segments: Buffer[] = [];
      for (let o = 0; o < body.length; o += SEG) segments.push(body.subarray(o, o + SEG));
      const t: Transfer = {
        segments,
        window: 1,
        dropped: false,
        acked: -1,
        to: { address: rinfo.address, port: rinfo.port },
        invokeId,
      };
      transfers.set(invokeId, t);
      send(t, 0); // the first segment goes alone: it negotiates the window (5.4.5.2)
    } else if (type === 0x40) {
      const invokeId = apdu[1] as number;
      const seq = apdu[2] as number;
      const window = apdu[3] as number;
      const nak = ((apdu[0] as number) & 0x02) !== 0;
      acks.push({ invokeId, seq, window, nak });
      const t = transfers.get(invokeId);
      if (!t) return;
      if (reverseWindows && seq === t.acked) return; // a duplicate ACK: only the timer restarts
      t.acked = seq;
      t.window = window;
      const from = seq + 1;
      const window_: number[] = [];
      for (let s = from; s < Math.min(t.segments.length, from + window); s++) window_.push(s);
      if (reverseWindows) window_.reverse();
      for (const s of window_) {
        // Lose segment 4 once per transfer: the client must NAK and get it again.
        if (!reverseWindows && s === 4 && !t.dropped) {
          t.dropped = true;
          continue;
        }
        send(t, s);
      }
    }
  });
  engine = await createEngine({
    interface: "127.0.0.1",
    port: 0,
    broadcast: "",
    apduTimeoutMs: 1000,
    retries: 1,
  });
  const a = peer.address();
  engine.addDevice({
    deviceInstance: DEVICE,
    address: `${a.address}:${a.port}`,
    network: null,
    mac: null,
    maxApdu: 1476,
    segmentation: "both",
    vendorId: 1,
  });
});

afterAll(async () => {
  await engine?.stop();
  await new Promise<void>((r) => (peer ? peer.close(() => r()) : r()));
});

it("reassembles windowed segments, NAKs a lost one, and runs two transfers at once", async () => {
  const [a, b] = await Promise.all([
    engine.read(DEVICE, "device", "object_list"),
    engine.read(DEVICE, "device", "object_list"),
  ]);
  const expected = Array.from({ length: ENTRIES }, (_, i) => `analog_value_${i + 1}`);
  expect(a).toEqual(expected);
  expect(b).toEqual(expected);
  // Window accepted, no larger than proposed (3); the loss produced a negative ACK per transfer.
  expect(acks.every((x) => x.window >= 1 && x.window <= 3)).toBe(true);
  expect(acks.filter((x) => x.nak).length).toBeGreaterThanOrEqual(2);
  expect(new Set(acks.map((x) => x.invokeId)).size).toBe(2);
});

it("keeps segments that arrive ahead of a gap: a reversed window completes without a retry", async () => {
  reverseWindows = true;
  try {
    const before = acks.length;
    const started = engine.transportStats()?.retries ?? 0;
    const list = await engine.read(DEVICE, "device", "object_list");
    expect(list).toHaveLength(ENTRIES);
    expect((engine.transportStats()?.retries ?? 0) - started).toBe(0);
    // One NAK per gap at most (the first early segment of each window), not one per early segment.
    const mine = acks.slice(before);
    const windows = mine.filter((x) => !x.nak).length;
    expect(mine.filter((x) => x.nak).length).toBeLessThanOrEqual(windows);
  } finally {
    reverseWindows = false;
  }
});
