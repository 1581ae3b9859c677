// Polls against a hand-made device whose RPM answers are not what the simulator sends: objects in
// another order, a property error, an object left out, a value type the one-pass decoder does not
// take. The engine decodes the common answer straight into its poll slots and must fall back to
// matching by object and property for everything else, without mixing up points or cycles.

import { createSocket, type Socket } from "node:dgram";
import * as asn1 from "@bacnet-js/client/dist/lib/asn1.js";
import { ReadProperty, ReadPropertyMultiple } from "@bacnet-js/client/dist/lib/services/index.js";
import { afterEach, expect, it } from "vitest";
import type { ReadingPayload } from "../../../contract/index.ts";
import { decodeApdu, decodeDatagram, Pdu, Service, Tag } from "../../../gateway/bacnet/codec.ts";
import { createEngine, type Engine } from "../../../gateway/bacnet/index.ts";
import { waitFor } from "./support/wait.ts";

type Shape = "in-order" | "reversed" | "error-on-second" | "skip-last" | "string-pv";
type Obj = { type: number; instance: number };

const INSTANCE = 3_901_001;
const closers: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

/** The present value a device reports for an object at its n-th answer: distinct per object and answer. */
const pvOf = (o: Obj, n: number) => o.type * 1000 + o.instance + n / 4;

