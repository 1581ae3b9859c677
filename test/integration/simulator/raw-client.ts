// An independent BACnet/IP test client for the simulator suites: datagrams are encoded and decoded
// here by hand from ASHRAE 135 (Annex J BVLL, clause 6 NPDU, clause 20 APDU and tags), sharing no
// code with simulator/codec.ts or @bacnet-js/client, so an encoding bug cannot cancel out.
import dgram from "node:dgram";

// ---------------------------------------------------------------------------------------------
// Encoding.

export function uintBytes(v: number): number[] {
  if (v < 0x100) return [v];
  if (v < 0x10000) return [v >> 8, v & 0xff];
  if (v < 0x1000000) return [v >> 16, (v >> 8) & 0xff, v & 0xff];
  return [(v >>> 24) & 0xff, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff];
}

function tagHeader(tag: number, context: boolean, len: number): number[] {
  const out: number[] = [];
  const cls = context ? 0x08 : 0;
  out.push((tag <= 14 ? tag << 4 : 0xf0) | cls | (len <= 4 ? len : 5));
  if (tag > 14) out.push(tag);
  if (len > 4) {
    if (len <= 253) out.push(len);
    else out.push(254, len >> 8, len & 0xff);
  }
  return out;
}

export const enc = {
  ctxUint: (tag: number, v: number) => {
    const b = uintBytes(v);
    return [...tagHeader(tag, true, b.length), ...b];
  },
  ctxObjectId: (tag: number, type: number, instance: number) => [
    ...tagHeader(tag, true, 4),
    ...uintBytes4(((type << 22) | instance) >>> 0),
  ],
  ctxBool: (tag: number, v: boolean) => [...tagHeader(tag, true, 1), v ? 1 : 0],
  open: (tag: number) => [(tag << 4) | 0x0e],
  close: (tag: number) => [(tag << 4) | 0x0f],
  appNull: () => [0x00],
  appBool: (v: boolean) => [0x10 | (v ? 1 : 0)],
  appUint: (v: number) => {
    const b = uintBytes(v);
    return [...tagHeader(2, false, b.length), ...b];
  },
  appSigned: (v: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32BE(v);
    return [...tagHeader(3, false, 4), ...b];
  },
  appReal: (v: number) => {
    const b = Buffer.alloc(4);
    b.writeFloatBE(v);
    return [0x44, ...b];
  },
  appEnum: (v: number) => {
    const b = uintBytes(v);
    return [...tagHeader(9, false, b.length), ...b];
  },
  appString: (s: string) => {
    const b = Buffer.from(s, "utf8");
    return [...tagHeader(7, false, b.length + 1), 0, ...b];
  },
};

