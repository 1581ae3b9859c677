// The gateway's BACnet/IP endpoint: UDP sockets, BVLL/NPDU framing, foreign-device registration,
// and confirmed-request bookkeeping (invoke ids, our own timers and retries, segmented-ACK
// reassembly, concurrency limits). It replaces the library's client because that one reuses invoke
// ids above 256 requests in flight, leaves some promises unsettled for ever, has no retries and
// throws on malformed datagrams. Nothing here knows about points or MQTT; the engine builds on it.
import { createSocket, type Socket } from "node:dgram";
import { EventEmitter } from "node:events";
import type { Logger } from "../../common/logger.ts";
import {
  Bvlc,
  type CovData,
  type Decoded,
  DecodeError,
  type Destination,
  decodeApdu,
  decodeCovNotification,
  decodeDatagram,
  decodeErrorBody,
  decodeIAm,
  encodeBvll,
  encodeNpdu,
  encodeRegisterForeignDevice,
  encodeWhoIs,
  GLOBAL_NETWORK,
  type IAmData,
  macToHex,
  Pdu,
  peerKey,
  rejectPdu,
  Service,
  segmentAck,
  simpleAck,
  unconfirmedHeader,
  writeConfirmedHeader,
} from "./codec.ts";
import {
  abortFrom,
  BacnetError,
  bacnetErrorFrom,
  GW_ERR,
  networkRejectFrom,
  rejectFrom,
  timeoutError,
} from "./errors.ts";
import { Limiter } from "./limiter.ts";

export interface ClientOptions {
  address: string;
  port: number;
  broadcast: string | null;
  /** UDP port broadcasts are sent to (BACnet convention: the same port everywhere). */
  broadcastPort: number;
  apduTimeoutMs: number;
  retries: number;
  perDeviceInFlight: number;
  globalInFlight: number;
  /** Bind a second socket to the broadcast address (Linux needs it to hear broadcasts). */
  listenBroadcast: boolean;
  log: Logger;
}

export interface IAmEvent extends IAmData {
  ip: string;
  port: number;
  network: number | null;
  mac: string | null;
}

export interface CovEvent extends CovData {
  confirmed: boolean;
}

export interface ClientStats {
  datagramsIn: number;
  datagramsOut: number;
  malformed: number;
  requests: number;
  timeouts: number;
  retries: number;
  lateOrUnmatched: number;
  /** Reject-Message-To-Network received from a router we sent requests through. */
  networkRejects: number;
  inFlight: number;
}

interface Pending {
  key: string;
  invokeId: number;
  service: number;
  datagram: Buffer;
  dest: Destination;
  label: string;
  attempts: number;
  maxAttempts: number;
  timeoutMs: number;
  timer?: NodeJS.Timeout;
  resolve: (r: { service: number; body: Buffer }) => void;
  reject: (e: Error) => void;
  seg?: Reassembly;
  /** Whether an answer's body is really the answer to this request (see RequestOptions.accept). */
  accept?: (body: Buffer) => boolean;
}

export interface RequestOptions {
  label?: string;
  timeoutMs?: number;
  retries?: number;
  maxApdu?: number;
  /**
   * Whether a Complex-ACK body answers this request (the object and property it names). One that
   * does not is not taken: a late copy of an earlier answer that reused this invoke id (a
   * duplicating network, a device that answers twice) is counted as unmatched and the request
   * goes on waiting for its own answer, instead of failing on someone else's.
   */
  accept?: (body: Buffer) => boolean;
}

interface Reassembly {
  chunks: Buffer[];
  /** Index of the next segment wanted in order. */
  expected: number;
  windowStart: number;
  window: number;
  bytes: number;
  /** Segments that arrived ahead of `expected` (reordered), by sequence number: used when the gap fills. */
  early: Map<number, { body: Buffer; more: boolean }>;
  /** `expected` when a negative ACK was last sent: one NAK per gap, not one per early segment. */
  nakFor: number;
}

