// One simulated BACnet device: its device object and point objects, the confirmed and unconfirmed
// services it executes (clause 13 SubscribeCOV, 15.5 ReadProperty, 15.7 ReadPropertyMultiple,
// 15.9 WriteProperty, 16.10 Who-Is/I-Am), the responding side of segmentation (clause 5.4.5:
// segmented ComplexACK, windowed Segment-ACK handling, retransmission) and COV subscriptions with
// lifetimes. It never touches sockets: the node (node.ts) hands it APDUs and sends what it returns.
import {
  AbortReason,
  type AppValue,
  Confirmed,
  DecodeError,
  decodeMaxApdu,
  decodeMaxSegments,
  ErrorClass,
  ErrorCode,
  type NetAddress,
  PduType,
  Reader,
  RejectReason,
  readAppValue,
  Unconfirmed,
  Writer,
} from "./codec.ts";
import {
  apiToPv,
  createObject,
  E_NOT_ARRAY,
  E_READ_DENIED,
  E_UNKNOWN_PROPERTY,
  E_WRITE_DENIED,
  mulberry32,
  OBJECT_DEVICE,
  Prop,
  type PropError,
  type Pv,
  presentValue,
  propertyListOf,
  pvToApi,
  readObjectProperty,
  SEGMENTATION_VALUE,
  SIM_OBJECT_TYPES,
  type SimObject,
  type SimObjectTypeName,
  setPlantValue,
  statusFlags,
  writeArray,
  writeObjectProperty,
} from "./objects.ts";

/** A requester as seen by a device: its B/IP address and, behind a router, its network and MAC. */
export interface Peer {
  ip: string;
  port: number;
  route: NetAddress | undefined;
}

export function peerKey(p: Peer): string {
  return p.route ? `${p.ip}:${p.port}/${p.route.net}:${p.route.adr.toString("hex")}` : `${p.ip}:${p.port}`;
}

export interface DeviceOptions {
  instance: number;
  name: string;
  objects: Partial<Record<SimObjectTypeName, number>>;
  segmentation: boolean;
  maxApdu: number;
  rpm: boolean;
  cov: boolean;
  /** Point id (or "*") → COV misbehaviour; see SimDeviceConfig.covFaults. */
  covFaults: Record<string, "silent" | "refuse">;
  vendorId: number;
  vendorName: string;
  modelName: string;
  firmwareRevision: string;
  changeIntervalMs: number;
  seed: number;
  /** Broadcast I-Am (as many real devices do) instead of unicasting it to the requester. */
  iAmBroadcast: boolean;
}

export interface DeviceCounters {
  requestsReceived: number;
  responsesSent: number;
  covNotificationsSent: number;
  segmentsSent: number;
  rejected: number;
}

/** What a device needs from the node that carries it. */
export interface DeviceTransport {
  send(device: SimDevice, peer: Peer, apdu: Buffer, expectingReply: boolean): void;
  /** Broadcasts an unconfirmed APDU on the node's subnet; false when the node has no broadcast address. */
  broadcast(device: SimDevice, apdu: Buffer): boolean;
}

const PROTOCOL_REVISION = 22;
const APDU_TIMEOUT_MS = 3000;
const APDU_RETRIES = 3;
const SEGMENT_TIMEOUT_MS = 2000;
/** Proposed window size of our segmented responses (clause 5.3); the client's Segment-ACK decides. */
const PROPOSED_WINDOW = 16;
const MAX_COV_SUBSCRIPTIONS = 5000;
const MAX_APDU_CODES = [50, 128, 206, 480, 1024, 1476];

const DEVICE_REQUIRED = [
  Prop.objectIdentifier,
  Prop.objectName,
  Prop.objectType,
  Prop.systemStatus,
  Prop.vendorName,
  Prop.vendorIdentifier,
  Prop.modelName,
  Prop.firmwareRevision,
  Prop.applicationSoftwareVersion,
  Prop.protocolVersion,
  Prop.protocolRevision,
  Prop.protocolServicesSupported,
  Prop.protocolObjectTypesSupported,
  Prop.objectList,
  Prop.maxApduLengthAccepted,
  Prop.segmentationSupported,
  Prop.apduTimeout,
  Prop.numberOfApduRetries,
  Prop.deviceAddressBinding,
  Prop.databaseRevision,
  Prop.propertyList,
];

interface SegmentedTx {
  key: string;
  peer: Peer;
  invokeId: number;
  service: number;
  data: Buffer;
  segSize: number;
  total: number;
  window: number;
  /** Index of the highest segment the client acknowledged (-1 = none). */
  acked: number;
  /** Index of the highest segment sent. */
  sent: number;
  retries: number;
  timer: NodeJS.Timeout | undefined;
}

interface CovSubscription {
  key: string;
  peer: Peer;
  processId: number;
  obj: SimObject;
  confirmed: boolean;
  /** Lifetime in seconds; 0 = indefinite. */
  lifetime: number;
  expiresAt: number;
  lastPv: Pv;
  lastOos: boolean;
}

