// Segmented ComplexACKs (clause 5.4.5): a ≥300-object list read whole in segments, window handling
// driven by our Segment-ACKs, recovery from a lost segment by negative ACK, and the Aborts a device
// sends when it cannot or may not segment; a device without segmentation stays readable by index.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import {
  appValue,
  decodeItems,
  RawClient,
  rpPayload,
  rpValues,
  type SegmentPolicy,
  type Target,
} from "./raw-client.ts";

const OBJECT_LIST = 76;
const RP = 12;
const RPM = 14;

let sim: Simulator;
let client: RawClient;
let seg: Target;
let noSeg: Target;
let small: Target;
let invoke = 100;
const nextInvoke = () => (invoke = (invoke + 1) & 0xff);

beforeAll(async () => {
  sim = await startSimulator({
    devices: [
      { instance: 3001, address: "127.77.2.1", port: 0, objects: { analog_input: 250, binary_value: 100 } },
      {
        instance: 3002,
        address: "127.77.2.2",
        port: 0,
        segmentation: false,
        objects: { analog_value: 200, multi_state_value: 120 },
      },
      { instance: 3003, address: "127.77.2.3", port: 0, maxApdu: 206, objects: { analog_input: 60 } },
      { instance: 3004, address: "127.77.2.4", port: 0, objects: { analog_value: 3000 } },
    ],
  });
  const [a, b, c] = sim.devices();
  seg = { address: a?.address as string, port: a?.port as number };
  noSeg = { address: b?.address as string, port: b?.port as number };
  small = { address: c?.address as string, port: c?.port as number };
  client = await RawClient.open("127.0.0.1");
});

afterAll(async () => {
  await client?.close();
  await sim?.close();
});

function objectIds(data: Buffer) {
  return rpValues(data).map(appValue) as { type: number; instance: number }[];
}

describe("segmented responses", () => {
  it("sends a 351-entry object list in windows of segments the client acknowledges", async () => {
    const policy: SegmentPolicy = { acks: [], seen: [] };
    const r = await client.request(
      seg,
      { invokeId: nextInvoke(), service: RP, maxApduCode: 5, maxSegmentsCode: 7 },
      rpPayload(8, 3001, OBJECT_LIST),
      policy,
    );
    if (r.type !== "complex") throw new Error(`expected ACK, got ${r.type}`);
    const ids = objectIds(r.data);
    expect(ids).toHaveLength(351);
    expect(ids[0]).toEqual({ type: 8, instance: 3001 });
    expect(ids[350]).toEqual({ type: 5, instance: 100 });
    // 351 × 5 bytes + header does not fit 1476: two segments, each at most 1476 bytes of APDU.
    expect(r.segments).toBeGreaterThanOrEqual(2);
    const seen = policy.seen ?? [];
    expect(seen.map((s) => s.seq)).toEqual(seen.map((_, i) => i));
    expect(seen.slice(0, -1).every((s) => s.more)).toBe(true);
    expect(seen.at(-1)?.more).toBe(false);
    expect(seen.every((s) => s.length <= 1476 && s.proposedWindow >= 1 && s.proposedWindow <= 127)).toBe(
      true,
    );
    expect(policy.acks?.at(-1)).toEqual({
      seq: seen.length - 1,
      window: seen[0]?.proposedWindow,
      nak: false,
    });
  });

  it("honours a small max APDU and a window of one segment", async () => {
    const policy: SegmentPolicy = { acks: [], seen: [], window: 1 };
    const r = await client.request(
      seg,
      { invokeId: nextInvoke(), service: RP, maxApduCode: 2, maxSegmentsCode: 7 },
      rpPayload(8, 3001, OBJECT_LIST),
      policy,
    );
    if (r.type !== "complex") throw new Error(`expected ACK, got ${r.type}`);
    expect(objectIds(r.data)).toHaveLength(351);
    const seen = policy.seen ?? [];
    // 206-byte APDUs: 201 bytes of service data per segment.
    expect(seen.length).toBe(Math.ceil(r.data.length / 201));
    expect(seen.every((s) => s.length <= 206)).toBe(true);
    // With window 1 every segment is acknowledged.
    expect(policy.acks?.map((a) => a.seq)).toEqual(seen.map((s) => s.seq));
  });

  it("retransmits from a negative ACK after a lost segment", async () => {
    // 206-byte APDUs give nine segments; the third one received is "lost".
    const policy: SegmentPolicy = { acks: [], seen: [], window: 4, drop: (_seq, n) => n === 2 };
    const r = await client.request(
      seg,
      { invokeId: nextInvoke(), service: RP, maxApduCode: 2, maxSegmentsCode: 7 },
      rpPayload(8, 3001, OBJECT_LIST),
      policy,
    );
    if (r.type !== "complex") throw new Error(`expected ACK, got ${r.type}`);
    expect(objectIds(r.data)).toHaveLength(351);
    // Every segment after the gap draws a NAK naming segment 1; the device answers the first and
    // treats the rest as duplicates.
    const naks = policy.acks?.filter((a) => a.nak) ?? [];
    expect(naks.length).toBeGreaterThanOrEqual(1);
    expect(naks.every((a) => a.seq === 1)).toBe(true);
    // Segment 2 came twice: once lost, once resent after the NAK.
    expect(policy.seen?.filter((s) => s.seq === 2)).toHaveLength(2);
  });

  it("retransmits the window when the last segment's ACK never comes", async () => {
    const policy: SegmentPolicy = { acks: [], seen: [], drop: (seq, n) => n === 1 && seq === 1 };
    const r = await client.request(
      seg,
      { invokeId: nextInvoke(), service: RP, maxApduCode: 5, maxSegmentsCode: 7 },
      rpPayload(8, 3001, OBJECT_LIST),
      policy,
    );
    if (r.type !== "complex") throw new Error(`expected ACK, got ${r.type}`);
    expect(objectIds(r.data)).toHaveLength(351);
    // The final segment was dropped once and arrived again after the segment timeout.
    expect(policy.seen?.filter((s) => !s.more)).toHaveLength(2);
  });

  it("aborts with segmentation-not-supported when the client does not accept segments", async () => {
    const r = await client.request(
      seg,
      { invokeId: nextInvoke(), service: RP, segmentedAccepted: false },
      rpPayload(8, 3001, OBJECT_LIST),
    );
    expect(r).toMatchObject({ type: "abort", reason: 4, server: true });
  });

  it("aborts when the answer needs more segments than the client accepts", async () => {
    const r = await client.request(
      seg,
      { invokeId: nextInvoke(), service: RP, maxApduCode: 0, maxSegmentsCode: 1 },
      rpPayload(8, 3001, OBJECT_LIST),
    );
    expect(r).toMatchObject({ type: "abort", reason: 11, server: true }); // apdu-too-long
  });

  it("wraps sequence numbers past 255 in a transfer of more than 256 segments", async () => {
    const policy: SegmentPolicy = { seen: [], acks: [] };
    const d = sim.devices().find((x) => x.instance === 3004);
    const big: Target = { address: d?.address as string, port: d?.port as number };
    const r = await client.request(
      big,
      { invokeId: nextInvoke(), service: RP, maxApduCode: 0, maxSegmentsCode: 7 },
      rpPayload(8, 3004, OBJECT_LIST),
      policy,
    );
    if (r.type !== "complex") throw new Error(`expected ACK, got ${r.type}`);
    const ids = objectIds(r.data);
    expect(ids).toHaveLength(3001);
    expect(ids[3000]).toEqual({ type: 2, instance: 3000 });
    // 50-byte APDUs carry 45 bytes each: 15,000+ bytes need more than 256 segments.
    expect(r.segments).toBeGreaterThan(256);
    const seqs = policy.seen?.map((s) => s.seq) ?? [];
    expect(seqs.slice(254, 258)).toEqual([254, 255, 0, 1]);
  });

  it("segments a ReadPropertyMultiple answer too", async () => {
    const payload: number[] = [];
    for (let i = 1; i <= 120; i++)
      payload.push(0x0c, 0x00, 0x00, 0x00, i, 0x1e, 0x09, 0x55, 0x09, 0x4d, 0x1f);
    const r = await client.request(seg, { invokeId: nextInvoke(), service: RPM, maxApduCode: 3 }, payload);
    if (r.type !== "complex") throw new Error(`expected ACK, got ${r.type}`);
    expect(r.segments).toBeGreaterThan(1);
    expect(decodeItems(r.data)).toHaveLength(240);
  });
});

