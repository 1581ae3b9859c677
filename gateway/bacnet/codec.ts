// Wire encoding owned by the gateway: BVLL (ASHRAE 135 Annex J), NPDU (clause 6, with DNET/DADR,
// SNET/SADR and hop count) and the APDU headers (clause 20.1), plus the few service requests the
// engine sends. The library's encoders are bypassed here on purpose: its NPDU cannot address routed
// devices reliably, its RPM encoder drops array index 0, and its decoders throw on short input.
// Application-data (ASN.1 tag) encoding and the service-ack decoders are reused from the library,
// always behind `safeDecode` so a malformed reply becomes an error value, never an exception.
import * as asn1 from "@bacnet-js/client/dist/lib/asn1.js";
import {
  CovNotify,
  IAm,
  ReadProperty,
  ReadPropertyMultiple,
} from "@bacnet-js/client/dist/lib/services/index.js";

export const BVLL_TYPE = 0x81;
export const Bvlc = {
  RESULT: 0x00,
  WRITE_BDT: 0x01,
  READ_BDT: 0x02,
  READ_BDT_ACK: 0x03,
  FORWARDED_NPDU: 0x04,
  REGISTER_FOREIGN_DEVICE: 0x05,
  READ_FDT: 0x06,
  READ_FDT_ACK: 0x07,
  DELETE_FDT_ENTRY: 0x08,
  DISTRIBUTE_BROADCAST_TO_NETWORK: 0x09,
  ORIGINAL_UNICAST_NPDU: 0x0a,
  ORIGINAL_BROADCAST_NPDU: 0x0b,
} as const;

export const Pdu = {
  CONFIRMED_REQUEST: 0x00,
  UNCONFIRMED_REQUEST: 0x10,
  SIMPLE_ACK: 0x20,
  COMPLEX_ACK: 0x30,
  SEGMENT_ACK: 0x40,
  ERROR: 0x50,
  REJECT: 0x60,
  ABORT: 0x70,
} as const;

export const Service = {
  // confirmed
  CONFIRMED_COV_NOTIFICATION: 1,
  SUBSCRIBE_COV: 5,
  READ_PROPERTY: 12,
  READ_PROPERTY_MULTIPLE: 14,
  WRITE_PROPERTY: 15,
  // unconfirmed
  I_AM: 0,
  UNCONFIRMED_COV_NOTIFICATION: 2,
  WHO_IS: 8,
} as const;

export const GLOBAL_NETWORK = 0xffff;
export const ARRAY_ALL = 0xffffffff;
const MAX_APDU_CODES = [50, 128, 206, 480, 1024, 1476];

/** Raised for any datagram that does not follow the standard; callers count it and drop it. */
export class DecodeError extends Error {}

// ---- addresses ------------------------------------------------------------------------------

/** Where a PDU goes: a B/IP node plus, for routed devices, the remote network and MAC. */
export interface Destination {
  ip: string;
  port: number;
  network?: number | null;
  mac?: Buffer | null;
}

export function parseHostPort(text: string, defaultPort = 47808): { ip: string; port: number } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?$/.exec(text.trim());
  if (!m) throw new Error(`"${text}" is not an IPv4 address with optional :port`);
  const ip = m[1] as string;
  if (ip.split(".").some((o) => Number(o) > 255)) throw new Error(`"${text}" is not an IPv4 address`);
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  if (port < 1 || port > 65535) throw new Error(`"${text}": port out of range`);
  return { ip, port };
}

export function macToHex(mac: Buffer | null | undefined): string | null {
  return mac && mac.length > 0 ? mac.toString("hex") : null;
}

export function hexToMac(hex: string | null | undefined): Buffer | null {
  if (!hex) return null;
  if (!/^([0-9a-f]{2})+$/i.test(hex)) throw new Error(`"${hex}" is not a hex MAC address`);
  return Buffer.from(hex, "hex");
}

/** Stable key of a peer for invoke-id spaces and response matching. */
export function peerKey(ip: string, port: number, network?: number | null, mac?: Buffer | null): string {
  return network != null && network !== 0
    ? `${ip}:${port}/${network}:${macToHex(mac) ?? ""}`
    : `${ip}:${port}`;
}

