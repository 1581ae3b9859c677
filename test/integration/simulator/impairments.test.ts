// A device that drops out (setOnline false), artificial packet loss and latency, and 100,000 random
// or mutated datagrams thrown at a device and a router without a crash.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import { bvll, enc, type Frame, npdu, RawClient, rpPayload, type Target, whoIs } from "./raw-client.ts";

let sim: Simulator;
let client: RawClient;
const t: Record<string, Target> = {};
let invoke = 0;
const nextInvoke = () => (invoke = (invoke + 1) & 0xff);

/** Polls `cond` every 10 ms, at most `max` times. */
async function until(cond: () => boolean, max = 500): Promise<boolean> {
  for (let i = 0; i < max; i++) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return cond();
}

const fromTarget = (target: Target) => (f: Frame) =>
  f.from.address === target.address && f.from.port === target.port;

beforeAll(async () => {
  sim = await startSimulator({
    seed: 42,
    devices: [
      { instance: 6001, address: "127.77.5.1", port: 0, changeIntervalMs: 0 },
      { instance: 6002, address: "127.77.5.2", port: 0 },
      { instance: 6003, address: "127.77.5.3", port: 0, lossRate: 1 },
      { instance: 6004, address: "127.77.5.4", port: 0, lossRate: 0.3 },
      { instance: 6005, address: "127.77.5.5", port: 0, latencyMs: 150 },
      { instance: 6006, address: "127.77.5.6", port: 0, objects: { analog_input: 400 }, maxApdu: 480 },
    ],
    routers: [{ address: "127.77.5.10", port: 0, networks: [{ network: 9, devices: [{ instance: 6101 }] }] }],
  });
  for (const d of sim.devices()) t[d.instance] = { address: d.address, port: d.port };
  client = await RawClient.open("127.0.0.1");
});

afterAll(async () => {
  await client?.close();
  await sim?.close();
});

describe("setOnline", () => {
  it("makes a device silent to everything until it comes back", async () => {
    const dev = t[6001] as Target;
    const flush = t[6002] as Target;
    expect(
      (await client.request(dev, { invokeId: nextInvoke(), service: 12 }, rpPayload(8, 6001, 77))).type,
    ).toBe("complex");
    sim.setOnline(6001, false);
    const dropped = sim.stats().dropped;
    await client.send(dev, bvll(0x0a, [...npdu(), ...whoIs()]));
    await client.send(
      dev,
      bvll(0x0a, [...npdu({ expectingReply: true }), 0x02, 0x05, 0x42, 0x0c, ...rpPayload(8, 6001, 77)]),
    );
    expect(await until(() => sim.stats().dropped >= dropped + 2)).toBe(true);
    // Anything the offline device had sent would now sit ahead of this reply in our socket.
    expect(
      (await client.request(flush, { invokeId: nextInvoke(), service: 12 }, rpPayload(8, 6002, 77))).type,
    ).toBe("complex");
    expect(client.inbox.filter(fromTarget(dev))).toEqual([]);
    sim.setOnline(6001, true);
    expect(
      (await client.request(dev, { invokeId: nextInvoke(), service: 12 }, rpPayload(8, 6001, 77))).type,
    ).toBe("complex");
  });

  it("sends no COV notification while offline", async () => {
    const dev = t[6001] as Target;
    const flush = t[6002] as Target;
    const sub = await client.request(dev, { invokeId: nextInvoke(), service: 5 }, [
      ...enc.ctxUint(0, 99),
      ...enc.ctxObjectId(1, 2, 1),
      ...enc.ctxBool(2, false),
      ...enc.ctxUint(3, 60),
    ]);
    expect(sub.type).toBe("simple");
    expect(await client.next(fromTarget(dev))).toBeDefined(); // the initial notification
    sim.setOnline(6001, false);
    const sent = sim.stats().covNotificationsSent;
    sim.setPresentValue(6001, "analog_value_1", 1234);
    expect(
      (await client.request(flush, { invokeId: nextInvoke(), service: 12 }, rpPayload(8, 6002, 77))).type,
    ).toBe("complex");
    expect(sim.stats().covNotificationsSent).toBe(sent);
    expect(client.inbox.filter(fromTarget(dev))).toEqual([]);
    sim.setOnline(6001, true);
  });
});