describe("a device without segmentation", () => {
  it("advertises no-segmentation and aborts a whole object-list read", async () => {
    const seg107 = await client.request(
      noSeg,
      { invokeId: nextInvoke(), service: RP },
      rpPayload(8, 3002, 107),
    );
    if (seg107.type !== "complex") throw new Error("expected ACK");
    expect(rpValues(seg107.data).map(appValue)).toEqual([3]);
    const r = await client.request(
      noSeg,
      { invokeId: nextInvoke(), service: RP },
      rpPayload(8, 3002, OBJECT_LIST),
    );
    expect(r).toMatchObject({ type: "abort", reason: 4, server: true });
  });

  it("is readable entry by entry: index 0 gives the length, 1..n the identifiers", async () => {
    const len = await client.request(
      noSeg,
      { invokeId: nextInvoke(), service: RP },
      rpPayload(8, 3002, OBJECT_LIST, 0),
    );
    if (len.type !== "complex") throw new Error("expected ACK");
    const [n] = rpValues(len.data).map(appValue) as number[];
    expect(n).toBe(321);
    const ids: unknown[] = [];
    for (let i = 1; i <= (n as number); i++) {
      const r = await client.request(
        noSeg,
        { invokeId: nextInvoke(), service: RP },
        rpPayload(8, 3002, OBJECT_LIST, i),
      );
      if (r.type !== "complex") throw new Error(`index ${i}: ${r.type}`);
      ids.push(...objectIds(r.data));
    }
    expect(ids).toHaveLength(321);
    expect(new Set(ids.map((x) => JSON.stringify(x))).size).toBe(321);
    expect(ids[0]).toEqual({ type: 8, instance: 3002 });
    expect(ids).toContainEqual({ type: 19, instance: 120 });
  });

  it("limits replies by its own max APDU, not only the client's", async () => {
    const policy: SegmentPolicy = { seen: [] };
    const r = await client.request(
      small,
      { invokeId: nextInvoke(), service: RP },
      rpPayload(8, 3003, OBJECT_LIST),
      policy,
    );
    if (r.type !== "complex") throw new Error("expected ACK");
    expect(objectIds(r.data)).toHaveLength(61);
    expect(policy.seen?.length).toBeGreaterThan(1);
    expect(policy.seen?.every((s) => s.length <= 206)).toBe(true);
  });
});