// ---- BVLL + NPDU ----------------------------------------------------------------------------

export interface NpduHeader {
  control: number;
  dnet?: number;
  dadr?: Buffer;
  snet?: number;
  sadr?: Buffer;
  hopCount?: number;
  networkMessage?: number;
}

export interface Decoded {
  bvlcFunction: number;
  /** B/IP address of the node that originated the NPDU (Forwarded-NPDU carries it explicitly). */
  ip: string;
  port: number;
  /** For BVLC-Result: the result code. */
  result?: number;
  npdu?: NpduHeader;
  apdu?: Buffer;
}

function readNet(buf: Buffer, o: number): { net: number; adr: Buffer; next: number } {
  if (o + 3 > buf.length) throw new DecodeError("truncated NPDU address");
  const net = buf.readUInt16BE(o);
  const len = buf[o + 2] as number;
  if (o + 3 + len > buf.length) throw new DecodeError("truncated NPDU address");
  return { net, adr: Buffer.from(buf.subarray(o + 3, o + 3 + len)), next: o + 3 + len };
}

/** Decodes one datagram. Throws DecodeError on anything malformed; never reads out of bounds. */
export function decodeDatagram(buf: Buffer, fromIp: string, fromPort: number): Decoded {
  if (buf.length < 4 || buf[0] !== BVLL_TYPE) throw new DecodeError("not BACnet/IP");
  const fn = buf[1] as number;
  const length = buf.readUInt16BE(2);
  if (length !== buf.length) throw new DecodeError("BVLL length mismatch");
  let o = 4;
  let ip = fromIp;
  let port = fromPort;
  switch (fn) {
    case Bvlc.RESULT:
      if (length < 6) throw new DecodeError("short BVLC-Result");
      return { bvlcFunction: fn, ip, port, result: buf.readUInt16BE(4) };
    case Bvlc.FORWARDED_NPDU:
      if (length < 10) throw new DecodeError("short Forwarded-NPDU");
      ip = `${buf[4]}.${buf[5]}.${buf[6]}.${buf[7]}`;
      port = buf.readUInt16BE(8);
      o = 10;
      break;
    case Bvlc.ORIGINAL_UNICAST_NPDU:
    case Bvlc.ORIGINAL_BROADCAST_NPDU:
    case Bvlc.DISTRIBUTE_BROADCAST_TO_NETWORK:
      break;
    default:
      return { bvlcFunction: fn, ip, port };
  }
  if (o + 2 > buf.length) throw new DecodeError("truncated NPDU");
  if (buf[o] !== 0x01) throw new DecodeError("unsupported NPDU version");
  const control = buf[o + 1] as number;
  o += 2;
  const npdu: NpduHeader = { control };
  if (control & 0x20) {
    const d = readNet(buf, o);
    npdu.dnet = d.net;
    npdu.dadr = d.adr;
    o = d.next;
  }
  if (control & 0x08) {
    const s = readNet(buf, o);
    // SNET 0xFFFF and SLEN 0 are invalid source specifiers (clause 6.2.2).
    if (s.net === GLOBAL_NETWORK || s.adr.length === 0) throw new DecodeError("invalid SNET/SADR");
    npdu.snet = s.net;
    npdu.sadr = s.adr;
    o = s.next;
  }
  if (control & 0x20) {
    if (o >= buf.length) throw new DecodeError("truncated hop count");
    npdu.hopCount = buf[o++] as number;
  }
  if (control & 0x80) {
    if (o >= buf.length) throw new DecodeError("truncated network message");
    npdu.networkMessage = buf[o++] as number;
    return { bvlcFunction: fn, ip, port, npdu, apdu: Buffer.from(buf.subarray(o)) };
  }
  if (o >= buf.length) throw new DecodeError("empty APDU");
  return { bvlcFunction: fn, ip, port, npdu, apdu: buf.subarray(o) };
}

