// Byte-level checks of what the engine puts on the wire, against ASHRAE 135 (Annex J BVLL, clause 6
// NPDU, clause 20 APDU/encoding) rather than against the library or our simulator.
import { describe, expect, it } from "vitest";
import {
  Bvlc,
  confirmedHeader,
  DecodeError,
  decodeApdu,
  decodeDatagram,
  decodeErrorBody,
  decodeIAm,
  encodeBvll,
  encodeNpdu,
  encodeReadProperty,
  encodeReadPropertyMultiple,
  encodeRegisterForeignDevice,
  encodeSubscribeCov,
  encodeWhoIs,
  encodeWriteProperty,
  maxApduFromCode,
  parseHostPort,
  segmentAck,
  Tag,
} from "../../../gateway/bacnet/codec.ts";
import { broadcastOf, resolveInterface } from "../../../gateway/bacnet/interfaces.ts";
import { encodeForType, presentValue, statusFlags } from "../../../gateway/bacnet/values.ts";

const hex = (b: Buffer) => b.toString("hex");

describe("NPDU (clause 6.2)", () => {
  it("encodes local, routed and global-broadcast destinations with hop count 255", () => {
    expect(hex(encodeNpdu({}, false))).toBe("0100");
    expect(hex(encodeNpdu({}, true))).toBe("0104");
    // DNET 5, DLEN 1, DADR 0x01, hop count 0xFF; control = DNET present (0x20) | expecting reply (0x04)
    expect(hex(encodeNpdu({ network: 5, mac: Buffer.from([1]) }, true))).toBe("0124000501" + "01" + "ff");
    // Global broadcast: DNET 0xFFFF with DLEN 0 (no DADR)
    expect(hex(encodeNpdu({ network: 0xffff }, false))).toBe("0120ffff00ff");
    // A 6-byte B/IP MAC behind a router
    expect(hex(encodeNpdu({ network: 0x1234, mac: Buffer.from("c0a80105bac0", "hex") }, false))).toBe(
      "0120123406c0a80105bac0ff",
    );
  });

  it("decodes SNET/SADR of a routed reply and the originator of a Forwarded-NPDU", () => {
    // Original-Unicast, NPDU with SNET 21 SADR 02, then an I-Am APDU
    const iam = Buffer.from("1000c4023b8b8c2205c491032203e7", "hex");
    const npdu = Buffer.concat([Buffer.from("01080015" + "01" + "02", "hex"), iam]);
    const d = decodeDatagram(encodeBvll(Bvlc.ORIGINAL_UNICAST_NPDU, npdu), "10.0.0.9", 47808);
    expect(d.npdu?.snet).toBe(21);
    expect(hex(d.npdu?.sadr as Buffer)).toBe("02");
    expect(decodeIAm(decodeApdu(d.apdu as Buffer).body)).toEqual({
      deviceInstance: 3_902_348,
      maxApdu: 1476,
      segmentation: 3,
      vendorId: 999,
    });
    const fwd = Buffer.concat([
      Buffer.from("8104000a", "hex"),
      Buffer.from([192, 168, 1, 5, 0xba, 0xc1]),
      Buffer.from("0100", "hex"),
      iam,
    ]);
    fwd.writeUInt16BE(fwd.length, 2);
    const f = decodeDatagram(fwd, "10.0.0.1", 47808);
    expect([f.ip, f.port]).toEqual(["192.168.1.5", 0xbac1]);
  });

  it("rejects malformed input with DecodeError only", () => {
    const bad = [
      "",
      "81",
      "810a0005",
      "810a000401", // length mismatch
      "810a0006" + "0120", // DNET without address bytes
      "810a0008" + "0108ffff", // SNET truncated
      "810a000a" + "0108ffff0000", // SNET 0xFFFF invalid
      "8104000801000000", // short Forwarded-NPDU
      "810a00060200", // NPDU version 2
    ];
    for (const h of bad) {
      const b = Buffer.from(h, "hex");
      if (b.length >= 4) b.writeUInt16BE(h === "810a000401" ? 4 : b.length, 2);
      expect(() => decodeDatagram(b, "1.2.3.4", 1), h).toThrow(DecodeError);
    }
  });
});

describe("BVLL (Annex J)", () => {
  it("frames Original-Unicast and Register-Foreign-Device", () => {
    expect(hex(encodeBvll(Bvlc.ORIGINAL_UNICAST_NPDU, Buffer.from("0100", "hex")))).toBe("810a00060100");
    expect(hex(encodeRegisterForeignDevice(300))).toBe("8105000601" + "2c");
  });
});

