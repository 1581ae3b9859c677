// The polling fast path of the RPM ack decoder against the library's decoder it stands in for:
// for every answer it accepts it must yield exactly what the library path yields, and it must
// accept the answers polling actually gets (else the fast path silently never runs).
import * as asn1 from "@bacnet-js/client/dist/lib/asn1.js";
import { describe, expect, it } from "vitest";
import {
  ARRAY_ALL,
  decodeReadPropertyMultipleAck,
  decodeRpmAckInOrder,
  decodeRpmAckLibrary,
  decodeRpmAckPrimitive,
  Tag,
} from "../../../gateway/bacnet/codec.ts";
import { mulberry32 as rng } from "../../../simulator/objects.ts"; // deterministic: a failure can be replayed

type R = () => number;
const int = (r: R, n: number) => Math.floor(r() * n);

/** A value polling gets back (REAL, enumerated, …) or, with `exotic`, one it does not. */
function value(r: R, exotic: boolean): { type: number; value: unknown } {
  const kinds = exotic ? 10 : 7;
  switch (int(r, kinds)) {
    case 0:
      return { type: Tag.REAL, value: Math.fround((r() - 0.5) * 10 ** int(r, 12)) };
    case 1:
      return { type: Tag.ENUMERATED, value: [0, 1, 255, 256, 65_535, 70_000, 2 ** 32 - 1][int(r, 7)] };
    case 2:
      return { type: Tag.UNSIGNED, value: [0, 7, 300, 16_777_216, 2 ** 32 - 1][int(r, 5)] };
    case 3:
      return { type: Tag.SIGNED, value: [-1, 0, 5, -129, 40_000, -(2 ** 31)][int(r, 6)] };
    case 4:
      return { type: Tag.BOOLEAN, value: r() < 0.5 };
    case 5:
      return { type: Tag.NULL, value: null };
    case 6: {
      const bitsUsed = 1 + int(r, 24);
      const bytes = Array.from({ length: Math.ceil(bitsUsed / 8) }, () => int(r, 256));
      return { type: Tag.BIT_STRING, value: { bitsUsed, value: bytes } };
    }
    case 7:
      return { type: Tag.CHARACTER_STRING, value: "x".repeat(int(r, 20)) };
    case 8:
      return { type: Tag.OBJECT_ID, value: { type: int(r, 60), instance: int(r, 4_194_303) } };
    default:
      return { type: Tag.DOUBLE, value: r() * 1e6 };
  }
}

/** An RPM ack body as a device encodes it (the library's own encoder). */
function ack(r: R, exotic: boolean): Buffer {
  const buffer = { buffer: Buffer.alloc(8192), offset: 0 };
  const objects = 1 + int(r, 50);
  for (let o = 0; o < objects; o++) {
    const values = Array.from({ length: 1 + int(r, 4) }, () => {
      const property = {
        id: [85, 111, 77, 87, 4_194_303][int(r, 5)] as number,
        index: r() < 0.2 ? int(r, 70_000) : ARRAY_ALL,
      };
      if (r() < 0.1)
        return {
          property,
          value: [{ value: { type: "BacnetError", errorClass: int(r, 8), errorCode: int(r, 300) } }],
        };
      return { property, value: Array.from({ length: int(r, 4) }, () => value(r, exotic)) };
    });
    asn1.encodeReadAccessResult(buffer, {
      objectId: { type: int(r, 1024), instance: int(r, 4_194_304) },
      values,
    } as never);
  }
  return Buffer.from(buffer.buffer.subarray(0, buffer.offset));
}

describe("RPM ack fast path", () => {
  it("decodes what polling gets back exactly as the library path does", () => {
    const r = rng(1);
    for (let i = 0; i < 2000; i++) {
      const body = ack(r, false);
      const fast = decodeRpmAckPrimitive(body);
      expect(fast, `case ${i}: ${body.toString("hex")}`).toBeDefined();
      expect(fast).toEqual(decodeRpmAckLibrary(body));
    }
  });

  it("hands anything else to the library and never disagrees with it", () => {
    const r = rng(2);
    let handedOver = 0;
    for (let i = 0; i < 2000; i++) {
      const body = ack(r, true);
      const fast = decodeRpmAckPrimitive(body);
      if (fast === undefined) handedOver++;
      else expect(fast, `case ${i}: ${body.toString("hex")}`).toEqual(decodeRpmAckLibrary(body));
      // Whatever path it takes, the public decoder agrees with the library.
      expect(decodeReadPropertyMultipleAck(body)).toEqual(decodeRpmAckLibrary(body));
    }
    expect(handedOver).toBeGreaterThan(100);
  });

  it("puts an answer in the order asked straight into slots, and refuses any other order", () => {
    const r = rng(4);
    for (let i = 0; i < 2000; i++) {
      const body = ack(r, i % 4 === 0);
      const lib = decodeRpmAckLibrary(body);
      const asked = lib.map((o) => ({
        object: o.object,
        properties: o.properties.map((p) =>
          p.index === ARRAY_ALL ? { id: p.id } : { id: p.id, index: p.index },
        ),
      }));
      const want = lib.flatMap((o) =>
        o.properties.map((p) => (p.error ? { error: p.error } : { values: p.values })),
      );
      const out: unknown[] = ["before"];
      const ok = decodeRpmAckInOrder(body, asked, out as never, 1);
      // Exactly when the one-pass decoder takes the whole answer.
      expect(ok, `case ${i}: ${body.toString("hex")}`).toBe(decodeRpmAckPrimitive(body) !== undefined);
      if (ok) expect(out).toEqual(["before", ...want]);
      // Another order, a property more or less, another object: not this fast path.
      const last = asked[asked.length - 1] as (typeof asked)[number];
      const variants = [
        [...asked].reverse(),
        [...asked.slice(0, -1), { ...last, properties: [...last.properties, { id: 85 }] }],
        [...asked.slice(0, -1), { ...last, properties: last.properties.slice(1) }],
        [
          ...asked.slice(0, -1),
          { ...last, object: { ...last.object, instance: (last.object.instance + 1) % 4_194_304 } },
        ],
        asked.slice(0, -1),
      ];
      for (const v of variants.slice(asked.length > 1 ? 0 : 1))
        expect(decodeRpmAckInOrder(body, v, [], 0), `case ${i}`).toBe(false);
    }
  });

  it("accepts nothing from damaged input that the library would decode differently", () => {
    const r = rng(3);
    for (let i = 0; i < 5000; i++) {
      const body = ack(r, i % 2 === 0);
      // Flip, truncate or extend: the fast path may refuse, but what it returns must match.
      const bad = Buffer.from(body);
      const how = int(r, 3);
      const damaged =
        how === 0
          ? (() => {
              bad[int(r, bad.length)] = int(r, 256);
              return bad;
            })()
          : how === 1
            ? bad.subarray(0, int(r, bad.length))
            : Buffer.concat([bad, Buffer.from([int(r, 256)])]);
      const fast = decodeRpmAckPrimitive(damaged);
      if (fast === undefined) continue;
      let lib: unknown;
      try {
        lib = decodeRpmAckLibrary(damaged);
      } catch (err) {
        lib = err;
      }
      expect(fast, `case ${i}: ${damaged.toString("hex")}`).toEqual(lib);
    }
  });
});