/** NPDU header for an APDU: DNET/DADR when the destination is routed (or 0xFFFF global broadcast). */
export function encodeNpdu(
  dest: { network?: number | null; mac?: Buffer | null },
  expectingReply: boolean,
): Buffer {
  const control = expectingReply ? 0x04 : 0x00;
  if (dest.network == null || dest.network === 0) return Buffer.from([0x01, control]);
  const mac = dest.network === GLOBAL_NETWORK ? Buffer.alloc(0) : (dest.mac ?? Buffer.alloc(0));
  const out = Buffer.alloc(2 + 3 + mac.length + 1);
  out[0] = 0x01;
  out[1] = control | 0x20;
  out.writeUInt16BE(dest.network, 2);
  out[4] = mac.length;
  mac.copy(out, 5);
  out[5 + mac.length] = 0xff; // hop count: the maximum, routers decrement it
  return out;
}

export function encodeBvll(fn: number, payload: Buffer): Buffer {
  const head = Buffer.from([BVLL_TYPE, fn, 0, 0]);
  const out = Buffer.concat([head, payload]);
  out.writeUInt16BE(out.length, 2);
  return out;
}

export function encodeRegisterForeignDevice(ttlS: number): Buffer {
  const ttl = Buffer.alloc(2);
  ttl.writeUInt16BE(Math.max(1, Math.min(65535, Math.round(ttlS))));
  return encodeBvll(Bvlc.REGISTER_FOREIGN_DEVICE, ttl);
}

// ---- APDU headers ---------------------------------------------------------------------------

export function maxApduCode(bytes: number): number {
  let code = 0;
  for (let i = 0; i < MAX_APDU_CODES.length; i++) if (bytes >= (MAX_APDU_CODES[i] as number)) code = i;
  return code;
}

export function maxApduFromCode(code: number): number {
  return MAX_APDU_CODES[code & 0x0f] ?? 50;
}

/** Confirmed-Request header; we always accept segmented responses, with more than 64 segments. */
export function confirmedHeader(invokeId: number, service: number, maxApdu = 1476): Buffer {
  const out = Buffer.alloc(4);
  writeConfirmedHeader(out, 0, invokeId, service, maxApdu);
  return out;
}

/** The 4-byte Confirmed-Request header written into `buf` at `offset` (no allocation). */
export function writeConfirmedHeader(
  buf: Buffer,
  offset: number,
  invokeId: number,
  service: number,
  maxApdu = 1476,
): void {
  buf[offset] = Pdu.CONFIRMED_REQUEST | 0x02;
  buf[offset + 1] = 0x70 | maxApduCode(maxApdu);
  buf[offset + 2] = invokeId & 0xff;
  buf[offset + 3] = service;
}

export function unconfirmedHeader(service: number): Buffer {
  return Buffer.from([Pdu.UNCONFIRMED_REQUEST, service]);
}

export function segmentAck(invokeId: number, seq: number, window: number, nak: boolean): Buffer {
  return Buffer.from([Pdu.SEGMENT_ACK | (nak ? 0x02 : 0), invokeId & 0xff, seq & 0xff, window & 0xff]);
}

export function simpleAck(invokeId: number, service: number): Buffer {
  return Buffer.from([Pdu.SIMPLE_ACK, invokeId & 0xff, service]);
}

export function rejectPdu(invokeId: number, reason: number): Buffer {
  return Buffer.from([Pdu.REJECT, invokeId & 0xff, reason]);
}

export interface ApduHeader {
  type: number;
  invokeId: number;
  service: number;
  segmented: boolean;
  moreFollows: boolean;
  seq: number;
  window: number;
  /** Confirmed requests: the requester's max APDU and whether it accepts segments. */
  maxApdu?: number;
  /** Reject/Abort reason, Segment-ACK flags. */
  reason?: number;
  nak?: boolean;
  fromServer?: boolean;
  body: Buffer;
}