interface PendingConfirmed {
  peer: Peer;
  apdu: Buffer;
  retries: number;
  timer: NodeJS.Timeout;
}

/** Thrown inside a service handler to answer with a Reject PDU. */
class RejectError extends Error {
  readonly reason: number;
  constructor(reason: number) {
    super(`reject ${reason}`);
    this.reason = reason;
  }
}

// One scratch writer for service data and one for whole APDUs: handlers are synchronous, so a
// module-level buffer is never shared between two requests in flight.
const data = new Writer(4096);
const apduW = new Writer(2048);

function rejectReasonOf(e: unknown): number {
  if (e instanceof RejectError) return e.reason;
  if (e instanceof DecodeError && e.message === "truncated") return RejectReason.missingRequiredParameter;
  return RejectReason.invalidTag;
}

export class SimDevice {
  readonly opts: DeviceOptions;
  readonly transport: DeviceTransport;
  readonly counters: DeviceCounters;
  /** Routed devices: the network and MAC the router presents this device on. */
  readonly routedAs: NetAddress | undefined;
  online = true;
  description = "";
  location = "";
  databaseRevision = 1;
  objects = new Map<number, SimObject>();
  byKey = new Map<string, SimObject>();
  objectList: SimObject[] = [];
  segmented = new Map<string, SegmentedTx>();
  subscriptions = new Map<string, CovSubscription>();
  pending = new Map<number, PendingConfirmed>();
  nextInvokeId = 0;
  /** Work that must follow the SimpleACK of the request being handled (COV notifications). */
  private afterAck: (() => void) | undefined;

  private runAfterAck(): void {
    const after = this.afterAck;
    this.afterAck = undefined;
    after?.();
  }

  constructor(
    opts: DeviceOptions,
    transport: DeviceTransport,
    counters: DeviceCounters,
    routedAs: NetAddress | undefined,
  ) {
    this.opts = opts;
    this.transport = transport;
    this.counters = counters;
    this.routedAs = routedAs;
  }

  /** Builds the object database; separate from the constructor so that stays assignment-only. */
  init(): this {
    const rand = mulberry32(this.opts.seed ^ Math.imul(this.opts.instance, 2654435761));
    this.description = `Simulated device ${this.opts.instance}`;
    this.location = "bacmqtt simulator";
    for (const [name, type] of Object.entries(SIM_OBJECT_TYPES)) {
      const count = this.opts.objects[name as SimObjectTypeName] ?? 0;
      for (let i = 1; i <= count; i++) {
        const o = createObject(type, i, rand);
        this.objects.set(type * 0x400000 + i, o);
        this.byKey.set(o.key, o);
        this.objectList.push(o);
      }
    }
    return this;
  }

  get instance(): number {
    return this.opts.instance;
  }

  tick(now = Date.now()): number {
    return this.opts.changeIntervalMs > 0 ? Math.floor(now / this.opts.changeIntervalMs) : 0;
  }

  get moving(): boolean {
    return this.opts.changeIntervalMs > 0;
  }

  // -------------------------------------------------------------------------------------------
  // API used by the simulator handle.

  point(key: string): SimObject {
    const o = this.byKey.get(key);
    if (!o) throw new RangeError(`device ${this.instance} has no point ${key}`);
    return o;
  }

  presentValue(key: string): number | boolean | string {
    const o = this.point(key);
    return pvToApi(o, presentValue(o, this.tick(), this.moving));
  }

  setPresentValue(key: string, value: number | boolean | string): void {
    const o = this.point(key);
    setPlantValue(o, apiToPv(o, value), this.tick(), this.moving);
    this.checkCov(o);
  }

  stop(): void {
    for (const tx of this.segmented.values()) clearTimeout(tx.timer);
    this.segmented.clear();
    for (const p of this.pending.values()) clearTimeout(p.timer);
    this.pending.clear();
    this.subscriptions.clear();
  }

  // -------------------------------------------------------------------------------------------
  // Entry point for every APDU addressed to this device.