describe("APDU (clause 20)", () => {
  it("encodes confirmed-request headers accepting segmented responses, and Segment-ACKs", () => {
    // PDU type 0, SA bit, max segments >64 (7), max APDU 1476 (5)
    expect(hex(confirmedHeader(0x2a, 12))).toBe("02752a0c");
    expect(hex(segmentAck(7, 3, 4, false))).toBe("40070304");
    expect(hex(segmentAck(7, 2, 4, true))).toBe("42070204");
    expect(maxApduFromCode(5)).toBe(1476);
    expect(maxApduFromCode(2)).toBe(206);
  });

  it("decodes segmented Complex-ACK headers", () => {
    const a = decodeApdu(Buffer.from("3c0903100e0102", "hex"));
    expect(a).toMatchObject({
      type: 0x30,
      invokeId: 9,
      segmented: true,
      moreFollows: true,
      seq: 3,
      window: 16,
      service: 14,
    });
    expect(hex(a.body)).toBe("0102");
    expect(() => decodeApdu(Buffer.from("38", "hex"))).toThrow(DecodeError);
  });

  it("encodes Who-Is, ReadProperty, RPM (with array index 0), WriteProperty and SubscribeCOV", () => {
    expect(hex(encodeWhoIs())).toBe("");
    expect(hex(encodeWhoIs(3, 1000))).toBe("09031a03e8");
    // analog-input 1, present-value
    expect(hex(encodeReadProperty({ type: 0, instance: 1 }, { id: 85 }))).toBe("0c000000011955");
    // device 1001, object-list[0]
    expect(hex(encodeReadProperty({ type: 8, instance: 1001 }, { id: 76, index: 0 }))).toBe(
      "0c020003e9194c2900",
    );
    expect(
      hex(
        encodeReadPropertyMultiple([
          { object: { type: 8, instance: 1001 }, properties: [{ id: 76, index: 0 }, { id: 77 }] },
        ]),
      ),
    ).toBe("0c020003e91e094c1900094d1f");
    // analog-output 1, present-value, REAL 42.5, priority 8
    expect(
      hex(encodeWriteProperty({ type: 1, instance: 1 }, { id: 85 }, { type: Tag.REAL, value: 42.5 }, 8)),
    ).toBe("0c0040000119553e44422a00003f4908");
    // binary-output 2 relinquish (NULL) at 9
    expect(
      hex(encodeWriteProperty({ type: 4, instance: 2 }, { id: 85 }, { type: Tag.NULL, value: null }, 9)),
    ).toBe("0c0100000219553e003f4909");
    expect(hex(encodeSubscribeCov(7, { type: 0, instance: 1 }, { confirmed: false, lifetimeS: 300 }))).toBe(
      "09071c0000000129003a012c",
    );
    // Cancellation carries neither issue-confirmed nor lifetime (clause 13.14.1)
    expect(hex(encodeSubscribeCov(7, { type: 0, instance: 1 }, null))).toBe("09071c00000001");
  });

  it("decodes Error PDUs, plain and wrapped", () => {
    expect(decodeErrorBody(Buffer.from("9102911f", "hex"))).toEqual({ errorClass: 2, errorCode: 31 });
    expect(decodeErrorBody(Buffer.from("0e9102912801", "hex")).errorCode).toBe(40);
    expect(() => decodeErrorBody(Buffer.from("91", "hex"))).toThrow(DecodeError);
  });
});

describe("values", () => {
  it("picks the application tag by object type", () => {
    expect(encodeForType(1, 21.5)).toEqual({ type: Tag.REAL, value: 21.5 });
    expect(encodeForType(4, true)).toEqual({ type: Tag.ENUMERATED, value: 1 });
    expect(encodeForType(5, "inactive")).toEqual({ type: Tag.ENUMERATED, value: 0 });
    expect(encodeForType(14, 3)).toEqual({ type: Tag.UNSIGNED, value: 3 });
    expect(encodeForType(45, -4)).toEqual({ type: Tag.SIGNED, value: -4 });
    expect(encodeForType(40, "hello")).toEqual({ type: Tag.CHARACTER_STRING, value: "hello" });
    expect(encodeForType(1, null)).toEqual({ type: Tag.NULL, value: null });
    expect(() => encodeForType(14, 0)).toThrow();
    expect(() => encodeForType(1, "warm")).toThrow();
  });

  it("turns present values and status flags into contract shapes", () => {
    expect(presentValue(3, [{ type: Tag.ENUMERATED, value: 1 }])).toBe(true);
    expect(presentValue(0, [{ type: Tag.REAL, value: 21.579999923706055 }])).toBe(21.58);
    // status flags bit 1 (fault) and 3 (out-of-service); the library stores bits LSB-first per byte
    expect(statusFlags([{ type: Tag.BIT_STRING, value: { bitsUsed: 4, value: [0b1010] } }])).toEqual({
      in_alarm: false,
      fault: true,
      overridden: false,
      out_of_service: true,
    });
  });
});

describe("interfaces and addresses", () => {
  it("computes broadcast addresses and resolves loopback addresses inside 127/8", () => {
    expect(broadcastOf("192.168.1.31", "255.255.255.0")).toBe("192.168.1.255");
    expect(broadcastOf("10.1.2.3", "255.255.240.0")).toBe("10.1.15.255");
    expect(resolveInterface("127.0.0.5")).toMatchObject({
      address: "127.0.0.5",
      broadcast: "127.255.255.255",
    });
    expect(() => resolveInterface("no-such-nic0")).toThrow(/candidates/);
    expect(parseHostPort("10.0.0.1")).toEqual({ ip: "10.0.0.1", port: 47808 });
    expect(parseHostPort("10.0.0.1:47809")).toEqual({ ip: "10.0.0.1", port: 47809 });
    expect(() => parseHostPort("10.0.0.300")).toThrow();
  });
});