export function decodeApdu(apdu: Buffer): ApduHeader {
  if (apdu.length < 2) throw new DecodeError("short APDU");
  const b0 = apdu[0] as number;
  const type = b0 & 0xf0;
  const need = (n: number) => {
    if (apdu.length < n) throw new DecodeError("short APDU");
  };
  const base = { type, invokeId: 0, service: 0, segmented: false, moreFollows: false, seq: 0, window: 0 };
  switch (type) {
    case Pdu.CONFIRMED_REQUEST: {
      need(4);
      const segmented = (b0 & 0x08) !== 0;
      const o = segmented ? 6 : 4;
      need(o);
      return {
        ...base,
        invokeId: apdu[2] as number,
        segmented,
        moreFollows: (b0 & 0x04) !== 0,
        seq: segmented ? (apdu[3] as number) : 0,
        window: segmented ? (apdu[4] as number) : 0,
        service: apdu[o - 1] as number,
        maxApdu: maxApduFromCode(apdu[1] as number),
        body: apdu.subarray(o),
      };
    }
    case Pdu.UNCONFIRMED_REQUEST:
      return { ...base, service: apdu[1] as number, body: apdu.subarray(2) };
    case Pdu.SIMPLE_ACK:
      need(3);
      return { ...base, invokeId: apdu[1] as number, service: apdu[2] as number, body: apdu.subarray(3) };
    case Pdu.COMPLEX_ACK: {
      const segmented = (b0 & 0x08) !== 0;
      const o = segmented ? 5 : 3;
      need(o);
      return {
        ...base,
        invokeId: apdu[1] as number,
        segmented,
        moreFollows: (b0 & 0x04) !== 0,
        seq: segmented ? (apdu[2] as number) : 0,
        window: segmented ? (apdu[3] as number) : 0,
        service: apdu[o - 1] as number,
        body: apdu.subarray(o),
      };
    }
    case Pdu.SEGMENT_ACK:
      need(4);
      return {
        ...base,
        invokeId: apdu[1] as number,
        seq: apdu[2] as number,
        window: apdu[3] as number,
        nak: (b0 & 0x02) !== 0,
        fromServer: (b0 & 0x01) !== 0,
        body: apdu.subarray(4),
      };
    case Pdu.ERROR:
      need(3);
      return { ...base, invokeId: apdu[1] as number, service: apdu[2] as number, body: apdu.subarray(3) };
    case Pdu.REJECT:
      need(3);
      return { ...base, invokeId: apdu[1] as number, reason: apdu[2] as number, body: apdu.subarray(3) };
    case Pdu.ABORT:
      need(3);
      return {
        ...base,
        invokeId: apdu[1] as number,
        reason: apdu[2] as number,
        fromServer: (b0 & 0x01) !== 0,
        body: apdu.subarray(3),
      };
    default:
      throw new DecodeError(`unknown PDU type ${type >> 4}`);
  }
}

/** Error PDU body: error class + error code, possibly wrapped in constructed tag 0 (clause 21). */
export function decodeErrorBody(body: Buffer): { errorClass: number; errorCode: number } {
  return safeDecode(() => {
    let o = 0;
    if (asn1.decodeIsOpeningTagNumber(body, 0, 0)) o = 1;
    const t1 = asn1.decodeTagNumberAndValue(body, o);
    if (t1.tagNumber !== 9) throw new DecodeError("error class not enumerated");
    o += t1.len;
    const c = asn1.decodeEnumerated(body, o, t1.value ?? 0);
    o += c.len;
    const t2 = asn1.decodeTagNumberAndValue(body, o);
    if (t2.tagNumber !== 9) throw new DecodeError("error code not enumerated");
    o += t2.len;
    const e = asn1.decodeEnumerated(body, o, t2.value ?? 0);
    if (o + e.len > body.length) throw new DecodeError("truncated error");
    return { errorClass: c.value as number, errorCode: e.value as number };
  });
}

// ---- service requests -----------------------------------------------------------------------

interface EncodeBuffer {
  buffer: Buffer;
  offset: number;
}

function withBuffer(fill: (b: EncodeBuffer) => void, size = 1600): Buffer {
  const b = { buffer: Buffer.alloc(size), offset: 0 };
  fill(b);
  return b.buffer.subarray(0, b.offset);
}

export function encodeWhoIs(low?: number, high?: number): Buffer {
  return withBuffer((b) => {
    if (low !== undefined && high !== undefined) {
      asn1.encodeContextUnsigned(b, 0, low);
      asn1.encodeContextUnsigned(b, 1, high);
    }
  }, 32);
}

