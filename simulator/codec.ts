// BACnet wire encoding for the simulator, written from ASHRAE 135 (Annex J for BVLL, clause 6 for the
// NPDU, clause 20 for APDU and tag encoding) rather than taken from @bacnet-js/client: the gateway is
// built on that library, and a bug shared by both sides would cancel out in our tests. Everything
// here is synchronous and allocation-light because the simulator answers tens of thousands of
// requests per second. Decoding never trusts a length: every read is bounds-checked and throws
// DecodeError, which the transport counts and drops.

export class DecodeError extends Error {
  override readonly name = "DecodeError";
}

// ---------------------------------------------------------------------------------------------
// Enumerations (clause 21) — only the values the simulator uses.

export const PduType = {
  confirmedRequest: 0,
  unconfirmedRequest: 1,
  simpleAck: 2,
  complexAck: 3,
  segmentAck: 4,
  error: 5,
  reject: 6,
  abort: 7,
} as const;

export const Confirmed = {
  confirmedCovNotification: 1,
  subscribeCov: 5,
  readProperty: 12,
  readPropertyMultiple: 14,
  writeProperty: 15,
} as const;

export const Unconfirmed = {
  iAm: 0,
  iHave: 1,
  unconfirmedCovNotification: 2,
  whoHas: 7,
  whoIs: 8,
} as const;

export const ErrorClass = {
  device: 0,
  object: 1,
  property: 2,
  resources: 3,
  security: 4,
  services: 5,
} as const;

export const ErrorCode = {
  other: 0,
  invalidDataType: 9,
  missingRequiredParameter: 16,
  readAccessDenied: 27,
  serviceRequestDenied: 29,
  unknownObject: 31,
  unknownProperty: 32,
  valueOutOfRange: 37,
  writeAccessDenied: 40,
  invalidArrayIndex: 42,
  covSubscriptionFailed: 43,
  optionalFunctionalityNotSupported: 45,
  propertyIsNotAnArray: 50,
} as const;

export const RejectReason = {
  other: 0,
  bufferOverflow: 1,
  inconsistentParameters: 2,
  invalidParameterDataType: 3,
  invalidTag: 4,
  missingRequiredParameter: 5,
  parameterOutOfRange: 6,
  tooManyArguments: 7,
  undefinedEnumeration: 8,
  unrecognizedService: 9,
} as const;

export const AbortReason = {
  other: 0,
  bufferOverflow: 1,
  invalidApduInThisState: 2,
  segmentationNotSupported: 4,
  apduTooLong: 11,
} as const;

export const Segmentation = { both: 0, transmit: 1, receive: 2, none: 3 } as const;

/** BVLL functions (Annex J.2). */
export const Bvlc = {
  result: 0x00,
  writeBdt: 0x01,
  readBdt: 0x02,
  readBdtAck: 0x03,
  forwardedNpdu: 0x04,
  registerForeignDevice: 0x05,
  readFdt: 0x06,
  readFdtAck: 0x07,
  deleteFdtEntry: 0x08,
  distributeBroadcast: 0x09,
  originalUnicast: 0x0a,
  originalBroadcast: 0x0b,
  secureBvll: 0x0c,
} as const;

/** Network layer message types (clause 6.2.4). */
export const NetMsg = {
  whoIsRouterToNetwork: 0x00,
  iAmRouterToNetwork: 0x01,
  rejectMessageToNetwork: 0x03,
} as const;

/** Max-APDU-length-accepted encoding in a confirmed request header (clause 20.1.2.5). */
const MAX_APDU_CODES = [50, 128, 206, 480, 1024, 1476];
export function decodeMaxApdu(code: number): number {
  return MAX_APDU_CODES[code] ?? 1476;
}
/** Max-segments-accepted (clause 20.1.2.4): 0 = unspecified, 7 = more than 64. */
export function decodeMaxSegments(code: number): number {
  if (code === 0 || code === 7) return Number.POSITIVE_INFINITY;
  return 1 << code;
}

// ---------------------------------------------------------------------------------------------
// Writer: a growable byte buffer reused across requests.

export class Writer {
  buf: Buffer;
  pos = 0;

  constructor(size = 2048) {
    this.buf = Buffer.allocUnsafe(size);
  }