  receive(buf: Buffer, offset: number, end: number, peer: Peer): void {
    if (!this.online) return;
    if (offset >= end) throw new DecodeError("empty APDU");
    const first = buf[offset] as number;
    switch (first >> 4) {
      case PduType.confirmedRequest:
        this.counters.requestsReceived++;
        this.confirmed(buf, offset, end, peer);
        return;
      case PduType.unconfirmedRequest:
        this.unconfirmed(buf, offset, end, peer);
        return;
      case PduType.segmentAck:
        this.segmentAck(buf, offset, end, peer);
        return;
      case PduType.abort:
        // An abort from the client (SRV = 0) ends our segmented response to it.
        if (!(first & 0x01) && end - offset >= 2) this.endTx(`${peerKey(peer)}#${buf[offset + 1]}`);
        else if (first & 0x01 && end - offset >= 2) this.settlePending(buf[offset + 1] as number);
        return;
      case PduType.simpleAck:
      case PduType.error:
      case PduType.reject:
        if (end - offset >= 2) this.settlePending(buf[offset + 1] as number);
        return;
      default:
        return;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Unconfirmed services.

  private unconfirmed(buf: Buffer, offset: number, end: number, peer: Peer): void {
    if (end - offset < 2) throw new DecodeError("truncated");
    const service = buf[offset + 1] as number;
    // Other devices' I-Ams and notifications reach us on the broadcast socket: not requests.
    if (service !== Unconfirmed.whoIs && service !== Unconfirmed.whoHas) return;
    this.counters.requestsReceived++;
    const r = new Reader(buf, offset + 2, end);
    if (r.nextIsCtx(0)) {
      const low = r.ctxUnsigned(0);
      const high = r.ctxUnsigned(1);
      if (this.instance < low || this.instance > high) return;
    }
    if (service === Unconfirmed.whoIs) {
      if (r.remaining > 0) throw new DecodeError("trailing bytes in Who-Is");
      this.sendIAm(peer);
      return;
    }
    this.whoHas(r, peer);
  }

  /** Who-Has (clause 16.9): answer with I-Have when we hold the object, by identifier or name. */
  private whoHas(r: Reader, peer: Peer): void {
    let found: { type: number; instance: number; name: string } | undefined;
    const t = r.tag();
    if (t.context && t.number === 2 && t.length === 4) {
      const v = r.u32();
      const type = v >>> 22;
      const instance = v & 0x3fffff;
      const target = this.lookup(type, instance);
      if (target === "device") found = { type, instance: this.instance, name: this.opts.name };
      else if (target) found = { type, instance, name: target.name };
    } else if (t.context && t.number === 3 && t.length >= 1) {
      r.u8(); // character set; names here are plain ASCII, equal in every set we would accept
      const name = r.bytes(t.length - 1).toString("utf8");
      if (name === this.opts.name) found = { type: OBJECT_DEVICE, instance: this.instance, name };
      else {
        const o = this.objectList.find((x) => x.name === name);
        if (o) found = { type: o.type, instance: o.instance, name };
      }
    } else throw new DecodeError("bad Who-Has object");
    if (!found) return;
    const w = apduW.reset();
    w.u8(PduType.unconfirmedRequest << 4);
    w.u8(Unconfirmed.iHave);
    w.appObjectId(OBJECT_DEVICE, this.instance);
    w.appObjectId(found.type, found.instance);
    w.appCharString(found.name);
    this.respond(peer, w.take());
  }

  sendIAm(peer: Peer): void {
    const w = apduW.reset();
    w.u8(PduType.unconfirmedRequest << 4);
    w.u8(Unconfirmed.iAm);
    w.appObjectId(OBJECT_DEVICE, this.instance);
    w.appUnsigned(this.opts.maxApdu);
    w.appEnumerated(SEGMENTATION_VALUE(this.opts.segmentation));
    w.appUnsigned(this.opts.vendorId);
    const apdu = w.take();
    if (this.opts.iAmBroadcast && this.transport.broadcast(this, apdu)) {
      this.counters.responsesSent++;
      return;
    }
    this.respond(peer, apdu);
  }

  // -------------------------------------------------------------------------------------------
  // Confirmed services.

  private confirmed(buf: Buffer, offset: number, end: number, peer: Peer): void {
    if (end - offset < 4) throw new DecodeError("truncated confirmed request");
    const flags = buf[offset] as number;
    const invokeId = buf[offset + 2] as number;
    // A retransmitted request while we are still sending its segmented answer is a duplicate.
    if (this.segmented.size > 0 && this.segmented.has(`${peerKey(peer)}#${invokeId}`)) return;
    if (flags & 0x08) {
      // Segmented requests: we advertise segmented-transmit only (clause 5.4.5.1).
      this.sendAbort(peer, invokeId, AbortReason.segmentationNotSupported);
      return;
    }
    const segmentedAccepted = (flags & 0x02) !== 0;
    const maxSegments = decodeMaxSegments(((buf[offset + 1] as number) >> 4) & 0x07);
    const clientMaxApdu = decodeMaxApdu((buf[offset + 1] as number) & 0x0f);
    const service = buf[offset + 3] as number;
    const r = new Reader(buf, offset + 4, end);
    data.reset();
    this.afterAck = undefined;
    let outcome: PropError | "ack" | "simple";
    try {
      switch (service) {
        case Confirmed.readProperty:
          outcome = this.readProperty(r);
          break;
        case Confirmed.readPropertyMultiple:
          if (!this.opts.rpm) throw new RejectError(RejectReason.unrecognizedService);
          outcome = this.readPropertyMultiple(r);
          break;
        case Confirmed.writeProperty:
          outcome = this.writeProperty(r);
          break;
        case Confirmed.subscribeCov:
          if (!this.opts.cov) throw new RejectError(RejectReason.unrecognizedService);
          outcome = this.subscribeCov(r, peer);
          break;
        default:
          throw new RejectError(RejectReason.unrecognizedService);
      }
    } catch (e) {
      if (!(e instanceof RejectError) && !(e instanceof DecodeError)) throw e;
      this.counters.rejected++;
      const w = apduW.reset();
      w.u8(PduType.reject << 4);
      w.u8(invokeId);
      w.u8(rejectReasonOf(e));
      this.respond(peer, w.take());
      return;
    }
    if (outcome === "simple") {
      const w = apduW.reset();
      w.u8(PduType.simpleAck << 4);
      w.u8(invokeId);
      w.u8(service);
      this.respond(peer, w.take());
      this.runAfterAck();
      return;
    }
    if (outcome !== "ack") {
      const w = apduW.reset();
      w.u8(PduType.error << 4);
      w.u8(invokeId);
      w.u8(service);
      w.appEnumerated(outcome[0]);
      w.appEnumerated(outcome[1]);
      this.respond(peer, w.take());
      return;
    }
    this.sendComplexAck(peer, invokeId, service, segmentedAccepted, clientMaxApdu, maxSegments);
  }

  /** Sends `data` as one ComplexACK, or segmented, or aborts when it cannot (clause 5.4.5.3). */
  private sendComplexAck(
    peer: Peer,
    invokeId: number,
    service: number,
    segmentedAccepted: boolean,
    clientMaxApdu: number,
    maxSegments: number,
  ): void {
    const maxResp = Math.min(clientMaxApdu, this.opts.maxApdu);
    if (3 + data.pos <= maxResp) {
      const w = apduW.reset();
      w.u8(PduType.complexAck << 4);
      w.u8(invokeId);
      w.u8(service);
      w.bytes(data.buf.subarray(0, data.pos));
      this.respond(peer, w.take());
      return;
    }
    if (!segmentedAccepted || !this.opts.segmentation) {
      this.sendAbort(peer, invokeId, AbortReason.segmentationNotSupported);
      return;
    }
    const segSize = maxResp - 5;
    const total = Math.ceil(data.pos / segSize);
    if (total > maxSegments) {
      // The answer does not fit in the number of segments the client accepts: apdu-too-long
      // (clause 5.4.5.3 as revised by 135-2012; older devices said buffer-overflow).
      this.sendAbort(peer, invokeId, AbortReason.apduTooLong);
      return;
    }
    const key = `${peerKey(peer)}#${invokeId}`;
    const tx: SegmentedTx = {
      key,
      peer,
      invokeId,
      service,
      data: data.take(),
      segSize,
      total,
      window: 1,
      acked: -1,
      sent: -1,
      retries: 0,
      timer: undefined,
    };
    this.segmented.set(key, tx);
    // The first segment goes alone; the client's Segment-ACK then sets the window (clause 5.4.5.3).
    this.sendSegment(tx, 0);
    tx.sent = 0;
    this.armSegmentTimer(tx);
  }

  private sendSegment(tx: SegmentedTx, index: number): void {
    const w = apduW.reset();
    const more = index < tx.total - 1;
    w.u8((PduType.complexAck << 4) | 0x08 | (more ? 0x04 : 0));
    w.u8(tx.invokeId);
    w.u8(index & 0xff);
    w.u8(PROPOSED_WINDOW);
    w.u8(tx.service);
    const start = index * tx.segSize;
    w.bytes(tx.data.subarray(start, Math.min(start + tx.segSize, tx.data.length)));
    this.counters.segmentsSent++;
    this.respond(tx.peer, w.take());
  }

  private fillWindow(tx: SegmentedTx): void {
    const last = Math.min(tx.acked + tx.window, tx.total - 1);
    for (let i = tx.acked + 1; i <= last; i++) this.sendSegment(tx, i);
    tx.sent = Math.max(tx.sent, last);
  }

  private armSegmentTimer(tx: SegmentedTx): void {
    clearTimeout(tx.timer);
    tx.timer = setTimeout(() => {
      if (tx.retries >= APDU_RETRIES) {
        this.endTx(tx.key);
        return;
      }
      tx.retries++;
      if (tx.acked < 0) this.sendSegment(tx, 0);
      else this.fillWindow(tx);
      this.armSegmentTimer(tx);
    }, SEGMENT_TIMEOUT_MS);
    tx.timer.unref();
  }

  private endTx(key: string): void {
    const tx = this.segmented.get(key);
    if (!tx) return;
    clearTimeout(tx.timer);
    this.segmented.delete(key);
  }

  private segmentAck(buf: Buffer, offset: number, end: number, peer: Peer): void {
    if (end - offset < 4) throw new DecodeError("truncated Segment-ACK");
    const flags = buf[offset] as number;
    if (flags & 0x01) return; // sent by a server: not about our responses
    const tx = this.segmented.get(`${peerKey(peer)}#${buf[offset + 1]}`);
    if (!tx) return;
    const seq = buf[offset + 2] as number;
    const window = buf[offset + 3] as number;
    // Map the 8-bit sequence number onto the segment index just after the last acknowledged one.
    const idx = tx.acked + ((seq - (tx.acked & 0xff)) & 0xff);
    if (idx > tx.sent) return; // outside the window: a stale ACK
    if (idx === tx.acked) {
      // Already acknowledged (a repeated NAK for the same gap included): duplicate, only restart
      // the timer (clause 5.4.5.3, DuplicateACK_Received). Resending here would multiply traffic.
      this.armSegmentTimer(tx);
      return;
    }
    tx.acked = idx;
    tx.window = Math.max(1, Math.min(127, window || 1));
    tx.retries = 0;
    if (tx.acked >= tx.total - 1) {
      this.endTx(tx.key);
      return;
    }
    // A negative ACK (NAK bit) also names the last segment received in order: resend from there.
    this.fillWindow(tx);
    this.armSegmentTimer(tx);
  }

  private sendAbort(peer: Peer, invokeId: number, reason: number): void {
    const w = apduW.reset();
    w.u8((PduType.abort << 4) | 0x01); // SRV: sent by the server
    w.u8(invokeId);
    w.u8(reason);
    this.respond(peer, w.take());
  }

  private respond(peer: Peer, apdu: Buffer): void {
    this.counters.responsesSent++;
    this.transport.send(this, peer, apdu, false);
  }

  // -------------------------------------------------------------------------------------------
  // Object and property access.

  private lookup(type: number, instance: number): SimObject | "device" | undefined {
    if (type === OBJECT_DEVICE) {
      // 4194303 addresses "this device" whatever its instance (clause 15.5.1.1.1).
      return instance === this.instance || instance === 0x3fffff ? "device" : undefined;
    }
    return this.objects.get(type * 0x400000 + instance);
  }

  private propertiesOf(target: SimObject | "device"): readonly number[] {
    if (target !== "device") return target.props;
    const props: number[] = [...DEVICE_REQUIRED, Prop.description, Prop.location];
    if (this.opts.segmentation) props.push(Prop.maxSegmentsAccepted, Prop.apduSegmentTimeout);
    return props;
  }

  private isOptional(target: SimObject | "device", prop: number): boolean {
    if (target === "device") return !DEVICE_REQUIRED.includes(prop as (typeof DEVICE_REQUIRED)[number]);
    return target.optionalProps.has(prop);
  }

  /** Encodes one property value (application tags only) into `w`, or returns the error. */
  private readValue(
    w: Writer,
    target: SimObject | "device",
    prop: number,
    index: number | undefined,
  ): PropError | undefined {
    if (prop === Prop.all || prop === Prop.required || prop === Prop.optional) return E_READ_DENIED;
    if (target !== "device") return readObjectProperty(w, target, prop, index, this.tick(), this.moving);
    return this.readDeviceProperty(w, prop, index);
  }

  private readDeviceProperty(w: Writer, prop: number, index: number | undefined): PropError | undefined {
    const props = this.propertiesOf("device");
    if (!props.includes(prop)) return E_UNKNOWN_PROPERTY;
    const isArray = prop === Prop.objectList || prop === Prop.propertyList;
    if (index !== undefined && !isArray) return E_NOT_ARRAY;
    const o = this.opts;
    switch (prop) {
      case Prop.objectIdentifier:
        w.appObjectId(OBJECT_DEVICE, o.instance);
        return undefined;
      case Prop.objectName:
        w.appCharString(o.name);
        return undefined;
      case Prop.objectType:
        w.appEnumerated(OBJECT_DEVICE);
        return undefined;
      case Prop.systemStatus:
        w.appEnumerated(0); // operational
        return undefined;
      case Prop.vendorName:
        w.appCharString(o.vendorName);
        return undefined;
      case Prop.vendorIdentifier:
        w.appUnsigned(o.vendorId);
        return undefined;
      case Prop.modelName:
        w.appCharString(o.modelName);
        return undefined;
      case Prop.firmwareRevision:
        w.appCharString(o.firmwareRevision);
        return undefined;
      case Prop.applicationSoftwareVersion:
        w.appCharString(`bacmqtt-sim ${o.firmwareRevision}`);
        return undefined;
      case Prop.protocolVersion:
        w.appUnsigned(1);
        return undefined;
      case Prop.protocolRevision:
        w.appUnsigned(PROTOCOL_REVISION);
        return undefined;
      case Prop.protocolServicesSupported:
        w.appBitString(this.servicesSupported());
        return undefined;
      case Prop.protocolObjectTypesSupported: {
        const bits = new Array<boolean>(65).fill(false);
        bits[OBJECT_DEVICE] = true;
        for (const t of Object.values(SIM_OBJECT_TYPES)) bits[t] = true;
        w.appBitString(bits);
        return undefined;
      }
      case Prop.objectList:
        return writeArray(w, this.objectList.length + 1, index, (i) => {
          if (i === 0) w.appObjectId(OBJECT_DEVICE, o.instance);
          else {
            const obj = this.objectList[i - 1] as SimObject;
            w.appObjectId(obj.type, obj.instance);
          }
        });
      case Prop.maxApduLengthAccepted:
        w.appUnsigned(o.maxApdu);
        return undefined;
      case Prop.segmentationSupported:
        w.appEnumerated(SEGMENTATION_VALUE(o.segmentation));
        return undefined;
      case Prop.apduTimeout:
        w.appUnsigned(APDU_TIMEOUT_MS);
        return undefined;
      case Prop.numberOfApduRetries:
        w.appUnsigned(APDU_RETRIES);
        return undefined;
      case Prop.deviceAddressBinding:
        return undefined; // an empty list: this device holds no bindings
      case Prop.databaseRevision:
        w.appUnsigned(this.databaseRevision);
        return undefined;
      case Prop.propertyList: {
        const list = propertyListOf(props);
        return writeArray(w, list.length, index, (i) => w.appEnumerated(list[i] as number));
      }
      case Prop.description:
        w.appCharString(this.description);
        return undefined;
      case Prop.location:
        w.appCharString(this.location);
        return undefined;
      case Prop.maxSegmentsAccepted:
        w.appUnsigned(64);
        return undefined;
      case Prop.apduSegmentTimeout:
        w.appUnsigned(SEGMENT_TIMEOUT_MS);
        return undefined;
    }
    return E_UNKNOWN_PROPERTY;
  }

  /** BACnetServicesSupported (clause 21): the services this device executes. */
  private servicesSupported(): boolean[] {
    const bits = new Array<boolean>(49).fill(false);
    bits[12] = true; // readProperty
    bits[15] = true; // writeProperty
    bits[26] = true; // i-Am
    bits[27] = true; // i-Have
    bits[33] = true; // who-Has
    bits[34] = true; // who-Is
    if (this.opts.rpm) bits[14] = true; // readPropertyMultiple
    if (this.opts.cov) {
      bits[5] = true; // subscribeCOV
      bits[28] = true; // unconfirmedCOVNotification (initiated)
      bits[1] = true; // confirmedCOVNotification (initiated)
    }
    return bits;
  }

  private readProperty(r: Reader): PropError | "ack" {
    const id = r.ctxObjectId(0);
    const prop = r.ctxUnsigned(1);
    const index = r.remaining > 0 ? r.ctxUnsigned(2) : undefined;
    if (r.remaining > 0) throw new RejectError(RejectReason.tooManyArguments);
    const target = this.lookup(id.type, id.instance);
    if (!target) return [ErrorClass.object, ErrorCode.unknownObject];
    const w = data;
    w.ctxObjectId(0, id.type, target === "device" ? this.instance : id.instance);
    w.ctxEnumerated(1, prop);
    if (index !== undefined) w.ctxUnsigned(2, index);
    w.open(3);
    const e = this.readValue(w, target, prop, index);
    if (e) return e;
    w.close(3);
    return "ack";
  }

  private readPropertyMultiple(r: Reader): "ack" {
    const w = data;
    if (r.remaining === 0) throw new RejectError(RejectReason.missingRequiredParameter);
    while (r.remaining > 0) {
      const id = r.ctxObjectId(0);
      r.expectOpening(1);
      const refs: { prop: number; index: number | undefined }[] = [];
      while (!r.nextIsClosing(1)) {
        const prop = r.ctxUnsigned(0);
        const index = r.nextIsCtx(1) ? r.ctxUnsigned(1) : undefined;
        refs.push({ prop, index });
        if (refs.length > 10_000) throw new RejectError(RejectReason.bufferOverflow);
      }
      r.expectClosing(1);
      if (refs.length === 0) throw new RejectError(RejectReason.missingRequiredParameter);
      const target = this.lookup(id.type, id.instance);
      w.ctxObjectId(0, id.type, target === "device" ? this.instance : id.instance);
      w.open(1);
      for (const ref of refs) {
        if (!target) {
          this.writeResultError(w, ref.prop, ref.index, [ErrorClass.object, ErrorCode.unknownObject]);
          continue;
        }
        if (ref.prop === Prop.all || ref.prop === Prop.required || ref.prop === Prop.optional) {
          for (const p of this.propertiesOf(target)) {
            // Property_List is left out of ALL and REQUIRED, as bacnet-stack does: it came with
            // 135-2010, and older clients' view of "all properties" predates it.
            if (p === Prop.propertyList) continue;
            if (ref.prop === Prop.required && this.isOptional(target, p)) continue;
            if (ref.prop === Prop.optional && !this.isOptional(target, p)) continue;
            this.writeResult(w, target, p, undefined);
          }
          continue;
        }
        this.writeResult(w, target, ref.prop, ref.index);
      }
      w.close(1);
    }
    return "ack";
  }

  private writeResult(
    w: Writer,
    target: SimObject | "device",
    prop: number,
    index: number | undefined,
  ): void {
    const mark = w.pos;
    w.ctxEnumerated(2, prop);
    if (index !== undefined) w.ctxUnsigned(3, index);
    w.open(4);
    const e = this.readValue(w, target, prop, index);
    if (!e) {
      w.close(4);
      return;
    }
    w.pos = mark;
    this.writeResultError(w, prop, index, e);
  }

  private writeResultError(w: Writer, prop: number, index: number | undefined, e: PropError): void {
    w.ctxEnumerated(2, prop);
    if (index !== undefined) w.ctxUnsigned(3, index);
    w.open(5);
    w.appEnumerated(e[0]);
    w.appEnumerated(e[1]);
    w.close(5);
  }

  private writeProperty(r: Reader): PropError | "simple" {
    const id = r.ctxObjectId(0);
    const prop = r.ctxUnsigned(1);
    const index = r.nextIsCtx(2) ? r.ctxUnsigned(2) : undefined;
    r.expectOpening(3);
    const values: AppValue[] = [];
    while (!r.nextIsClosing(3)) {
      const t = r.peekTag();
      if (!t) throw new DecodeError("truncated");
      // A constructed value never fits a property we let anyone write.
      if (t.context) {
        r.skipItem();
        values.push({ tag: "null" }, { tag: "null" });
        continue;
      }
      values.push(readAppValue(r));
      if (values.length > 1000) throw new RejectError(RejectReason.bufferOverflow);
    }
    r.expectClosing(3);
    let priority: number | undefined;
    if (r.remaining > 0) priority = r.ctxUnsigned(4);
    if (r.remaining > 0) throw new RejectError(RejectReason.tooManyArguments);
    const target = this.lookup(id.type, id.instance);
    if (!target) return [ErrorClass.object, ErrorCode.unknownObject];
    if (target === "device") return this.writeDevice(prop, index, values);
    if (priority !== undefined && (priority < 1 || priority > 16)) {
      return [ErrorClass.property, ErrorCode.valueOutOfRange];
    }
    const e = writeObjectProperty(target, prop, index, values, priority, this.tick(), this.moving);
    if (e) return e;
    // COV notifications caused by the write follow its SimpleACK.
    this.afterAck = () => this.checkCov(target);
    return "simple";
  }

  private writeDevice(prop: number, index: number | undefined, values: AppValue[]): PropError | "simple" {
    const props = this.propertiesOf("device");
    if (!props.includes(prop)) return E_UNKNOWN_PROPERTY;
    if (index !== undefined && prop !== Prop.objectList && prop !== Prop.propertyList) return E_NOT_ARRAY;
    if (prop !== Prop.description && prop !== Prop.location) return E_WRITE_DENIED;
    const v = values[0];
    if (values.length !== 1 || !v || v.tag !== "string")
      return [ErrorClass.property, ErrorCode.invalidDataType];
    if (prop === Prop.description) this.description = v.value;
    else this.location = v.value;
    return "simple";
  }

  // -------------------------------------------------------------------------------------------
  // COV (clause 13.1, SubscribeCOV clause 13.14).

  private subscribeCov(r: Reader, peer: Peer): PropError | "simple" {
    const processId = r.ctxUnsigned(0);
    const id = r.ctxObjectId(1);
    let confirmed: boolean | undefined;
    let lifetime: number | undefined;
    if (r.nextIsCtx(2)) {
      const t = r.tag();
      if (t.length !== 1) throw new DecodeError("bad boolean");
      confirmed = r.u8() !== 0;
    }
    if (r.nextIsCtx(3)) lifetime = r.ctxUnsigned(3);
    if (r.remaining > 0) throw new RejectError(RejectReason.tooManyArguments);
    // Both present = subscribe; both absent = cancel; one without the other is inconsistent.
    if (confirmed === undefined && lifetime !== undefined) {
      throw new RejectError(RejectReason.missingRequiredParameter);
    }
    const target = this.lookup(id.type, id.instance);
    if (!target) return [ErrorClass.object, ErrorCode.unknownObject];
    if (target === "device") return [ErrorClass.object, ErrorCode.optionalFunctionalityNotSupported];
    const key = `${peerKey(peer)}|${processId}|${target.key}`;
    if (confirmed === undefined) {
      // Cancellation succeeds whether or not the subscription exists (clause 13.14.1.3.1).
      this.subscriptions.delete(key);
      return "simple";
    }
    const fault = this.opts.covFaults[target.key] ?? this.opts.covFaults["*"];
    if (fault === "refuse") return [ErrorClass.object, ErrorCode.optionalFunctionalityNotSupported];
    // Acknowledged and then forgotten: no subscription, so no notification ever follows.
    if (fault === "silent") return "simple";
    const life = lifetime ?? 0;
    if (!this.subscriptions.has(key) && this.subscriptions.size >= MAX_COV_SUBSCRIPTIONS) {
      return [ErrorClass.resources, ErrorCode.covSubscriptionFailed];
    }
    const pv = presentValue(target, this.tick(), this.moving);
    const sub: CovSubscription = {
      key,
      peer,
      processId,
      obj: target,
      confirmed,
      lifetime: life,
      expiresAt: life === 0 ? Number.POSITIVE_INFINITY : Date.now() + life * 1000,
      lastPv: pv,
      lastOos: target.outOfService,
    };
    this.subscriptions.set(key, sub);
    // The initial notification follows the SimpleACK (clause 13.1.2).
    this.afterAck = () => this.notify(sub, presentValue(sub.obj, this.tick(), this.moving), Date.now());
    return "simple";
  }

  /** Expires subscriptions and sends notifications for changed values; called on a timer. */
  covSweep(now = Date.now()): void {
    if (!this.online || this.subscriptions.size === 0) return;
    const tick = this.tick(now);
    for (const sub of this.subscriptions.values()) {
      if (now >= sub.expiresAt) {
        this.subscriptions.delete(sub.key);
        continue;
      }
      const pv = presentValue(sub.obj, tick, this.moving);
      if (this.changed(sub, pv)) this.notify(sub, pv, now);
    }
  }

  checkCov(o: SimObject): void {
    if (!this.online || this.subscriptions.size === 0) return;
    const now = Date.now();
    const pv = presentValue(o, this.tick(now), this.moving);
    for (const sub of this.subscriptions.values()) {
      if (sub.obj !== o || now >= sub.expiresAt) continue;
      if (this.changed(sub, pv)) this.notify(sub, pv, now);
    }
  }

  private changed(sub: CovSubscription, pv: Pv): boolean {
    if (sub.obj.outOfService !== sub.lastOos) return true;
    if (sub.obj.kind === "analog" || sub.obj.kind === "integer") {
      return Math.abs((pv as number) - (sub.lastPv as number)) >= sub.obj.covIncrement && pv !== sub.lastPv;
    }
    return pv !== sub.lastPv;
  }

  private notify(sub: CovSubscription, pv: Pv, now: number): void {
    sub.lastPv = pv;
    sub.lastOos = sub.obj.outOfService;
    const o = sub.obj;
    const w = apduW.reset();
    let invokeId = 0;
    if (sub.confirmed) {
      invokeId = this.allocInvokeId();
      if (invokeId < 0) return; // 256 notifications unacknowledged: this one is skipped
      w.u8(PduType.confirmedRequest << 4);
      w.u8(maxApduCode(this.opts.maxApdu));
      w.u8(invokeId);
      w.u8(Confirmed.confirmedCovNotification);
    } else {
      w.u8(PduType.unconfirmedRequest << 4);
      w.u8(Unconfirmed.unconfirmedCovNotification);
    }
    w.ctxUnsigned(0, sub.processId);
    w.ctxObjectId(1, OBJECT_DEVICE, this.instance);
    w.ctxObjectId(2, o.type, o.instance);
    const remaining = sub.lifetime === 0 ? 0 : Math.max(0, Math.ceil((sub.expiresAt - now) / 1000));
    w.ctxUnsigned(3, remaining);
    w.open(4);
    w.ctxEnumerated(0, Prop.presentValue);
    w.open(2);
    readObjectProperty(w, o, Prop.presentValue, undefined, this.tick(now), this.moving);
    w.close(2);
    w.ctxEnumerated(0, Prop.statusFlags);
    w.open(2);
    w.appBitString(statusFlags(o));
    w.close(2);
    w.close(4);
    const apdu = w.take();
    this.counters.covNotificationsSent++;
    if (sub.confirmed) {
      const pending: PendingConfirmed = {
        peer: sub.peer,
        apdu,
        retries: 0,
        timer: setTimeout(() => this.retryPending(invokeId), APDU_TIMEOUT_MS),
      };
      pending.timer.unref();
      this.pending.set(invokeId, pending);
    }
    this.transport.send(this, sub.peer, apdu, sub.confirmed);
  }

  private allocInvokeId(): number {
    for (let i = 0; i < 256; i++) {
      const id = this.nextInvokeId;
      this.nextInvokeId = (this.nextInvokeId + 1) & 0xff;
      if (!this.pending.has(id)) return id;
    }
    return -1;
  }

  private retryPending(invokeId: number): void {
    const p = this.pending.get(invokeId);
    if (!p) return;
    if (p.retries >= APDU_RETRIES || !this.online) {
      this.pending.delete(invokeId);
      return;
    }
    p.retries++;
    p.timer = setTimeout(() => this.retryPending(invokeId), APDU_TIMEOUT_MS);
    p.timer.unref();
    this.transport.send(this, p.peer, p.apdu, true);
  }

  private settlePending(invokeId: number): void {
    const p = this.pending.get(invokeId);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(invokeId);
  }
}

function maxApduCode(maxApdu: number): number {
  let code = 0;
  for (let i = 0; i < MAX_APDU_CODES.length; i++) if ((MAX_APDU_CODES[i] as number) <= maxApdu) code = i;
  return code;
}