export interface ObjectRef {
  type: number;
  instance: number;
}

export interface PropertyRef {
  id: number;
  index?: number;
}

export function encodeReadProperty(obj: ObjectRef, prop: PropertyRef): Buffer {
  return withBuffer((b) => {
    asn1.encodeContextObjectId(b, 0, obj.type, obj.instance);
    asn1.encodeContextEnumerated(b, 1, prop.id);
    if (prop.index !== undefined && prop.index !== ARRAY_ALL) asn1.encodeContextUnsigned(b, 2, prop.index);
  }, 64);
}

export function encodeReadPropertyMultiple(
  specs: { object: ObjectRef; properties: PropertyRef[] }[],
): Buffer {
  let size = 16;
  for (const s of specs) size += 8 + s.properties.length * 12;
  return withBuffer((b) => {
    for (const spec of specs) {
      asn1.encodeContextObjectId(b, 0, spec.object.type, spec.object.instance);
      asn1.encodeOpeningTag(b, 1);
      for (const p of spec.properties) {
        asn1.encodeContextEnumerated(b, 0, p.id);
        if (p.index !== undefined && p.index !== ARRAY_ALL) asn1.encodeContextUnsigned(b, 1, p.index);
      }
      asn1.encodeClosingTag(b, 1);
    }
  }, size);
}

/** Application-tagged value (clause 20.2); `type` is the BACnet application tag number. */
export interface AppValue {
  type: number;
  value: unknown;
}

export const Tag = {
  NULL: 0,
  BOOLEAN: 1,
  UNSIGNED: 2,
  SIGNED: 3,
  REAL: 4,
  DOUBLE: 5,
  OCTET_STRING: 6,
  CHARACTER_STRING: 7,
  BIT_STRING: 8,
  ENUMERATED: 9,
  DATE: 10,
  TIME: 11,
  OBJECT_ID: 12,
} as const;

export function encodeWriteProperty(
  obj: ObjectRef,
  prop: PropertyRef,
  value: AppValue,
  priority?: number,
): Buffer {
  return withBuffer((b) => {
    asn1.encodeContextObjectId(b, 0, obj.type, obj.instance);
    asn1.encodeContextEnumerated(b, 1, prop.id);
    if (prop.index !== undefined && prop.index !== ARRAY_ALL) asn1.encodeContextUnsigned(b, 2, prop.index);
    asn1.encodeOpeningTag(b, 3);
    // biome-ignore lint/suspicious/noExplicitAny: the library's app-data union is wider than we need
    asn1.bacappEncodeApplicationData(b, { type: value.type, value: value.value } as any);
    asn1.encodeClosingTag(b, 3);
    if (priority !== undefined) asn1.encodeContextUnsigned(b, 4, priority);
  });
}

export function encodeSubscribeCov(
  processId: number,
  obj: ObjectRef,
  subscribe: { confirmed: boolean; lifetimeS: number } | null,
): Buffer {
  return withBuffer((b) => {
    asn1.encodeContextUnsigned(b, 0, processId);
    asn1.encodeContextObjectId(b, 1, obj.type, obj.instance);
    if (subscribe) {
      asn1.encodeContextBoolean(b, 2, subscribe.confirmed);
      asn1.encodeContextUnsigned(b, 3, subscribe.lifetimeS);
    }
  }, 64);
}

// ---- service decoders (library, guarded) ----------------------------------------------------

/** Runs a library decoder; any throw or `undefined` becomes a DecodeError. */
export function safeDecode<T>(fn: () => T | undefined): T {
  let out: T | undefined;
  try {
    out = fn();
  } catch (err) {
    throw new DecodeError(`malformed service data: ${(err as Error)?.message ?? String(err)}`);
  }
  if (out === undefined || out === null) throw new DecodeError("malformed service data");
  return out;
}

export interface DecodedValue {
  type: number;
  value: unknown;
}

export interface IAmData {
  deviceInstance: number;
  maxApdu: number;
  segmentation: number;
  vendorId: number;
}

