// Router mode: one BACnet/IP node fronting devices on remote networks (clause 6). Routed I-Ams carry
// SNET/SADR, requests with DNET/DADR reach the right device, Who-Is-Router-To-Network is answered,
// and an unknown network draws Reject-Message-To-Network.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import {
  appValue,
  bvll,
  decodeItems,
  enc,
  type Frame,
  npdu,
  RawClient,
  rpPayload,
  rpValues,
  whoIs,
} from "./raw-client.ts";

let sim: Simulator;
let client: RawClient;
let router: { address: string; port: number };
let invoke = 30;
const nextInvoke = () => (invoke = (invoke + 1) & 0xff);

const isIAm = (f: Frame) => f.body[0] === 0x10 && f.body[1] === 0x00;
const iAmInstance = (f: Frame) =>
  (appValue(decodeItems(f.body, 2)[0] as never) as { instance: number }).instance;

beforeAll(async () => {
  sim = await startSimulator({
    routers: [
      {
        address: "127.77.4.1",
        port: 0,
        networks: [
          {
            network: 100,
            devices: [{ instance: 5101 }, { instance: 5102, name: "second" }, { instance: 5103 }],
          },
          { network: 200, devices: [{ instance: 5201 }, { instance: 5202, rpm: false }] },
        ],
      },
    ],
  });
  const d = sim.devices();
  router = { address: d[0]?.address as string, port: d[0]?.port as number };
  client = await RawClient.open("127.0.0.1");
});

afterAll(async () => {
  await client?.close();
  await sim?.close();
});

describe("router mode", () => {
  it("describes routed devices with their network and 1-byte MAC", () => {
    expect(sim.devices().map((d) => [d.instance, d.network, d.mac])).toEqual([
      [5101, 100, "01"],
      [5102, 100, "02"],
      [5103, 100, "03"],
      [5201, 200, "01"],
      [5202, 200, "02"],
    ]);
    expect(new Set(sim.devices().map((d) => `${d.address}:${d.port}`)).size).toBe(1);
  });

  it("answers a global-broadcast Who-Is for every routed device, each I-Am carrying SNET/SADR", async () => {
    await client.send(router, bvll(0x0b, [...npdu({ dnet: 0xffff }), ...whoIs()]));
    const got: Frame[] = [];
    for (let i = 0; i < 5; i++) {
      const f = await client.next(isIAm);
      if (!f) break;
      got.push(f);
    }
    expect(got.map((f) => [iAmInstance(f), f.npdu.snet, f.npdu.sadr]).sort()).toEqual([
      [5101, 100, [1]],
      [5102, 100, [2]],
      [5103, 100, [3]],
      [5201, 200, [1]],
      [5202, 200, [2]],
    ]);
    expect(got.every((f) => f.npdu.dnet === undefined && f.from.address === router.address)).toBe(true);
  });

  it("answers a Who-Is for one remote network only from that network, and a local Who-Is not at all", async () => {
    // The local Who-Is goes first; the router handles datagrams in order, so any I-Am it caused
    // would arrive before those of network 200.
    await client.send(router, bvll(0x0a, [...npdu(), ...whoIs()]));
    await client.send(router, bvll(0x0a, [...npdu({ dnet: 200, dadr: [] }), ...whoIs()]));
    const a = await client.next(isIAm);
    const b = await client.next(isIAm);
    expect([a?.npdu.snet, b?.npdu.snet]).toEqual([200, 200]);
    expect([a, b].map((f) => iAmInstance(f as Frame)).sort()).toEqual([5201, 5202]);
    // A ranged Who-Is through the router to a device address.
    await client.send(router, bvll(0x0a, [...npdu({ dnet: 0xffff }), ...whoIs(5103, 5103)]));
    const c = await client.next(isIAm);
    expect(c && iAmInstance(c)).toBe(5103);
    expect(c?.npdu.sadr).toEqual([3]);
  });

  it("delivers a request with DNET/DADR to the right device and answers with SNET/SADR", async () => {
    const r = await client.request(
      { ...router, dnet: 100, dadr: [2] },
      { invokeId: nextInvoke(), service: 12 },
      rpPayload(8, 4194303, 77),
    );
    if (r.type !== "complex") throw new Error(`expected ACK, got ${r.type}`);
    expect(rpValues(r.data).map(appValue)).toEqual(["second"]);
    expect(r.frame.npdu.snet).toBe(100);
    expect(r.frame.npdu.sadr).toEqual([2]);
    const rej = await client.request(
      { ...router, dnet: 200, dadr: [2] },
      { invokeId: nextInvoke(), service: 14 },
      [...enc.ctxObjectId(0, 8, 5202), ...enc.open(1), ...enc.ctxUint(0, 77), ...enc.close(1)],
    );
    expect(rej).toMatchObject({ type: "reject", reason: 9 });
    expect(rej.frame.npdu.snet).toBe(200);
  });

  it("addresses its answer to SNET/SADR when the request came from a remote network", async () => {
    await client.send(
      router,
      bvll(0x0a, [
        ...npdu({ dnet: 100, dadr: [1], snet: 7, sadr: [0xaa, 0xbb], expectingReply: true }),
        0x02,
        0x05,
        0x77,
        0x0c,
        ...rpPayload(8, 5101, 75),
      ]),
    );
    const f = await client.next((x) => x.body[0] === 0x30 && x.body[1] === 0x77);
    expect(f?.npdu).toMatchObject({ dnet: 7, dadr: [0xaa, 0xbb], snet: 100, sadr: [1] });
  });

  it("answers Who-Is-Router-To-Network with I-Am-Router-To-Network", async () => {
    const isIAmRouter = (f: Frame) => f.npdu.messageType === 0x01;
    await client.send(router, bvll(0x0a, npdu({ networkMessage: 0x00 })));
    const all = await client.next(isIAmRouter);
    expect(all?.body.length).toBe(4);
    expect([all?.body.readUInt16BE(0), all?.body.readUInt16BE(2)]).toEqual([100, 200]);
    await client.send(router, bvll(0x0a, [...npdu({ networkMessage: 0x00 }), 0x00, 200]));
    const one = await client.next(isIAmRouter);
    expect(one?.body.length).toBe(2);
    expect(one?.body.readUInt16BE(0)).toBe(200);
  });

  it("rejects a message for a network it cannot reach", async () => {
    await client.send(
      router,
      bvll(0x0a, [
        ...npdu({ dnet: 300, dadr: [1], expectingReply: true }),
        0x02,
        0x05,
        0x01,
        0x0c,
        ...rpPayload(8, 1, 77),
      ]),
    );
    const f = await client.next((x) => x.npdu.messageType === 0x03);
    expect(f?.body[0]).toBe(1); // not directly connected and no route
    expect(f?.body.readUInt16BE(1)).toBe(300);
  });
});