interface IdSpace {
  next: number;
  used: Set<number>;
  /** The request in flight under each invoke id of this peer: replies are matched here. */
  slots: (Pending | undefined)[];
  /** Ids whose request timed out: a late answer must not reach the next request with that id. */
  quarantine: Map<number, number>;
  waiters: (() => void)[];
}

const MAX_REASSEMBLY_BYTES = 4 * 1024 * 1024;
/** BVLL header of an Original-Unicast-NPDU; the length is patched per datagram. */
const BVLL_UNICAST_HEAD = Buffer.from([0x81, Bvlc.ORIGINAL_UNICAST_NPDU, 0, 0]);
/** Network-layer message type Reject-Message-To-Network (clause 6.4.4). */
const REJECT_MESSAGE_TO_NETWORK = 0x03;
const MAX_SEGMENT_WINDOW = 16;

export class BacnetClient extends EventEmitter {
  private readonly opts: ClientOptions;
  private socket?: Socket;
  private bsocket?: Socket;
  /** Every request in flight (for stop, stats and network rejects); replies go through `ids`. */
  private readonly pending = new Set<Pending>();
  private readonly ids = new Map<string, IdSpace>();
  private readonly global: Limiter;
  private readonly perPeer = new Map<string, Limiter>();
  private bbmd?: { ip: string; port: number; ttlS: number; timer?: NodeJS.Timeout; registered: boolean };
  private bbmdWaiter?: (code: number) => void;
  private closed = false;
  readonly counters: Omit<ClientStats, "inFlight"> = {
    datagramsIn: 0,
    datagramsOut: 0,
    malformed: 0,
    requests: 0,
    timeouts: 0,
    retries: 0,
    lateOrUnmatched: 0,
    networkRejects: 0,
  };
  boundPort = 0;

  constructor(opts: ClientOptions) {
    super();
    this.opts = opts;
    this.global = new Limiter(Math.max(1, Math.min(opts.globalInFlight, 4096)));
  }

  async start(): Promise<void> {
    // exclusive: a second process on our address/port must fail loudly rather than share traffic.
    this.socket = await this.bind(this.opts.address, this.opts.port, false);
    this.boundPort = this.socket.address().port;
    const b = this.opts.broadcast;
    if (this.opts.listenBroadcast && b && b !== this.opts.address && this.opts.address !== "0.0.0.0") {
      try {
        // Shared with other BACnet tools on this PC; only broadcasts arrive here.
        this.bsocket = await this.bind(b, this.boundPort, true);
      } catch (err) {
        this.opts.log.warn(
          { err, broadcast: b },
          "cannot listen on the broadcast address; broadcast I-Am answers may be missed",
        );
      }
    }
  }