  reset(): this {
    this.pos = 0;
    return this;
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  u8(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v & 0xff;
  }

  u16(v: number): void {
    this.ensure(2);
    this.buf.writeUInt16BE(v & 0xffff, this.pos);
    this.pos += 2;
  }

  u32(v: number): void {
    this.ensure(4);
    this.buf.writeUInt32BE(v >>> 0, this.pos);
    this.pos += 4;
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  f32(v: number): void {
    this.ensure(4);
    this.buf.writeFloatBE(v, this.pos);
    this.pos += 4;
  }

  f64(v: number): void {
    this.ensure(8);
    this.buf.writeDoubleBE(v, this.pos);
    this.pos += 8;
  }

  /** Copy of the written bytes (the backing buffer is reused). */
  take(from = 0): Buffer {
    return Buffer.from(this.buf.subarray(from, this.pos));
  }

  // --- tags (clause 20.2.1) ---

  tag(tagNumber: number, context: boolean, length: number): void {
    const cls = context ? 0x08 : 0;
    const lvt = length <= 4 ? length : 5;
    if (tagNumber <= 14) this.u8((tagNumber << 4) | cls | lvt);
    else {
      this.u8(0xf0 | cls | lvt);
      this.u8(tagNumber);
    }
    if (length > 4) {
      if (length <= 253) this.u8(length);
      else if (length <= 65535) {
        this.u8(254);
        this.u16(length);
      } else {
        this.u8(255);
        this.u32(length);
      }
    }
  }

  open(tagNumber: number): void {
    if (tagNumber <= 14) this.u8((tagNumber << 4) | 0x0e);
    else {
      this.u8(0xfe);
      this.u8(tagNumber);
    }
  }

  close(tagNumber: number): void {
    if (tagNumber <= 14) this.u8((tagNumber << 4) | 0x0f);
    else {
      this.u8(0xff);
      this.u8(tagNumber);
    }
  }

  private uintBody(v: number): void {
    if (v < 0x100) this.u8(v);
    else if (v < 0x10000) this.u16(v);
    else if (v < 0x1000000) {
      this.u8(v >>> 16);
      this.u16(v & 0xffff);
    } else this.u32(v);
  }

  private uintLen(v: number): number {
    return v < 0x100 ? 1 : v < 0x10000 ? 2 : v < 0x1000000 ? 3 : 4;
  }

  // --- application-tagged primitives (clause 20.2.2–20.2.14) ---

  appNull(): void {
    this.u8(0x00);
  }

  appBoolean(v: boolean): void {
    this.u8(0x10 | (v ? 1 : 0));
  }

  appUnsigned(v: number): void {
    this.tag(2, false, this.uintLen(v));
    this.uintBody(v);
  }

  appSigned(v: number): void {
    const len = signedLen(v);
    this.tag(3, false, len);
    this.signedBody(v, len);
  }

  private signedBody(v: number, len: number): void {
    for (let i = len - 1; i >= 0; i--) this.u8(Math.floor(v / 2 ** (8 * i)) & 0xff);
  }

  appReal(v: number): void {
    this.u8(0x44);
    this.f32(v);
  }

  appCharString(s: string): void {
    const body = Buffer.from(s, "utf8");
    this.tag(7, false, body.length + 1);
    this.u8(0); // character set 0: ISO 10646 (UTF-8)
    this.bytes(body);
  }

  /** Bit string from a list of booleans, bit 0 first (clause 20.2.10). */
  appBitString(bits: readonly boolean[]): void {
    const nbytes = Math.ceil(bits.length / 8);
    this.tag(8, false, nbytes + 1);
    this.u8(nbytes * 8 - bits.length);
    for (let b = 0; b < nbytes; b++) {
      let byte = 0;
      for (let i = 0; i < 8; i++) if (bits[b * 8 + i]) byte |= 0x80 >> i;
      this.u8(byte);
    }
  }

  appEnumerated(v: number): void {
    this.tag(9, false, this.uintLen(v));
    this.uintBody(v);
  }

  appObjectId(type: number, instance: number): void {
    this.u8(0xc4);
    this.u32(((type & 0x3ff) << 22) | (instance & 0x3fffff));
  }

  // --- context-tagged primitives ---

  ctxUnsigned(tagNumber: number, v: number): void {
    this.tag(tagNumber, true, this.uintLen(v));
    this.uintBody(v);
  }

  ctxEnumerated(tagNumber: number, v: number): void {
    this.ctxUnsigned(tagNumber, v);
  }

  ctxObjectId(tagNumber: number, type: number, instance: number): void {
    this.tag(tagNumber, true, 4);
    this.u32(((type & 0x3ff) << 22) | (instance & 0x3fffff));
  }

  ctxBoolean(tagNumber: number, v: boolean): void {
    this.tag(tagNumber, true, 1);
    this.u8(v ? 1 : 0);
  }
}

function signedLen(v: number): number {
  if (v >= -128 && v <= 127) return 1;
  if (v >= -32768 && v <= 32767) return 2;
  if (v >= -8388608 && v <= 8388607) return 3;
  return 4;
}

// ---------------------------------------------------------------------------------------------
// Reader: bounds-checked decoding of tags and primitives.

export interface Tag {
  number: number;
  context: boolean;
  /** Content length; for application booleans the value itself; -1 opening, -2 closing. */
  length: number;
  opening: boolean;
  closing: boolean;
}

export class Reader {
  buf: Buffer;
  pos: number;
  end: number;

  constructor(buf: Buffer, pos = 0, end = buf.length) {
    this.buf = buf;
    this.pos = pos;
    this.end = end;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  need(n: number): void {
    if (n < 0 || this.pos + n > this.end) throw new DecodeError("truncated");
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++] as number;
  }

  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  bytes(n: number): Buffer {
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  /** Reads a tag header without consuming it. */
  peekTag(): Tag | undefined {
    if (this.pos >= this.end) return undefined;
    const save = this.pos;
    try {
      return this.tag();
    } finally {
      this.pos = save;
    }
  }

  tag(): Tag {
    const first = this.u8();
    let number = first >> 4;
    const context = (first & 0x08) !== 0;
    if (number === 0x0f) number = this.u8();
    const lvt = first & 0x07;
    if (context && lvt === 6) return { number, context, length: -1, opening: true, closing: false };
    if (context && lvt === 7) return { number, context, length: -2, opening: false, closing: true };
    let length = lvt;
    if (lvt === 5) {
      length = this.u8();
      if (length === 254) length = this.u16();
      else if (length === 255) length = this.u32();
    }
    // An application boolean carries its value in the length field and has no content.
    if (!context && number === 1) return { number, context, length, opening: false, closing: false };
    this.need(length);
    return { number, context, length, opening: false, closing: false };
  }

  uint(len: number): number {
    if (len < 1 || len > 6) throw new DecodeError("bad unsigned length");
    this.need(len);
    let v = 0;
    for (let i = 0; i < len; i++) v = v * 256 + (this.buf[this.pos++] as number);
    return v;
  }

  sint(len: number): number {
    if (len < 1 || len > 6) throw new DecodeError("bad signed length");
    this.need(len);
    const v = this.buf.readIntBE(this.pos, len);
    this.pos += len;
    return v;
  }

  /** Expects a context tag `n` holding an unsigned/enumerated value. */
  ctxUnsigned(n: number): number {
    const t = this.tag();
    if (!t.context || t.number !== n || t.length < 0) throw new DecodeError(`expected context tag ${n}`);
    return this.uint(t.length);
  }

  ctxObjectId(n: number): { type: number; instance: number } {
    const t = this.tag();
    if (!t.context || t.number !== n || t.length !== 4) throw new DecodeError(`expected object id [${n}]`);
    const v = this.u32();
    return { type: v >>> 22, instance: v & 0x3fffff };
  }

  /** True when the next tag is context tag n (not opening/closing). */
  nextIsCtx(n: number): boolean {
    const t = this.peekTag();
    return !!t && t.context && t.number === n && !t.opening && !t.closing;
  }

  nextIsOpening(n: number): boolean {
    const t = this.peekTag();
    return !!t && t.context && t.number === n && t.opening;
  }

  nextIsClosing(n: number): boolean {
    const t = this.peekTag();
    return !!t && t.context && t.number === n && t.closing;
  }

  expectOpening(n: number): void {
    const t = this.tag();
    if (!t.opening || t.number !== n) throw new DecodeError(`expected opening tag ${n}`);
  }

  expectClosing(n: number): void {
    const t = this.tag();
    if (!t.closing || t.number !== n) throw new DecodeError(`expected closing tag ${n}`);
  }

  /** Skips a complete tagged item (primitive, or constructed up to its matching closing tag). */
  skipItem(): void {
    const t = this.tag();
    if (t.closing) throw new DecodeError("unexpected closing tag");
    if (t.opening) {
      for (;;) {
        const inner = this.peekTag();
        if (!inner) throw new DecodeError("unterminated constructed value");
        if (inner.closing && inner.number === t.number) {
          this.tag();
          return;
        }
        this.skipItem();
      }
    }
    if (!(!t.context && t.number === 1)) this.pos += t.length;
  }
}

/** An application-tagged value as decoded from a WriteProperty or a notification. */
export type AppValue =
  | { tag: "null" }
  | { tag: "boolean"; value: boolean }
  | { tag: "unsigned"; value: number }
  | { tag: "signed"; value: number }
  | { tag: "real"; value: number }
  | { tag: "double"; value: number }
  | { tag: "octets"; value: Buffer }
  | { tag: "string"; value: string }
  | { tag: "bits"; value: boolean[] }
  | { tag: "enumerated"; value: number }
  | { tag: "date"; value: Buffer }
  | { tag: "time"; value: Buffer }
  | { tag: "objectId"; type: number; instance: number };

export function readAppValue(r: Reader): AppValue {
  const t = r.tag();
  if (t.context || t.opening || t.closing) throw new DecodeError("expected application tag");
  switch (t.number) {
    case 0:
      if (t.length !== 0) throw new DecodeError("bad null");
      return { tag: "null" };
    case 1:
      if (t.length > 1) throw new DecodeError("bad boolean");
      return { tag: "boolean", value: t.length === 1 };
    case 2:
      return { tag: "unsigned", value: r.uint(t.length) };
    case 3:
      return { tag: "signed", value: r.sint(t.length) };
    case 4: {
      if (t.length !== 4) throw new DecodeError("bad real");
      const v = r.buf.readFloatBE(r.pos);
      r.pos += 4;
      return { tag: "real", value: v };
    }
    case 5: {
      if (t.length !== 8) throw new DecodeError("bad double");
      const v = r.buf.readDoubleBE(r.pos);
      r.pos += 8;
      return { tag: "double", value: v };
    }
    case 6:
      return { tag: "octets", value: Buffer.from(r.bytes(t.length)) };
    case 7: {
      if (t.length < 1) throw new DecodeError("bad character string");
      const charset = r.u8();
      const body = r.bytes(t.length - 1);
      // 0 = UTF-8; 4 = UCS-2 (big endian); 5 = ISO 8859-1. Others are not decoded.
      if (charset === 0) return { tag: "string", value: body.toString("utf8") };
      if (charset === 5) return { tag: "string", value: body.toString("latin1") };
      if (charset === 4) {
        const swapped = Buffer.from(body);
        if (swapped.length % 2) throw new DecodeError("odd UCS-2 length");
        swapped.swap16();
        return { tag: "string", value: swapped.toString("utf16le") };
      }
      throw new DecodeError("unsupported character set");
    }
    case 8: {
      if (t.length < 1) throw new DecodeError("bad bit string");
      const unused = r.u8();
      if (unused > 7) throw new DecodeError("bad bit string");
      const data = r.bytes(t.length - 1);
      const n = data.length * 8 - unused;
      if (n < 0) throw new DecodeError("bad bit string");
      const bits: boolean[] = [];
      for (let i = 0; i < n; i++) bits.push(((data[i >> 3] as number) & (0x80 >> (i & 7))) !== 0);
      return { tag: "bits", value: bits };
    }
    case 9:
      return { tag: "enumerated", value: r.uint(t.length) };
    case 10:
      if (t.length !== 4) throw new DecodeError("bad date");
      return { tag: "date", value: Buffer.from(r.bytes(4)) };
    case 11:
      if (t.length !== 4) throw new DecodeError("bad time");
      return { tag: "time", value: Buffer.from(r.bytes(4)) };
    case 12: {
      if (t.length !== 4) throw new DecodeError("bad object identifier");
      const v = r.u32();
      return { tag: "objectId", type: v >>> 22, instance: v & 0x3fffff };
    }
    default:
      throw new DecodeError("reserved application tag");
  }
}

// ---------------------------------------------------------------------------------------------
// BVLL (Annex J) and NPDU (clause 6.2).

export interface Npdu {
  /** Network layer message type, or undefined for an APDU. */
  messageType: number | undefined;
  expectingReply: boolean;
  priority: number;
  dnet: number | undefined;
  dadr: Buffer | undefined;
  snet: number | undefined;
  sadr: Buffer | undefined;
  hopCount: number;
  /** Offset of the APDU (or of the network message's payload) in the datagram. */
  offset: number;
}

export function decodeNpdu(buf: Buffer, start: number, end: number): Npdu {
  const r = new Reader(buf, start, end);
  if (r.u8() !== 0x01) throw new DecodeError("NPDU version is not 1");
  const control = r.u8();
  // Bits 6 and 4 are reserved and shall be zero (clause 6.2.2).
  if (control & 0x50) throw new DecodeError("reserved NPCI bits set");
  let dnet: number | undefined;
  let dadr: Buffer | undefined;
  let snet: number | undefined;
  let sadr: Buffer | undefined;
  let hopCount = 255;
  if (control & 0x20) {
    dnet = r.u16();
    const dlen = r.u8();
    dadr = Buffer.from(r.bytes(dlen));
  }
  if (control & 0x08) {
    snet = r.u16();
    const slen = r.u8();
    // SNET 0xFFFF and SLEN 0 are invalid for a source specifier (clause 6.2.2).
    if (snet === 0xffff || slen === 0) throw new DecodeError("invalid source specifier");
    sadr = Buffer.from(r.bytes(slen));
  }
  if (control & 0x20) hopCount = r.u8();
  let messageType: number | undefined;
  if (control & 0x80) {
    messageType = r.u8();
    if (messageType >= 0x80) r.u16(); // vendor id of a proprietary message
  }
  return {
    messageType,
    expectingReply: (control & 0x04) !== 0,
    priority: control & 0x03,
    dnet,
    dadr,
    snet,
    sadr,
    hopCount,
    offset: r.pos,
  };
}

/** Where a reply goes at the network layer: an optional remote network/MAC behind a router. */
export interface NetAddress {
  net: number;
  adr: Buffer;
}

/**
 * Writes BVLL header + NPCI for an APDU or network message. The BVLL length is patched by
 * `finishBvll` once the body is written.
 */
export function writeBvllNpdu(
  w: Writer,
  opts: {
    bvlc: number;
    dest?: NetAddress | undefined;
    /** Global or remote broadcast: DNET with DLEN 0. */
    destBroadcastNet?: number | undefined;
    source?: NetAddress | undefined;
    expectingReply?: boolean;
    networkMessage?: number;
  },
): void {
  w.u8(0x81);
  w.u8(opts.bvlc);
  w.u16(0); // length, patched later
  w.u8(0x01);
  let control = 0;
  if (opts.networkMessage !== undefined) control |= 0x80;
  const hasDest = opts.dest !== undefined || opts.destBroadcastNet !== undefined;
  if (hasDest) control |= 0x20;
  if (opts.source) control |= 0x08;
  if (opts.expectingReply) control |= 0x04;
  w.u8(control);
  if (opts.dest) {
    w.u16(opts.dest.net);
    w.u8(opts.dest.adr.length);
    w.bytes(opts.dest.adr);
  } else if (opts.destBroadcastNet !== undefined) {
    w.u16(opts.destBroadcastNet);
    w.u8(0);
  }
  if (opts.source) {
    w.u16(opts.source.net);
    w.u8(opts.source.adr.length);
    w.bytes(opts.source.adr);
  }
  if (hasDest) w.u8(255);
  if (opts.networkMessage !== undefined) w.u8(opts.networkMessage);
}

export function finishBvll(w: Writer, start = 0): void {
  w.buf.writeUInt16BE(w.pos - start, start + 2);
}