describe("packet loss and latency", () => {
  it("never answers at loss rate 1", async () => {
    const dev = t[6003] as Target;
    const dropped = sim.stats().dropped;
    for (let i = 0; i < 20; i++) await client.send(dev, bvll(0x0a, [...npdu(), ...whoIs()]));
    expect(await until(() => sim.stats().dropped >= dropped + 20)).toBe(true);
    expect(
      (
        await client.request(
          t[6002] as Target,
          { invokeId: nextInvoke(), service: 12 },
          rpPayload(8, 6002, 77),
        )
      ).type,
    ).toBe("complex");
    expect(client.inbox.filter(fromTarget(dev))).toEqual([]);
  });

  it("answers some but not all requests at loss rate 0.3, and counts every drop", async () => {
    const dev = t[6004] as Target;
    const before = sim.stats();
    for (let i = 0; i < 200; i++) await client.send(dev, bvll(0x0a, [...npdu(), ...whoIs()]));
    // Each Who-Is is either dropped on the way in, or received (and its I-Am dropped or sent).
    expect(
      await until(() => {
        const s = sim.stats();
        return s.requestsReceived - before.requestsReceived + (s.dropped - before.dropped) >= 200;
      }),
    ).toBe(true);
    expect(
      (
        await client.request(
          t[6002] as Target,
          { invokeId: nextInvoke(), service: 12 },
          rpPayload(8, 6002, 77),
        )
      ).type,
    ).toBe("complex");
    const answered = client.inbox.filter(fromTarget(dev)).length;
    client.inbox.length = 0;
    const after = sim.stats();
    expect(answered).toBeGreaterThan(20);
    expect(answered).toBeLessThan(180);
    expect(after.dropped - before.dropped).toBe(200 - answered);
  });

  it("delays every reply by the configured latency", async () => {
    const start = performance.now();
    const r = await client.request(
      t[6005] as Target,
      { invokeId: nextInvoke(), service: 12 },
      rpPayload(8, 6005, 77),
    );
    expect(r.type).toBe("complex");
    expect(performance.now() - start).toBeGreaterThanOrEqual(145);
  });
});