function uintBytes4(v: number): number[] {
  return [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}

export interface NpduOptions {
  dnet?: number;
  dadr?: number[];
  snet?: number;
  sadr?: number[];
  expectingReply?: boolean;
  networkMessage?: number;
}

export function npdu(o: NpduOptions = {}): number[] {
  let control = 0;
  if (o.networkMessage !== undefined) control |= 0x80;
  if (o.dnet !== undefined) control |= 0x20;
  if (o.snet !== undefined) control |= 0x08;
  if (o.expectingReply) control |= 0x04;
  const out = [0x01, control];
  if (o.dnet !== undefined) out.push(o.dnet >> 8, o.dnet & 0xff, (o.dadr ?? []).length, ...(o.dadr ?? []));
  if (o.snet !== undefined) out.push(o.snet >> 8, o.snet & 0xff, (o.sadr ?? []).length, ...(o.sadr ?? []));
  if (o.dnet !== undefined) out.push(255);
  if (o.networkMessage !== undefined) out.push(o.networkMessage);
  return out;
}

export function bvll(fn: number, body: number[]): Buffer {
  const len = body.length + 4;
  return Buffer.from([0x81, fn, len >> 8, len & 0xff, ...body]);
}

export interface ConfirmedOptions {
  invokeId: number;
  service: number;
  /** Max-APDU code (0=50, 1=128, 2=206, 3=480, 4=1024, 5=1476). */
  maxApduCode?: number;
  /** Max-segments code (0 unspecified, 1=2 ... 6=64, 7=more). */
  maxSegmentsCode?: number;
  segmentedAccepted?: boolean;
}

export function confirmed(o: ConfirmedOptions, payload: number[]): number[] {
  return [
    o.segmentedAccepted === false ? 0x00 : 0x02,
    ((o.maxSegmentsCode ?? 7) << 4) | (o.maxApduCode ?? 5),
    o.invokeId,
    o.service,
    ...payload,
  ];
}

export const rpPayload = (type: number, instance: number, prop: number, index?: number) => [
  ...enc.ctxObjectId(0, type, instance),
  ...enc.ctxUint(1, prop),
  ...(index === undefined ? [] : enc.ctxUint(2, index)),
];

export function whoIs(low?: number, high?: number): number[] {
  const body = [0x10, 0x08];
  if (low !== undefined && high !== undefined) body.push(...enc.ctxUint(0, low), ...enc.ctxUint(1, high));
  return body;
}

// ---------------------------------------------------------------------------------------------
// Decoding.

export interface Frame {
  bvlc: number;
  npdu: {
    control: number;
    dnet?: number;
    dadr?: number[];
    snet?: number;
    sadr?: number[];
    messageType?: number;
  };
  /** APDU (or network message payload) bytes. */
  body: Buffer;
  from: { address: string; port: number };
}

export function parseFrame(msg: Buffer, from: { address: string; port: number }): Frame {
  if (msg[0] !== 0x81) throw new Error("not BVLL");
  if (msg.readUInt16BE(2) !== msg.length) throw new Error("BVLL length mismatch");
  let p = 4;
  const fn = msg[1] as number;
  if (fn === 0x04) p = 10;
  if (fn === 0x00) return { bvlc: fn, npdu: { control: 0 }, body: msg.subarray(4), from };
  if (msg[p] !== 1) throw new Error("NPDU version");
  const control = msg[p + 1] as number;
  p += 2;
  const n: Frame["npdu"] = { control };
  if (control & 0x20) {
    n.dnet = msg.readUInt16BE(p);
    const len = msg[p + 2] as number;
    n.dadr = [...msg.subarray(p + 3, p + 3 + len)];
    p += 3 + len;
  }
  if (control & 0x08) {
    n.snet = msg.readUInt16BE(p);
    const len = msg[p + 2] as number;
    n.sadr = [...msg.subarray(p + 3, p + 3 + len)];
    p += 3 + len;
  }
  if (control & 0x20) p += 1; // hop count
  if (control & 0x80) n.messageType = msg[p++] as number;
  return { bvlc: fn, npdu: n, body: msg.subarray(p), from };
}

/** A decoded tagged item: primitive (with raw content) or constructed (opening..closing). */
export type Item =
  | { kind: "app"; tag: number; data: Buffer; lvt: number }
  | { kind: "ctx"; tag: number; data: Buffer }
  | { kind: "open"; tag: number; items: Item[] };

export function decodeItems(buf: Buffer, start = 0, end = buf.length): Item[] {
  const stack: Item[][] = [[]];
  const tags: number[] = [];
  let p = start;
  while (p < end) {
    const b = buf[p++] as number;
    let tag = b >> 4;
    if (tag === 15) tag = buf[p++] as number;
    const context = (b & 0x08) !== 0;
    const lvt = b & 0x07;
    const top = stack[stack.length - 1] as Item[];
    if (context && lvt === 6) {
      const item: Item = { kind: "open", tag, items: [] };
      top.push(item);
      stack.push(item.items);
      tags.push(tag);
      continue;
    }
    if (context && lvt === 7) {
      if (tags.pop() !== tag) throw new Error("mismatched closing tag");
      stack.pop();
      continue;
    }
    let len = lvt;
    if (lvt === 5) {
      len = buf[p++] as number;
      if (len === 254) {
        len = buf.readUInt16BE(p);
        p += 2;
      }
    }
    if (!context && tag === 1) {
      top.push({ kind: "app", tag, data: Buffer.alloc(0), lvt });
      continue;
    }
    if (p + len > end) throw new Error("truncated item");
    const data = buf.subarray(p, p + len);
    p += len;
    top.push(context ? { kind: "ctx", tag, data } : { kind: "app", tag, data, lvt });
  }
  if (tags.length) throw new Error("unterminated constructed item");
  return stack[0] as Item[];
}

export function uintOf(data: Buffer): number {
  let v = 0;
  for (const b of data) v = v * 256 + b;
  return v;
}

/** An application value as a plain JS value (object ids as {type, instance}, bit strings as booleans). */
export function appValue(item: Item): unknown {
  if (item.kind !== "app") throw new Error(`expected application tag, got ${item.kind} ${item.tag}`);
  const d = item.data;
  switch (item.tag) {
    case 0:
      return null;
    case 1:
      return item.lvt === 1;
    case 2:
    case 9:
      return uintOf(d);
    case 3:
      return d.readIntBE(0, d.length);
    case 4:
      return d.readFloatBE(0);
    case 7:
      if (d[0] !== 0) throw new Error("unexpected character set");
      return d.subarray(1).toString("utf8");
    case 8: {
      const unused = d[0] as number;
      const bits: boolean[] = [];
      for (let i = 0; i < (d.length - 1) * 8 - unused; i++)
        bits.push(((d[1 + (i >> 3)] as number) & (0x80 >> (i & 7))) !== 0);
      return bits;
    }
    case 12: {
      const v = d.readUInt32BE(0);
      return { type: v >>> 22, instance: v & 0x3fffff };
    }
    default:
      throw new Error(`app tag ${item.tag} not decoded by the test client`);
  }
}

export function objectIdOf(data: Buffer): { type: number; instance: number } {
  const v = data.readUInt32BE(0);
  return { type: v >>> 22, instance: v & 0x3fffff };
}

// ---------------------------------------------------------------------------------------------
// APDU-level results.

export type Reply =
  | { type: "simple"; invokeId: number; service: number; frame: Frame }
  | { type: "complex"; invokeId: number; service: number; data: Buffer; segments: number; frame: Frame }
  | { type: "error"; invokeId: number; service: number; errorClass: number; errorCode: number; frame: Frame }
  | { type: "reject"; invokeId: number; reason: number; frame: Frame }
  | { type: "abort"; invokeId: number; reason: number; server: boolean; frame: Frame };

export interface Target {
  address: string;
  port: number;
  dnet?: number;
  dadr?: number[];
}

export interface SegmentPolicy {
  /** Actual window size we put in our Segment-ACKs (default: the server's proposed window). */
  window?: number;
  /** Return true to pretend segment `seq` (the n-th received, 0-based) was lost. */
  drop?: (seq: number, n: number) => boolean;
  /** Every Segment-ACK we send, for assertions. */
  acks?: { seq: number; window: number; nak: boolean }[];
  /** Every segment header seen. */
  seen?: { seq: number; more: boolean; proposedWindow: number; length: number }[];
}

const WAIT_MS = 10_000;

export class RawClient {
  readonly socket: dgram.Socket;
  readonly inbox: Frame[] = [];
  private waiters: { match: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];

  private constructor(socket: dgram.Socket) {
    this.socket = socket;
  }

  static async open(address = "127.0.0.1"): Promise<RawClient> {
    const socket = dgram.createSocket({ type: "udp4", reuseAddr: false });
    const client = new RawClient(socket);
    socket.on("error", () => {});
    socket.on("message", (msg, rinfo) => {
      let frame: Frame;
      try {
        frame = parseFrame(msg, { address: rinfo.address, port: rinfo.port });
      } catch {
        return;
      }
      const i = client.waiters.findIndex((w) => w.match(frame));
      if (i >= 0) {
        const [w] = client.waiters.splice(i, 1);
        w?.resolve(frame);
      } else client.inbox.push(frame);
    });
    await new Promise<void>((resolve) => socket.bind(0, address, () => resolve()));
    return client;
  }

  get port(): number {
    return this.socket.address().port;
  }

  send(target: { address: string; port: number }, datagram: Buffer): Promise<void> {
    return new Promise((resolve, reject) =>
      this.socket.send(datagram, target.port, target.address, (err) => (err ? reject(err) : resolve())),
    );
  }

  /** Next frame matching `match` (already queued or yet to come), or undefined after `ms`. */
  next(match: (f: Frame) => boolean, ms = WAIT_MS): Promise<Frame | undefined> {
    const i = this.inbox.findIndex(match);
    if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0]);
    return new Promise((resolve) => {
      const waiter = {
        match,
        resolve: (f: Frame | undefined) => {
          clearTimeout(timer);
          resolve(f);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(undefined);
      }, ms);
      this.waiters.push(waiter);
    });
  }

  /** Frames collected over `ms` that match. */
  async collect(match: (f: Frame) => boolean, ms: number): Promise<Frame[]> {
    const out: Frame[] = [];
    const deadline = Date.now() + ms;
    for (let n = 0; n < 100_000; n++) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      const f = await this.next(match, left);
      if (!f) break;
      out.push(f);
    }
    return out;
  }

  /** Sends a confirmed request and waits for its reply, reassembling a segmented ComplexACK. */
  async request(
    target: Target,
    opts: ConfirmedOptions,
    payload: number[],
    policy: SegmentPolicy = {},
  ): Promise<Reply> {
    const datagram = bvll(0x0a, [
      ...npdu({ dnet: target.dnet, dadr: target.dadr, expectingReply: true }),
      ...confirmed(opts, payload),
    ]);
    const isReply = (f: Frame) =>
      f.body.length >= 2 &&
      (f.body[0] as number) >> 4 >= 2 &&
      f.body[1] === opts.invokeId &&
      f.from.port === target.port &&
      f.from.address === target.address;
    await this.send(target, datagram);
    const first = await this.next(isReply);
    if (!first) throw new Error(`no reply to invoke id ${opts.invokeId}`);
    const b = first.body;
    const type = (b[0] as number) >> 4;
    switch (type) {
      case 2:
        return { type: "simple", invokeId: b[1] as number, service: b[2] as number, frame: first };
      case 5: {
        const items = decodeItems(b, 3);
        return {
          type: "error",
          invokeId: b[1] as number,
          service: b[2] as number,
          errorClass: uintOf((items[0] as { data: Buffer }).data),
          errorCode: uintOf((items[1] as { data: Buffer }).data),
          frame: first,
        };
      }
      case 6:
        return { type: "reject", invokeId: b[1] as number, reason: b[2] as number, frame: first };
      case 7:
        return {
          type: "abort",
          invokeId: b[1] as number,
          reason: b[2] as number,
          server: ((b[0] as number) & 1) === 1,
          frame: first,
        };
      case 3:
        break;
      default:
        throw new Error(`unexpected PDU type ${type}`);
    }
    if (!((b[0] as number) & 0x08)) {
      return {
        type: "complex",
        invokeId: b[1] as number,
        service: b[2] as number,
        data: Buffer.from(b.subarray(3)),
        segments: 1,
        frame: first,
      };
    }
    return this.reassemble(target, opts.invokeId, first, isReply, policy);
  }

  private async reassemble(
    target: Target,
    invokeId: number,
    first: Frame,
    isReply: (f: Frame) => boolean,
    policy: SegmentPolicy,
  ): Promise<Reply> {
    const parts: Buffer[] = [];
    let expected = 0;
    let received = 0;
    let sinceAck = 0;
    let service = 0;
    let frame: Frame | undefined = first;
    for (let guard = 0; guard < 10_000 && frame; guard++) {
      const b = frame.body;
      const seq = b[2] as number;
      const proposed = b[3] as number;
      const more = ((b[0] as number) & 0x04) !== 0;
      const window = policy.window ?? proposed;
      policy.seen?.push({ seq, more, proposedWindow: proposed, length: b.length });
      const n = received++;
      if (policy.drop?.(seq, n)) {
        frame = await this.next(isReply);
        continue;
      }
      const ack = (s: number, nak: boolean) => {
        policy.acks?.push({ seq: s, window, nak });
        const body = [0x40 | (nak ? 0x02 : 0), invokeId, s, window];
        return this.send(target, bvll(0x0a, [...npdu({ dnet: target.dnet, dadr: target.dadr }), ...body]));
      };
      if (seq !== (expected & 0xff)) {
        // Out of order: negative ACK naming the last segment received in order (clause 5.4.4).
        await ack((expected - 1) & 0xff, true);
        sinceAck = 0;
        frame = await this.next(isReply);
        continue;
      }
      service = b[4] as number;
      parts.push(Buffer.from(b.subarray(5)));
      expected++;
      sinceAck++;
      if (!more) {
        await ack(seq, false);
        return {
          type: "complex",
          invokeId,
          service,
          data: Buffer.concat(parts),
          segments: parts.length,
          frame: first,
        };
      }
      // The first segment is acknowledged at once; then one ACK per window.
      if (expected === 1 || sinceAck >= window) {
        await ack(seq, false);
        sinceAck = 0;
      }
      frame = await this.next(isReply);
    }
    throw new Error(
      `segmented reply to invoke id ${invokeId} stopped after ${parts.length} segment(s); first ${first.body.subarray(0, 8).toString("hex")}, seen ${JSON.stringify(policy.seen ?? [])}`,
    );
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}