export function decodeIAm(body: Buffer): IAmData {
  const r = safeDecode(() => IAm.decode(body, 0));
  const id = r.deviceId as { type: number; instance: number } | number;
  const instance = typeof id === "number" ? id : id?.instance;
  if (typeof instance !== "number" || !Number.isInteger(instance))
    throw new DecodeError("I-Am without device id");
  if (typeof id === "object" && id.type !== 8) throw new DecodeError("I-Am object is not a device");
  if (r.len > body.length) throw new DecodeError("truncated I-Am");
  return {
    deviceInstance: instance,
    maxApdu: Number(r.maxApdu) || 50,
    segmentation: Number(r.segmentation) & 0x03,
    vendorId: Number(r.vendorId) || 0,
  };
}

export interface ReadResult {
  object: ObjectRef;
  property: number;
  index: number;
  values: DecodedValue[];
}

export function decodeReadPropertyAck(body: Buffer): ReadResult {
  const r = safeDecode(() => ReadProperty.decodeAcknowledge(body, 0, body.length));
  return {
    object: { type: r.objectId.type, instance: r.objectId.instance },
    property: r.property.id,
    index: r.property.index,
    values: (r.values as DecodedValue[]).map((v) => ({ type: v.type, value: v.value })),
  };
}

export interface RpmResult {
  object: ObjectRef;
  properties: {
    id: number;
    index: number;
    values: DecodedValue[];
    error?: { errorClass: number; errorCode: number };
  }[];
}

const ERROR_TAG = 105; // library's pseudo application tag for an in-place property access error

export function decodeReadPropertyMultipleAck(body: Buffer): RpmResult[] {
  return decodeRpmAckPrimitive(body) ?? decodeRpmAckLibrary(body);
}

/** Byte with its bit order reversed: BACnet bit strings start at the most significant bit. */
const REVERSED = Uint8Array.from({ length: 256 }, (_, b) => {
  let r = 0;
  for (let i = 0; i < 8; i++) if (b & (1 << i)) r |= 0x80 >> i;
  return r;
});

/**
 * The polling fast path of the RPM ack: what a poll gets back (REAL, enumerated, unsigned, signed,
 * boolean, null, short bit strings, per-property errors) decoded in one pass, without the
 * library's intermediate objects: at thousands of replies a second those were a large part of the
 * gateway's garbage. Anything else (strings, dates, constructed values, long or extended tags, a
 * byte out of place) returns undefined and the caller decodes it with the library, so an input it
 * accepts yields exactly what the library path yields (a test compares the two).
 */
export function decodeRpmAckPrimitive(b: Buffer): RpmResult[] | undefined {
  const end = b.length;
  const out: RpmResult[] = [];
  let o = 0;
  while (o < end) {
    const oid = objectStart(b, o);
    if (oid < 0) return undefined;
    o += 6;
    const properties: RpmResult["properties"] = [];
    for (;;) {
      if (o >= end) return undefined;
      if (b[o] === 0x1f) {
        o++;
        break;
      }
      if (!readProperty(b, o)) return undefined;
      o = cursor;
      const id = propId;
      const index = propIndex;
      if (propError) properties.push({ id, index, values: [], error: propError });
      else properties.push({ id, index, values: propValues });
    }
    out.push({ object: { type: Math.floor(oid / 0x400000), instance: oid % 0x400000 }, properties });
  }
  return out;
}

/** What one property of an RPM answer holds: its values, or the error the device reported for it. */
export type PropertyOutcome =
  | { values: DecodedValue[]; error?: undefined }
  | { values?: undefined; error: { errorClass: number; errorCode: number } };

/**
 * The hot path of polling: an RPM answer that lists exactly the objects and properties asked, in
 * the order asked, goes straight into `out[at…]` (one outcome per asked property), with no
 * per-object or per-property objects beyond the outcome itself. Returns false for any other
 * answer or any value decodeRpmAckPrimitive would not take; `out[at…]` may then hold partial
 * results, which the caller must overwrite.
 */