/** A device on 127.0.0.1:0 answering RPM (in the given shape) and ReadProperty of PV/SF. */
async function device(shape: () => Shape): Promise<{ port: number; rpm: number; rp: number }> {
  const s: Socket = createSocket("udp4");
  const stats = { port: 0, rpm: 0, rp: 0 };
  const reply = (
    invokeId: number,
    service: number,
    fill: (b: { buffer: Buffer; offset: number }) => void,
  ) => {
    const b = { buffer: Buffer.alloc(1500), offset: 0 };
    fill(b);
    const apdu = Buffer.concat([
      Buffer.from([Pdu.COMPLEX_ACK, invokeId, service]),
      b.buffer.subarray(0, b.offset),
    ]);
    const dgram = Buffer.concat([Buffer.from([0x81, 0x0a, 0, 0, 0x01, 0x00]), apdu]);
    dgram.writeUInt16BE(dgram.length, 2);
    return dgram;
  };
  const pv = (o: Obj, n: number, string: boolean) =>
    string ? { type: Tag.CHARACTER_STRING, value: `v${pvOf(o, n)}` } : { type: Tag.REAL, value: pvOf(o, n) };
  const sf = { type: Tag.BIT_STRING, value: { bitsUsed: 4, value: [0] } };
  s.on("message", (msg, rinfo) => {
    const d = decodeDatagram(msg, rinfo.address, rinfo.port);
    if (!d.apdu) return;
    const a = decodeApdu(d.apdu);
    if (a.type !== Pdu.CONFIRMED_REQUEST) return;
    let out: Buffer | undefined;
    if (a.service === Service.READ_PROPERTY_MULTIPLE) {
      const n = ++stats.rpm;
      const req = ReadPropertyMultiple.decode(a.body, 0, a.body.length) as {
        properties: { objectId: Obj; properties: { id: number }[] }[];
      };
      const how = shape();
      let specs = req.properties;
      if (how === "reversed") specs = [...specs].reverse();
      if (how === "skip-last") specs = specs.slice(0, -1);
      out = reply(a.invokeId, a.service, (b) => {
        specs.forEach((spec, i) => {
          asn1.encodeReadAccessResult(b, {
            objectId: spec.objectId,
            values: spec.properties.map((p) => ({
              property: { id: p.id, index: 0xffffffff },
              value:
                how === "error-on-second" && i === 1 && p.id === 85
                  ? [{ value: { type: "BacnetError", errorClass: 2, errorCode: 31 } }]
                  : [p.id === 85 ? pv(spec.objectId, n, how === "string-pv") : sf],
            })),
          } as never);
        });
      });
    } else if (a.service === Service.READ_PROPERTY) {
      stats.rp++;
      const req = ReadProperty.decode(a.body, 0, a.body.length) as {
        objectId: Obj;
        property: { id: number };
      };
      out = reply(a.invokeId, a.service, (b) => {
        asn1.encodeContextObjectId(b, 0, req.objectId.type, req.objectId.instance);
        asn1.encodeContextEnumerated(b, 1, req.property.id);
        asn1.encodeOpeningTag(b, 3);
        asn1.bacappEncodeApplicationData(
          b,
          (req.property.id === 85 ? { type: Tag.REAL, value: pvOf(req.objectId, -4) } : sf) as never,
        );
        asn1.encodeClosingTag(b, 3);
      });
    }
    if (out) s.send(out, rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => s.bind(0, "127.0.0.1", () => r()));
  stats.port = s.address().port;
  closers.push(() => new Promise<void>((r) => s.close(() => r())));
  return stats;
}

async function engineFor(port: number): Promise<Engine> {
  const e = await createEngine({
    interface: "127.0.0.1",
    port: 0,
    broadcast: "",
    cov: false,
    apduTimeoutMs: 500,
  });
  closers.push(() => e.stop());
  e.addDevice({
    deviceInstance: INSTANCE,
    address: `127.0.0.1:${port}`,
    network: null,
    mac: null,
    maxApdu: 1476,
    segmentation: "both",
    vendorId: 999,
  });
  return e;
}

const POINTS = ["analog_value_1", "analog_input_7", "binary_value_2"];
const OBJS: Obj[] = [
  { type: 2, instance: 1 },
  { type: 0, instance: 7 },
  { type: 5, instance: 2 },
];
const value = (r: ReadingPayload | undefined) => r?.value;

it("reads points right whatever the order of the RPM answer", async () => {
  const d = await device(() => "reversed");
  const e = await engineFor(d.port);
  const r = await e.readPoints(INSTANCE, POINTS);
  expect(r.map((x) => x.point)).toEqual(POINTS);
  // Binary objects report true/false: the value at answer 1 of binary_value_2 is 5002.25 → not 0/1,
  // so only the analog ones are compared by number.
  expect(value(r[0])).toBeCloseTo(pvOf(OBJS[0] as Obj, 1), 3);
  expect(value(r[1])).toBeCloseTo(pvOf(OBJS[1] as Obj, 1), 3);
  expect(r.every((x) => x.error === undefined && x.quality === "good")).toBe(true);
  expect(d.rp).toBe(0);
});

it("reports a property error as that point's bad reading, the others as read", async () => {
  const d = await device(() => "error-on-second");
  const e = await engineFor(d.port);
  const r = await e.readPoints(INSTANCE, POINTS);
  expect(r[1]).toMatchObject({
    point: "analog_input_7",
    value: null,
    quality: "bad",
    error: "GW_ERR_BACNET_UNKNOWN_OBJECT",
  });
  expect(value(r[0])).toBeCloseTo(pvOf(OBJS[0] as Obj, 1), 3);
  expect(r[2]?.error).toBeUndefined();
});

it("reads what an RPM answer left out with ReadProperty", async () => {
  const d = await device(() => "skip-last");
  const e = await engineFor(d.port);
  const r = await e.readPoints(INSTANCE, ["analog_value_1", "analog_input_7"]);
  expect(value(r[0])).toBeCloseTo(pvOf(OBJS[0] as Obj, 1), 3);
  expect(value(r[1])).toBeCloseTo(pvOf(OBJS[1] as Obj, -4), 3);
  expect(d.rp).toBe(2); // present value and status flags of the object left out
});

it("takes values the one-pass decoder does not (strings) through the library decoder", async () => {
  const d = await device(() => "string-pv");
  const e = await engineFor(d.port);
  const r = await e.readPoints(INSTANCE, POINTS.slice(0, 2));
  expect(r.map(value)).toEqual([`v${pvOf(OBJS[0] as Obj, 1)}`, `v${pvOf(OBJS[1] as Obj, 1)}`]);
});

it("polls with a prepared request every cycle and never hands one cycle another's values", async () => {
  // The answer's shape changes between cycles: in order, reversed, in order with an error, …
  const shapes: Shape[] = ["in-order", "reversed", "error-on-second", "in-order", "skip-last", "in-order"];
  let asked = 0;
  const d = await device(() => shapes[asked++ % shapes.length] as Shape);
  const e = await engineFor(d.port);
  const cycles: ReadingPayload[][] = [];
  e.on("readings", (_dev, readings, source) => {
    if (source === "poll") cycles.push(readings);
  });
  e.manage(
    {
      deviceInstance: INSTANCE,
      address: `127.0.0.1:${d.port}`,
      network: null,
      mac: null,
      maxApdu: 1476,
      segmentation: "both",
      vendorId: 999,
      objectName: null,
      description: null,
      location: null,
      vendorName: null,
      modelName: null,
      firmwareRevision: null,
      applicationSoftwareVersion: null,
      supportsRpm: true,
      supportsCov: false,
      readAt: new Date().toISOString(),
      points: POINTS.slice(0, 2).map((p, i) => ({
        point: p,
        object_type: i === 0 ? "analog-value" : "analog-input",
        object_instance: (OBJS[i] as Obj).instance,
        name: p,
        description: null,
        units: null,
        units_code: null,
        writable: false,
        state_texts: null,
        active_text: null,
        inactive_text: null,
        cov_increment: null,
      })),
    },
    { pollIntervalS: 0.05 },
  );
  await waitFor("12 poll cycles", () => cycles.length >= 12 || undefined, 10_000);
  await e.unmanage(INSTANCE);
  // Cycle n got answer n (one RPM per cycle, run back to back): each reading carries its own
  // answer's value, or the ReadProperty value for the object an answer left out.
  for (const [n, readings] of cycles.slice(0, 12).entries()) {
    const shape = shapes[n % shapes.length];
    expect(
      readings.map((x) => x.point),
      `cycle ${n}`,
    ).toEqual(POINTS.slice(0, 2));
    expect(value(readings[0]), `cycle ${n}`).toBeCloseTo(pvOf(OBJS[0] as Obj, n + 1), 3);
    if (shape === "error-on-second")
      expect(readings[1]?.error, `cycle ${n}`).toBe("GW_ERR_BACNET_UNKNOWN_OBJECT");
    else
      expect(value(readings[1]), `cycle ${n}`).toBeCloseTo(
        pvOf(OBJS[1] as Obj, shape === "skip-last" ? -4 : n + 1),
        3,
      );
  }
});