/** Decodes a ReadProperty-ACK: the values inside [3]. */
export function rpValues(data: Buffer): Item[] {
  const items = decodeItems(data);
  const open = items.find((i) => i.kind === "open" && i.tag === 3);
  if (open?.kind !== "open") throw new Error("no [3] in ReadProperty-ACK");
  return open.items;
}

export interface RpmResult {
  object: { type: number; instance: number };
  results: { prop: number; index?: number; values?: Item[]; error?: [number, number] }[];
}

/** Decodes a ReadPropertyMultiple-ACK into per-object, per-property results. */
export function rpmResults(data: Buffer): RpmResult[] {
  const items = decodeItems(data);
  const out: RpmResult[] = [];
  for (let i = 0; i < items.length; i += 2) {
    const id = items[i];
    const list = items[i + 1];
    if (id?.kind !== "ctx" || id.tag !== 0 || !list || list.kind !== "open" || list.tag !== 1)
      throw new Error("malformed ReadAccessResult");
    const results: RpmResult["results"] = [];
    let cur: RpmResult["results"][number] | undefined;
    for (const it of list.items) {
      if (it.kind === "ctx" && it.tag === 2) {
        cur = { prop: uintOf(it.data) };
        results.push(cur);
      } else if (it.kind === "ctx" && it.tag === 3 && cur) cur.index = uintOf(it.data);
      else if (it.kind === "open" && it.tag === 4 && cur) cur.values = it.items;
      else if (it.kind === "open" && it.tag === 5 && cur)
        cur.error = [
          uintOf((it.items[0] as { data: Buffer }).data),
          uintOf((it.items[1] as { data: Buffer }).data),
        ];
      else throw new Error("unexpected item in ReadAccessResult");
    }
    out.push({ object: objectIdOf(id.data), results });
  }
  return out;
}