export function decodeRpmAckInOrder(
  b: Buffer,
  asked: readonly { object: ObjectRef; properties: readonly PropertyRef[] }[],
  out: (PropertyOutcome | undefined)[],
  at: number,
): boolean {
  const end = b.length;
  let o = 0;
  let slot = at;
  for (let i = 0; i < asked.length; i++) {
    const a = asked[i] as { object: ObjectRef; properties: readonly PropertyRef[] };
    const oid = objectStart(b, o);
    if (oid < 0 || oid !== a.object.type * 0x400000 + a.object.instance) return false;
    o += 6;
    for (let j = 0; j < a.properties.length; j++) {
      const p = a.properties[j] as PropertyRef;
      if (o >= end || !readProperty(b, o)) return false;
      if (propId !== p.id || propIndex !== (p.index ?? ARRAY_ALL)) return false;
      o = cursor;
      out[slot++] = propError ? { error: propError } : { values: propValues };
    }
    if (o >= end || b[o] !== 0x1f) return false;
    o++;
  }
  return o === end;
}

// Results of readProperty (one property of a ReadAccessResult), kept in module state so the hot
// path returns them without an object per call.
let cursor = 0;
let propId = 0;
let propIndex = 0;
let propValues: DecodedValue[] = [];
let propError: { errorClass: number; errorCode: number } | undefined;

/**
 * The object identifier an RP-ACK or RPM-ACK body starts with (context tag 0, length 4), as
 * type × 2^22 + instance, or −1: enough to tell whose answer a body is without decoding it.
 */
export function ackObjectId(b: Buffer): number {
  if (b.length < 5 || b[0] !== 0x0c) return -1;
  return b.readUInt32BE(1);
}

/** The property identifier of an RP-ACK body (context tag 1 after the object), or −1. */
export function rpAckPropertyId(b: Buffer): number {
  if (b.length < 7 || b[0] !== 0x0c) return -1;
  const tag = b[5] as number;
  const n = tag & 0x07;
  if ((tag & 0xf8) !== 0x18 || n < 1 || n > 4 || b.length < 6 + n) return -1;
  return b.readUIntBE(6, n);
}

/** Object identifier (context tag 0, length 4) and opening tag 1 at `o`, or −1. */
function objectStart(b: Buffer, o: number): number {
  if (o + 6 > b.length || b[o] !== 0x0c || b[o + 5] !== 0x1e) return -1;
  return b.readUInt32BE(o + 1);
}

/** One property result at `o` (id, optional index, values or error) into the module state. */
function readProperty(b: Buffer, o: number): boolean {
  const end = b.length;
  // Property identifier: context tag 2, length 1–4.
  let n = (b[o] as number) - 0x28;
  if (n < 1 || n > 4 || o + 1 + n > end) return false;
  propId = b.readUIntBE(o + 1, n);
  o += 1 + n;
  propIndex = ARRAY_ALL;
  if (o < end && (b[o] as number) >= 0x39 && (b[o] as number) <= 0x3c) {
    n = (b[o] as number) - 0x38;
    if (o + 1 + n > end) return false;
    propIndex = b.readUIntBE(o + 1, n);
    o += 1 + n;
  }
  if (o >= end) return false;
  if (b[o] === 0x5e) {
    // Property access error: error class and code, both enumerated (length 1–4).
    o++;
    const c = enumAt(b, o);
    if (c < 0) return false;
    o += 1 + (c & 7);
    const e = enumAt(b, o);
    if (e < 0) return false;
    o += 1 + (e & 7);
    if (o >= end || b[o] !== 0x5f) return false;
    cursor = o + 1;
    propError = { errorClass: Math.floor(c / 8), errorCode: Math.floor(e / 8) };
    return true;
  }
  if (b[o] !== 0x4e) return false; // opening tag 4: property value
  o++;
  // Nearly always exactly one value: an array of the right size, not one grown by push.
  if (o < end && b[o] === 0x4f) {
    propValues = [];
    o++;
  } else {
    const first = readValue(b, o);
    if (first === undefined) return false;
    o = cursor;
    if (o < end && b[o] === 0x4f) {
      propValues = [first];
      o++;
    } else {
      const values = [first];
      for (;;) {
        if (o >= end) return false;
        if (b[o] === 0x4f) {
          o++;
          break;
        }
        const v = readValue(b, o);
        if (v === undefined) return false;
        values.push(v);
        o = cursor;
      }
      propValues = values;
    }
  }
  propError = undefined;
  cursor = o;
  return true;
}

