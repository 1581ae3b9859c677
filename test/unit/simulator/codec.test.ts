// The simulator's encoder against the encodings printed in ASHRAE 135 clause 20.2 and Annex F,
// and its decoder against arbitrary bytes (it may only ever throw DecodeError).
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  DecodeError,
  decodeMaxApdu,
  decodeMaxSegments,
  decodeNpdu,
  finishBvll,
  Reader,
  readAppValue,
  Writer,
  writeBvllNpdu,
} from "../../../simulator/codec.ts";

const hex = (f: (w: Writer) => void) => {
  const w = new Writer(4);
  f(w);
  return w.take().toString("hex").toUpperCase();
};

describe("application tags (clause 20.2)", () => {
  it("encodes the standard's examples", () => {
    expect(hex((w) => w.appNull())).toBe("00");
    expect(hex((w) => w.appBoolean(false))).toBe("10");
    expect(hex((w) => w.appBoolean(true))).toBe("11");
    expect(hex((w) => w.appUnsigned(72))).toBe("2148");
    expect(hex((w) => w.appSigned(72))).toBe("3148");
    expect(hex((w) => w.appSigned(-72))).toBe("31B8");
    expect(hex((w) => w.appReal(72))).toBe("4442900000");
    expect(hex((w) => w.appEnumerated(0))).toBe("9100");
    expect(hex((w) => w.appObjectId(0, 15))).toBe("C40000000F"); // (Analog Input, 15)
    expect(hex((w) => w.appCharString("This is a BACnet string!"))).toBe(
      `751900${Buffer.from("This is a BACnet string!").toString("hex").toUpperCase()}`,
    );
    expect(hex((w) => w.appBitString([true, false, true, false, true]))).toBe("8203A8"); // B'10101'
  });

  it("encodes context tags, opening/closing tags, extended tag numbers and long lengths", () => {
    expect(hex((w) => w.ctxUnsigned(0, 256))).toBe("0A0100");
    expect(hex((w) => w.ctxObjectId(1, 0, 5))).toBe("1C00000005");
    expect(hex((w) => w.open(3))).toBe("3E");
    expect(hex((w) => w.close(3))).toBe("3F");
    expect(hex((w) => w.ctxUnsigned(20, 1))).toBe("F91401");
    const long = hex((w) => w.appCharString("x".repeat(300)));
    expect(long.slice(0, 10)).toBe("75FE012D00"); // length 301 = 0x012D in the 2-byte form
  });

  it("decodes what it encodes", () => {
    const w = new Writer(8);
    w.appNull();
    w.appBoolean(true);
    w.appUnsigned(4194303);
    w.appSigned(-100000);
    w.appReal(-1.5);
    w.appCharString("Zone Temp");
    w.appBitString([false, true, false, true]);
    w.appEnumerated(62);
    w.appObjectId(8, 1234);
    const r = new Reader(w.take());
    const values = [];
    while (r.remaining > 0) values.push(readAppValue(r));
    expect(values).toEqual([
      { tag: "null" },
      { tag: "boolean", value: true },
      { tag: "unsigned", value: 4194303 },
      { tag: "signed", value: -100000 },
      { tag: "real", value: -1.5 },
      { tag: "string", value: "Zone Temp" },
      { tag: "bits", value: [false, true, false, true] },
      { tag: "enumerated", value: 62 },
      { tag: "objectId", type: 8, instance: 1234 },
    ]);
  });

  it("decodes the max-APDU and max-segments codes of a confirmed request (clause 20.1.2)", () => {
    expect([0, 1, 2, 3, 4, 5].map(decodeMaxApdu)).toEqual([50, 128, 206, 480, 1024, 1476]);
    expect([1, 2, 3, 4, 5, 6].map(decodeMaxSegments)).toEqual([2, 4, 8, 16, 32, 64]);
    expect(decodeMaxSegments(0)).toBe(Number.POSITIVE_INFINITY);
    expect(decodeMaxSegments(7)).toBe(Number.POSITIVE_INFINITY);
  });

  it("only ever throws DecodeError on arbitrary input", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (bytes) => {
        const r = new Reader(Buffer.from(bytes));
        try {
          for (let i = 0; i < 50 && r.remaining > 0; i++) {
            if (i % 2) readAppValue(r);
            else r.skipItem();
          }
        } catch (e) {
          if (!(e instanceof DecodeError)) throw e;
        }
        try {
          decodeNpdu(Buffer.from(bytes), 0, bytes.length);
        } catch (e) {
          if (!(e instanceof DecodeError)) throw e;
        }
      }),
      { numRuns: 5000 },
    );
  });
});

describe("BVLL and NPDU (Annex J, clause 6.2)", () => {
  it("writes Original-Unicast-NPDU with DNET/DADR, SNET/SADR and hop count in the standard order", () => {
    const w = new Writer(8);
    writeBvllNpdu(w, {
      bvlc: 0x0a,
      dest: { net: 7, adr: Buffer.from([0xaa, 0xbb]) },
      source: { net: 100, adr: Buffer.from([3]) },
      expectingReply: true,
    });
    w.u8(0x10);
    w.u8(0x08);
    finishBvll(w);
    expect(w.take().toString("hex")).toBe("810a0012" + "012c" + "000702aabb" + "00640103" + "ff" + "1008");
  });

  it("decodes an NPDU and refuses reserved bits and invalid source specifiers", () => {
    const n = decodeNpdu(Buffer.from("012c000702aabb00640103ff1008", "hex"), 0, 14);
    expect(n).toMatchObject({ dnet: 7, snet: 100, hopCount: 255, expectingReply: true, offset: 12 });
    expect([...(n.dadr ?? [])]).toEqual([0xaa, 0xbb]);
    expect([...(n.sadr ?? [])]).toEqual([3]);
    expect(() => decodeNpdu(Buffer.from("0140", "hex"), 0, 2)).toThrow(DecodeError);
    expect(() => decodeNpdu(Buffer.from("0108ffff0103", "hex"), 0, 6)).toThrow(DecodeError);
    expect(() => decodeNpdu(Buffer.from("020000", "hex"), 0, 3)).toThrow(DecodeError);
    expect(decodeNpdu(Buffer.from("018000", "hex"), 0, 3)).toMatchObject({ messageType: 0, offset: 3 });
  });
});