  private bind(address: string, port: number, reuseAddr: boolean): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const s = createSocket({ type: "udp4", reuseAddr });
      const onError = (err: NodeJS.ErrnoException) => {
        s.close();
        reject(
          new BacnetError(
            GW_ERR.BIND,
            err.code === "EADDRINUSE"
              ? `UDP ${address}:${port} is in use by another program (another BACnet tool?); choose another --port or stop it`
              : `cannot bind UDP ${address}:${port}: ${err.message}`,
            "local",
            { cause: err },
          ),
        );
      };
      s.once("error", onError);
      s.bind({ address, port, exclusive: !reuseAddr }, () => {
        s.off("error", onError);
        s.on("error", (err) => this.opts.log.warn({ err }, "udp socket error"));
        s.setBroadcast(true);
        try {
          // I-Am storms from large sites arrive in bursts; the OS caps this at its own maximum.
          s.setRecvBufferSize(4 * 1024 * 1024);
        } catch {
          // not permitted here: keep the default buffer
        }
        s.on("message", (msg, rinfo) => this.onDatagram(msg, rinfo.address, rinfo.port));
        resolve(s);
      });
    });
  }

  async stop(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.bbmd?.timer) clearTimeout(this.bbmd.timer);
    for (const p of [...this.pending]) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(new BacnetError(GW_ERR.STOPPED, "BACnet endpoint stopped", "local"));
    }
    this.pending.clear();
    this.global.close();
    for (const l of this.perPeer.values()) l.close();
    await Promise.all(
      [this.socket, this.bsocket].map(
        (s) =>
          new Promise<void>((r) => {
            if (!s) return r();
            try {
              s.close(() => r());
            } catch {
              r();
            }
          }),
      ),
    );
  }

  stats(): ClientStats {
    return { ...this.counters, inFlight: this.pending.size };
  }

  // ---- sending ------------------------------------------------------------------------------

  private sendRaw(datagram: Buffer, ip: string, port: number): void {
    if (this.closed || !this.socket) return;
    this.counters.datagramsOut++;
    this.socket.send(datagram, port, ip, (err) => {
      if (err) this.opts.log.debug({ err, ip, port }, "udp send failed");
    });
  }

  /** Sends an APDU to one destination (unicast; routed when the destination has a network). */
  sendApdu(dest: Destination, apdu: Buffer, expectingReply: boolean): void {
    const npdu = Buffer.concat([encodeNpdu(dest, expectingReply), apdu]);
    this.sendRaw(encodeBvll(Bvlc.ORIGINAL_UNICAST_NPDU, npdu), dest.ip, dest.port);
  }

  /** Local broadcast (Original-Broadcast-NPDU) and, when registered, Distribute-Broadcast-To-Network via the BBMD. */
  broadcastApdu(apdu: Buffer, options: { global: boolean; address?: string | null }): void {
    const npdu = Buffer.concat([encodeNpdu(options.global ? { network: GLOBAL_NETWORK } : {}, false), apdu]);
    const address = options.address === undefined ? this.opts.broadcast : options.address;
    if (address)
      this.sendRaw(encodeBvll(Bvlc.ORIGINAL_BROADCAST_NPDU, npdu), address, this.opts.broadcastPort);
    if (this.bbmd?.registered)
      this.sendRaw(encodeBvll(Bvlc.DISTRIBUTE_BROADCAST_TO_NETWORK, npdu), this.bbmd.ip, this.bbmd.port);
  }

  whoIsApdu(low?: number, high?: number): Buffer {
    return Buffer.concat([unconfirmedHeader(Service.WHO_IS), encodeWhoIs(low, high)]);
  }

  // ---- foreign-device registration ----------------------------------------------------------

  /** Registers with a BBMD (Annex J.5.2) and keeps re-registering at half the TTL. */
  async registerForeignDevice(ip: string, port: number, ttlS: number): Promise<void> {
    this.bbmd = { ip, port, ttlS, registered: false };
    await this.registerOnce();
  }

  isForeignRegistered(): boolean {
    return this.bbmd?.registered === true;
  }

  private async registerOnce(): Promise<void> {
    const b = this.bbmd;
    if (!b || this.closed) return;
    let lastCode: number | undefined;
    for (let attempt = 0; attempt <= this.opts.retries && !this.closed; attempt++) {
      const code = await new Promise<number | undefined>((resolve) => {
        const timer = setTimeout(() => {
          this.bbmdWaiter = undefined;
          resolve(undefined);
        }, this.opts.apduTimeoutMs);
        this.bbmdWaiter = (c) => {
          clearTimeout(timer);
          this.bbmdWaiter = undefined;
          resolve(c);
        };
        this.sendRaw(encodeRegisterForeignDevice(b.ttlS), b.ip, b.port);
      });
      lastCode = code;
      if (code !== undefined) break;
    }
    if (this.closed) return;
    // Re-register before the entry expires; the BBMD adds 30 s grace but we do not rely on it.
    const again = Math.max(1000, (b.ttlS * 1000) / 2);
    b.timer = setTimeout(() => {
      this.registerOnce().catch((err: unknown) =>
        this.opts.log.warn({ err }, "foreign-device re-registration failed"),
      );
    }, again);
    b.timer.unref?.();
    if (lastCode === 0) {
      if (!b.registered)
        this.opts.log.info({ bbmd: `${b.ip}:${b.port}`, ttl: b.ttlS }, "registered as foreign device");
      b.registered = true;
      this.emit("bbmd", { registered: true });
      return;
    }
    b.registered = false;
    this.emit("bbmd", { registered: false });
    throw new BacnetError(
      GW_ERR.BBMD,
      lastCode === undefined
        ? `BBMD ${b.ip}:${b.port} did not answer the foreign-device registration`
        : `BBMD ${b.ip}:${b.port} refused the foreign-device registration (result 0x${lastCode.toString(16).padStart(4, "0")})`,
      lastCode === undefined ? "timeout" : "error",
    );
  }

  // ---- confirmed requests -------------------------------------------------------------------

  private idSpace(key: string): IdSpace {
    let s = this.ids.get(key);
    if (!s) {
      s = {
        next: Math.floor(Math.random() * 256),
        used: new Set(),
        slots: new Array(256).fill(undefined),
        quarantine: new Map(),
        waiters: [],
      };
      this.ids.set(key, s);
    }
    return s;
  }

  /** A free invoke id of this peer (never one in flight or quarantined), or −1 if all are taken. */
  private tryAllocateId(s: IdSpace): number {
    const now = s.quarantine.size > 0 ? Date.now() : 0;
    for (let i = 0; i < 256; i++) {
      const id = (s.next + i) & 0xff;
      if (s.used.has(id)) continue;
      if (now !== 0) {
        const q = s.quarantine.get(id);
        if (q !== undefined) {
          if (q > now) continue;
          s.quarantine.delete(id);
        }
      }
      s.used.add(id);
      s.next = (id + 1) & 0xff;
      return id;
    }
    return -1;
  }

  private async allocateId(key: string): Promise<number> {
    const s = this.idSpace(key);
    for (let round = 0; ; round++) {
      const id = this.tryAllocateId(s);
      if (id >= 0) return id;
      if (this.closed) throw new BacnetError(GW_ERR.STOPPED, "BACnet endpoint stopped", "local");
      // All 256 ids of this peer are busy: wait for one rather than reuse one (that is the bug we avoid).
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(1000, this.opts.apduTimeoutMs));
        s.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
      if (round > 10_000) throw new BacnetError(GW_ERR.TIMEOUT, "no free invoke id", "local");
    }
  }

  private releaseId(key: string, id: number, timedOut: boolean): void {
    const s = this.ids.get(key);
    if (!s) return;
    s.used.delete(id);
    if (timedOut) s.quarantine.set(id, Date.now() + this.opts.apduTimeoutMs * 2);
    s.waiters.shift()?.();
  }

  private peerLimiter(key: string): Limiter {
    let l = this.perPeer.get(key);
    if (!l) {
      l = new Limiter(Math.max(1, Math.min(this.opts.perDeviceInFlight, 255)));
      this.perPeer.set(key, l);
    }
    return l;
  }

  /**
   * Sends a confirmed request and resolves with the (reassembled) ACK body. Rejects with a
   * BacnetError for Error/Reject/Abort PDUs and after the last retry timed out. Always settles.
   */
  async request(
    dest: Destination,
    service: number,
    body: Buffer,
    options: RequestOptions = {},
  ): Promise<{ service: number; body: Buffer }> {
    if (this.closed) throw new BacnetError(GW_ERR.STOPPED, "BACnet endpoint stopped", "local");
    const key = peerKey(dest.ip, dest.port, dest.network, dest.mac);
    const peer = this.peerLimiter(key);
    const stopped = () => new BacnetError(GW_ERR.STOPPED, "BACnet endpoint stopped", "local");
    // A free slot and a free id are taken without awaiting (no promise per step); otherwise wait.
    // A limiter only rejects when it is closed, i.e. when the endpoint stops.
    if (!peer.tryAcquire())
      await peer.acquire().catch(() => {
        throw stopped();
      });
    try {
      if (!this.global.tryAcquire())
        await this.global.acquire().catch(() => {
          throw stopped();
        });
      try {
        let invokeId = this.tryAllocateId(this.idSpace(key));
        if (invokeId < 0) invokeId = await this.allocateId(key);
        return await this.transact(key, invokeId, dest, service, body, options);
      } finally {
        this.global.release();
      }
    } finally {
      peer.release();
    }
  }

  private transact(
    key: string,
    invokeId: number,
    dest: Destination,
    service: number,
    body: Buffer,
    options: RequestOptions,
  ): Promise<{ service: number; body: Buffer }> {
    this.counters.requests++;
    // One allocation for the whole datagram, written in place: this is the hot path of polling.
    const routed = dest.network != null && dest.network !== 0;
    const npdu = routed ? encodeNpdu(dest, true) : undefined;
    const npduLength = npdu ? npdu.length : 2;
    const length = 4 + npduLength + 4 + body.length;
    const datagram = Buffer.allocUnsafe(length);
    BVLL_UNICAST_HEAD.copy(datagram, 0);
    datagram.writeUInt16BE(length, 2);
    if (npdu) npdu.copy(datagram, 4);
    else {
      datagram[4] = 0x01; // version
      datagram[5] = 0x04; // expecting reply, no DNET
    }
    writeConfirmedHeader(datagram, 4 + npduLength, invokeId, service, 1476);
    body.copy(datagram, 8 + npduLength);
    return new Promise((resolve, reject) => {
      const p: Pending = {
        key,
        invokeId,
        service,
        datagram,
        dest,
        label: options.label ?? `service ${service}`,
        attempts: 0,
        maxAttempts: 1 + (options.retries ?? this.opts.retries),
        timeoutMs: options.timeoutMs ?? this.opts.apduTimeoutMs,
        ...(options.accept ? { accept: options.accept } : {}),
        resolve: (r) => {
          this.finish(p, false);
          resolve(r);
        },
        reject: (e) => {
          this.finish(p, (e as BacnetError).kind === "timeout");
          reject(e);
        },
      };
      this.pending.add(p);
      this.idSpace(key).slots[invokeId] = p;
      this.attempt(p);
    });
  }

  /** Only from the node the requests were sent to: anyone else cannot speak for that route. */
  private onNetworkReject(ip: string, port: number, reason: number, network: number): void {
    this.counters.networkRejects++;
    const hit = [...this.pending].filter(
      (p) => p.dest.ip === ip && p.dest.port === port && p.dest.network === network,
    );
    for (const p of hit) p.reject(networkRejectFrom(`${ip}:${port}`, network, reason));
  }

  private finish(p: Pending, timedOut: boolean): void {
    if (p.timer) clearTimeout(p.timer);
    p.timer = undefined;
    this.pending.delete(p);
    const s = this.ids.get(p.key);
    if (s?.slots[p.invokeId] === p) s.slots[p.invokeId] = undefined;
    this.releaseId(p.key, p.invokeId, timedOut);
  }

  private attempt(p: Pending): void {
    if (this.closed) return;
    p.attempts++;
    if (p.attempts > 1) this.counters.retries++;
    p.seg = undefined;
    this.sendRaw(p.datagram, p.dest.ip, p.dest.port);
    this.arm(p);
  }

  private arm(p: Pending): void {
    if (p.timer) clearTimeout(p.timer);
    p.timer = setTimeout(() => {
      p.timer = undefined;
      if (p.attempts < p.maxAttempts) {
        this.attempt(p);
        return;
      }
      this.counters.timeouts++;
      p.reject(timeoutError(p.label, p.attempts));
    }, p.timeoutMs);
  }

  // ---- receiving ----------------------------------------------------------------------------

  /** Entry point for every datagram; nothing thrown here may escape (malformed input is counted). */
  onDatagram(msg: Buffer, ip: string, port: number): void {
    this.counters.datagramsIn++;
    try {
      this.handle(decodeDatagram(msg, ip, port), ip, port);
    } catch (err) {
      this.counters.malformed++;
      if (!(err instanceof DecodeError))
        this.opts.log.debug({ err, from: `${ip}:${port}` }, "datagram handling failed");
    }
  }

  private handle(d: Decoded, fromIp: string, fromPort: number): void {
    if (d.bvlcFunction === Bvlc.RESULT) {
      if (this.bbmd && fromIp === this.bbmd.ip && fromPort === this.bbmd.port && d.result !== undefined) {
        // 0x0030 = Register-Foreign-Device NAK; other NAKs (e.g. to Distribute-Broadcast) are logged.
        if (d.result === 0 || d.result === 0x30) this.bbmdWaiter?.(d.result);
        else this.opts.log.debug({ result: d.result }, "BVLC-Result from BBMD");
      }
      return;
    }
    if (!d.npdu || !d.apdu) return;
    if (d.npdu.networkMessage !== undefined) {
      // Reject-Message-To-Network (reason, DNET): a router will not deliver to that network, so
      // the requests waiting there fail now with that reason instead of running into timeouts.
      if (d.npdu.networkMessage === REJECT_MESSAGE_TO_NETWORK && d.apdu.length >= 3)
        this.onNetworkReject(d.ip, d.port, d.apdu[0] as number, d.apdu.readUInt16BE(1));
      return; // other network-layer messages: nothing to do for a client
    }
    // A message for another network that reached us (we are not a router) is not ours.
    if (d.npdu.dnet !== undefined && d.npdu.dnet !== GLOBAL_NETWORK) return;
    const apdu = decodeApdu(d.apdu);
    const network = d.npdu.snet ?? null;
    const mac = d.npdu.sadr ?? null;
    const src: Destination = { ip: d.ip, port: d.port, network, mac };
    switch (apdu.type) {
      case Pdu.UNCONFIRMED_REQUEST:
        this.onUnconfirmed(apdu.service, apdu.body, src);
        return;
      case Pdu.CONFIRMED_REQUEST:
        this.onConfirmedRequest(apdu.invokeId, apdu.service, apdu.segmented, apdu.body, src);
        return;
      default:
        break;
    }
    const key = peerKey(d.ip, d.port, network, mac);
    const p = this.ids.get(key)?.slots[apdu.invokeId];
    if (!p) {
      this.counters.lateOrUnmatched++;
      return;
    }
    switch (apdu.type) {
      case Pdu.SIMPLE_ACK:
        if (apdu.service !== p.service) return void this.counters.lateOrUnmatched++;
        p.resolve({ service: apdu.service, body: Buffer.alloc(0) });
        return;
      case Pdu.COMPLEX_ACK:
        if (apdu.service !== p.service) return void this.counters.lateOrUnmatched++;
        if (!apdu.segmented) {
          if (p.accept && !p.accept(apdu.body)) return void this.counters.lateOrUnmatched++;
          // No copy: every datagram from dgram has its own memory, nothing reuses it after us.
          p.resolve({ service: apdu.service, body: apdu.body });
          return;
        }
        this.onSegment(p, apdu.seq, apdu.window, apdu.moreFollows, apdu.body);
        return;
      case Pdu.ERROR: {
        if (apdu.service !== p.service) return void this.counters.lateOrUnmatched++;
        const e = decodeErrorBody(apdu.body);
        p.reject(bacnetErrorFrom(e.errorClass, e.errorCode));
        return;
      }
      case Pdu.REJECT:
        p.reject(rejectFrom(apdu.reason ?? 0));
        return;
      case Pdu.ABORT:
        if (!apdu.fromServer) return;
        p.reject(abortFrom(apdu.reason ?? 0));
        return;
      default:
        return;
    }
  }

  private onSegment(p: Pending, seq: number, proposedWindow: number, more: boolean, body: Buffer): void {
    const window = Math.max(1, Math.min(proposedWindow || 1, MAX_SEGMENT_WINDOW));
    if (!p.seg) {
      if (seq !== 0) return; // a stray segment of an older attempt
      p.seg = { chunks: [], expected: 0, windowStart: 0, window, bytes: 0, early: new Map(), nakFor: -1 };
    }
    const s = p.seg;
    const ahead = (seq - s.expected) & 0xff;
    if (ahead !== 0) {
      if (ahead < s.window) {
        // Reordered on the way (a congested or multi-path network): kept for when the gap fills.
        // A server resends only after a negative ACK or its own segment timeout, which outlasts
        // our APDU timeout on many devices; dropping these meant a reordering network broke
        // every segmented answer. One NAK per gap asks for the missing one.
        if (!s.early.has(seq)) s.early.set(seq, { body: Buffer.from(body), more });
        if (s.nakFor !== s.expected) {
          s.nakFor = s.expected;
          this.sendApdu(p.dest, segmentAck(p.invokeId, (s.expected - 1) & 0xff, s.window, true), false);
        }
        this.arm(p);
      }
      // Behind `expected`: a duplicate (a late copy, or a resend of what we hold): nothing to do.
      return;
    }
    // In order: take it and every early segment that now follows without a gap.
    let chunk: { body: Buffer; more: boolean } | undefined = { body: Buffer.from(body), more };
    let ackAt = -1;
    let last = false;
    while (chunk) {
      s.chunks.push(chunk.body);
      s.bytes += chunk.body.length;
      if (s.bytes > MAX_REASSEMBLY_BYTES) {
        p.reject(
          new BacnetError(GW_ERR.BUFFER_OVERFLOW, `segmented reply to ${p.label} is too large`, "local"),
        );
        return;
      }
      const pos = s.expected;
      s.expected++;
      if (!chunk.more || pos === 0 || pos - s.windowStart + 1 >= s.window) {
        ackAt = pos;
        s.windowStart = pos + 1;
      }
      if (!chunk.more) {
        last = true;
        break;
      }
      chunk = s.early.get(s.expected & 0xff);
      s.early.delete(s.expected & 0xff);
    }
    if (ackAt >= 0) this.sendApdu(p.dest, segmentAck(p.invokeId, ackAt & 0xff, s.window, false), false);
    if (last) {
      const whole = Buffer.concat(s.chunks);
      if (p.accept && !p.accept(whole)) {
        // A whole late transfer of another request's answer: forget it, keep waiting for ours.
        this.counters.lateOrUnmatched++;
        p.seg = undefined;
        this.arm(p);
        return;
      }
      p.resolve({ service: p.service, body: whole });
      return;
    }
    this.arm(p); // segment timeout restarts with every segment
  }

  private onUnconfirmed(service: number, body: Buffer, src: Destination): void {
    if (service === Service.I_AM) {
      const iam = decodeIAm(body);
      this.safeEmit("iam", {
        ...iam,
        ip: src.ip,
        port: src.port,
        network: src.network ?? null,
        mac: macToHex(src.mac),
      } satisfies IAmEvent);
    } else if (service === Service.UNCONFIRMED_COV_NOTIFICATION) {
      this.safeEmit("cov", { ...decodeCovNotification(body), confirmed: false } satisfies CovEvent);
    }
  }

  private onConfirmedRequest(
    invokeId: number,
    service: number,
    segmented: boolean,
    body: Buffer,
    src: Destination,
  ): void {
    if (service === Service.CONFIRMED_COV_NOTIFICATION && !segmented) {
      const cov = decodeCovNotification(body);
      // The device waits for this SimpleACK; the library never sends it for us.
      this.sendApdu(src, simpleAck(invokeId, service), false);
      this.safeEmit("cov", { ...cov, confirmed: true } satisfies CovEvent);
      return;
    }
    // We are a client: every other service is politely rejected (unrecognized-service).
    this.sendApdu(src, rejectPdu(invokeId, 9), false);
  }

  private safeEmit(event: string, payload: unknown): void {
    try {
      this.emit(event, payload);
    } catch (err) {
      this.opts.log.warn({ err, event }, "listener failed");
    }
  }
}