/** One primitive application-tagged value at `o` (cursor set past it), or undefined. */
function readValue(b: Buffer, o: number): DecodedValue | undefined {
  const tag = b[o] as number;
  const type = tag >> 4;
  const lv = tag & 0x0f;
  // Context-specific, extended tag numbers or lengths (≥ 5), opening/closing: library path.
  if (lv > 4 || o + 1 + lv > b.length) return undefined;
  const at = o + 1;
  cursor = at + lv;
  switch (type) {
    case Tag.NULL:
      return lv === 0 ? { type, value: null } : undefined;
    case Tag.BOOLEAN:
      // The value is the length field; no content octets.
      cursor = at;
      return { type, value: lv > 0 };
    case Tag.UNSIGNED:
    case Tag.ENUMERATED:
      return { type, value: lv === 0 ? 0 : b.readUIntBE(at, lv) };
    case Tag.SIGNED:
      return lv === 0 ? undefined : { type, value: b.readIntBE(at, lv) };
    case Tag.REAL:
      return lv === 4 ? { type, value: b.readFloatBE(at) } : undefined;
    case Tag.BIT_STRING: {
      if (lv === 0) return undefined;
      const bytes = new Array<number>(lv - 1);
      for (let i = 1; i < lv; i++) bytes[i - 1] = REVERSED[b[at + i] as number] as number;
      return { type, value: { value: bytes, bitsUsed: (lv - 1) * 8 - ((b[at] as number) & 7) } };
    }
    default:
      return undefined;
  }
}

/** An application-tagged enumerated at `o` as value × 8 + length, or −1 if it is not one. */
function enumAt(b: Buffer, o: number): number {
  if (o >= b.length) return -1;
  const t = b[o] as number;
  const n = t - 0x90;
  if (n < 1 || n > 4 || o + 1 + n > b.length) return -1;
  return b.readUIntBE(o + 1, n) * 8 + n;
}

/** The RPM ack through the library's decoder: every form the standard allows. */
export function decodeRpmAckLibrary(body: Buffer): RpmResult[] {
  const r = safeDecode(() => ReadPropertyMultiple.decodeAcknowledge(body, 0, body.length));
  if (r.len > body.length) throw new DecodeError("truncated RPM ack");
  return (
    r.values as { objectId: ObjectRef; values: { id: number; index: number; value: DecodedValue[] }[] }[]
  ).map((o) => ({
    object: { type: o.objectId.type, instance: o.objectId.instance },
    properties: o.values.map((p) => {
      const first = p.value?.[0];
      if (first && first.type === ERROR_TAG) {
        const e = first.value as { errorClass: number; errorCode: number };
        return {
          id: p.id,
          index: p.index,
          values: [],
          error: { errorClass: e.errorClass, errorCode: e.errorCode },
        };
      }
      return {
        id: p.id,
        index: p.index,
        values: (p.value ?? []).map((v) => ({ type: v.type, value: v.value })),
      };
    }),
  }));
}

export interface CovData {
  processId: number;
  device: number;
  object: ObjectRef;
  timeRemaining: number;
  values: { id: number; index: number; values: DecodedValue[] }[];
}

export function decodeCovNotification(body: Buffer): CovData {
  const r = safeDecode(() => CovNotify.decode(body, 0, body.length));
  if (r.len > body.length) throw new DecodeError("truncated COV notification");
  return {
    processId: Number(r.subscriberProcessId),
    device: Number(r.initiatingDeviceId?.instance),
    object: { type: Number(r.monitoredObjectId?.type), instance: Number(r.monitoredObjectId?.instance) },
    timeRemaining: Number(r.timeRemaining) || 0,
    values: (r.values as { property: { id: number; index: number }; value: DecodedValue[] }[]).map((v) => ({
      id: v.property.id,
      index: v.property.index,
      values: (v.value ?? []).map((x) => ({ type: x.type, value: x.value })),
    })),
  };
}