describe("malformed input", () => {
  it("survives 100,000 random and mutated datagrams and still answers", async () => {
    let seed = 12345;
    const rand = () => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed / 4294967296;
    };
    const templates: Buffer[] = [
      bvll(0x0a, [...npdu(), ...whoIs(1, 100000)]),
      bvll(0x0b, [...npdu({ dnet: 0xffff }), ...whoIs()]),
      bvll(0x0a, [...npdu({ expectingReply: true }), 0x02, 0x75, 0x01, 0x0c, ...rpPayload(8, 6006, 76)]),
      bvll(0x0a, [...npdu({ expectingReply: true }), 0x02, 0x75, 0x02, 0x0c, ...rpPayload(0, 1, 85, 1)]),
      bvll(0x0a, [
        ...npdu({ expectingReply: true }),
        0x02,
        0x75,
        0x03,
        0x0e,
        ...enc.ctxObjectId(0, 0, 1),
        ...enc.open(1),
        ...enc.ctxUint(0, 8),
        ...enc.ctxUint(0, 85),
        ...enc.ctxUint(1, 2),
        ...enc.close(1),
      ]),
      bvll(0x0a, [
        ...npdu({ expectingReply: true }),
        0x00,
        0x05,
        0x04,
        0x0f,
        ...enc.ctxObjectId(0, 1, 1),
        ...enc.ctxUint(1, 85),
        ...enc.open(3),
        ...enc.appReal(3),
        ...enc.close(3),
        ...enc.ctxUint(4, 9),
      ]),
      bvll(0x0a, [
        ...npdu({ expectingReply: true }),
        0x00,
        0x05,
        0x05,
        0x05,
        ...enc.ctxUint(0, 1),
        ...enc.ctxObjectId(1, 0, 1),
        ...enc.ctxBool(2, false),
        ...enc.ctxUint(3, 5),
      ]),
      bvll(0x0a, [
        ...npdu({ dnet: 9, dadr: [1], expectingReply: true }),
        0x02,
        0x75,
        0x06,
        0x0c,
        ...rpPayload(8, 6101, 76),
      ]),
      bvll(0x0a, [
        ...npdu({ snet: 5, sadr: [1, 2], expectingReply: true }),
        0x02,
        0x75,
        0x07,
        0x0c,
        ...rpPayload(8, 6006, 77),
      ]),
      bvll(0x0a, [...npdu(), 0x40, 0x01, 0x00, 0x04]),
      bvll(0x0a, npdu({ networkMessage: 0x00 })),
      bvll(0x04, [127, 0, 0, 1, 0xba, 0xc0, ...npdu(), ...whoIs()]),
      bvll(0x05, [0x00, 0x3c]),
    ];
    const mutate = (): Buffer => {
      const kind = rand();
      if (kind < 0.2) {
        const b = Buffer.alloc(Math.floor(rand() * 64));
        for (let i = 0; i < b.length; i++) b[i] = Math.floor(rand() * 256);
        if (b.length >= 4 && rand() < 0.5) {
          b[0] = 0x81;
          b.writeUInt16BE(b.length, 2);
        }
        return b;
      }
      const base = Buffer.from(templates[Math.floor(rand() * templates.length)] as Buffer);
      let b = base;
      const edits = 1 + Math.floor(rand() * 4);
      for (let e = 0; e < edits; e++) {
        const op = rand();
        if (op < 0.5 && b.length > 0) b[Math.floor(rand() * b.length)] ^= 1 << Math.floor(rand() * 8);
        else if (op < 0.7 && b.length > 0) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
        else if (op < 0.85) b = b.subarray(0, Math.floor(rand() * b.length));
        else b = Buffer.concat([b, Buffer.from([Math.floor(rand() * 256), Math.floor(rand() * 256)])]);
      }
      // Mostly keep the BVLL length right, so the damage reaches the NPDU and APDU decoders.
      if (b.length >= 4 && rand() < 0.8) {
        b[0] = 0x81;
        b.writeUInt16BE(b.length, 2);
      }
      return b;
    };
    const targets = [t[6006], t[6001], t["6101"]].filter(Boolean) as Target[];
    const received = () => sim.stats().datagramsReceived;
    const start = received();
    let sent = 0;
    for (let batch = 0; batch < 400; batch++) {
      const sends: Promise<void>[] = [];
      for (let i = 0; i < 250; i++) {
        const target = targets[(batch * 250 + i) % targets.length] as Target;
        sends.push(client.send(target, mutate()).catch(() => undefined));
      }
      await Promise.all(sends);
      sent += 250;
      // Let the simulator (same process) drain its sockets so few datagrams die in kernel buffers.
      // Wait until the sockets are drained: caught up, or no progress over one poll (bounded).
      for (let poll = 0, last = -1; poll < 100; poll++) {
        const now = received();
        if (now - start >= sent - 250 || now === last) break;
        last = now;
        await new Promise((r) => setTimeout(r, 2));
      }
      if (batch % 20 === 0) client.inbox.length = 0;
    }
    expect(sent).toBe(100_000);
    const s = sim.stats();
    expect(s.malformed).toBeGreaterThan(1000);
    expect(s.internalErrors).toBe(0);
    expect(s.datagramsReceived - start).toBeGreaterThan(90_000);
    client.inbox.length = 0;
    // A fresh socket: replies to fuzzed requests (segment retransmissions too) still go to the old one.
    const fresh = await RawClient.open("127.0.0.1");
    for (const target of [t[6006], t[6001]] as Target[]) {
      const r = await fresh.request(
        target,
        { invokeId: nextInvoke(), service: 12 },
        rpPayload(8, 4194303, 77),
      );
      expect(r.type).toBe("complex");
    }
    const routed = await fresh.request(
      { ...(t["6101"] as Target), dnet: 9, dadr: [1] },
      { invokeId: nextInvoke(), service: 12 },
      rpPayload(8, 6101, 77),
    );
    expect(routed.type).toBe("complex");
    await fresh.close();
  }, 120_000);
});
