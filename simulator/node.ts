// One BACnet/IP node of the simulator: the UDP socket(s) bound to one address and port, the BVLL
// (Annex J) and network layer (clause 6) in front of either one local device or, in router mode,
// any number of devices on virtual remote networks. It also applies the configured packet loss and
// latency, and swallows malformed datagrams (counted, never thrown): a simulator that dies on bad
// input would be a worse test bed than the devices it imitates.
import dgram from "node:dgram";
import type { Logger } from "../common/logger.ts";
import {
  Bvlc,
  DecodeError,
  decodeNpdu,
  finishBvll,
  type NetAddress,
  NetMsg,
  type Npdu,
  Writer,
  writeBvllNpdu,
} from "./codec.ts";
import type { DeviceTransport, Peer, SimDevice } from "./device.ts";

export interface NodeCounters {
  dropped: number;
  malformed: number;
  datagramsReceived: number;
  datagramsSent: number;
  sendErrors: number;
  /** Datagrams sent twice by the duplicate impairment. */
  duplicated: number;
  /** Exceptions other than DecodeError while handling a datagram: simulator bugs, never expected. */
  internalErrors: number;
}

export interface NodeOptions {
  address: string;
  port: number;
  /** Also listen on this address (a subnet broadcast) so broadcast Who-Is reaches the device. */
  broadcastAddress: string | undefined;
  rand: () => number;
  log: Logger;
}

/** Per-device impairments, applied where the node hands datagrams to and from the device. */
export interface Impairment {
  latencyMs: number;
  lossRate: number;
  /** Extra random delay 0..jitterMs per datagram: replies overtake each other (reordering). */
  jitterMs: number;
  /** Probability that a datagram is sent twice, the copy later (a duplicating network or router). */
  duplicateRate: number;
  /** The copy comes 1..duplicateDelayMs after the original. */
  duplicateDelayMs: number;
}

const frame = new Writer(2048);

export class BipNode implements DeviceTransport {
  readonly opts: NodeOptions;
  readonly counters: NodeCounters;
  /** The device this node is, when it is not a router. */
  local: SimDevice | undefined;
  /** Router mode: network number → MAC (1 byte) → device. */
  readonly routed = new Map<number, Map<number, SimDevice>>();
  readonly impairments = new Map<SimDevice, Impairment>();
  socket: dgram.Socket | undefined;
  readonly broadcastSockets: dgram.Socket[] = [];
  boundPort = 0;
  closed = false;

  constructor(opts: NodeOptions, counters: NodeCounters) {
    this.opts = opts;
    this.counters = counters;
  }

  get isRouter(): boolean {
    return this.routed.size > 0;
  }

  get address(): string {
    return this.opts.address;
  }

  addLocal(device: SimDevice, imp: Impairment): void {
    this.local = device;
    this.impairments.set(device, imp);
  }

  addRouted(network: number, mac: number, device: SimDevice, imp: Impairment): void {
    let net = this.routed.get(network);
    if (!net) {
      net = new Map();
      this.routed.set(network, net);
    }
    net.set(mac, device);
    this.impairments.set(device, imp);
  }

  async start(): Promise<void> {
    const socket = dgram.createSocket({ type: "udp4", reuseAddr: false });
    this.socket = socket;
    socket.on("message", (msg, rinfo) => this.onMessage(msg, rinfo.address, rinfo.port));
    socket.on("error", (err) => this.opts.log.warn({ err, address: this.address }, "socket error"));
    await bind(socket, this.opts.port, this.opts.address);
    socket.setBroadcast(true);
    this.boundPort = socket.address().port;
    const bcast = this.opts.broadcastAddress;
    if (bcast && bcast !== this.opts.address && this.opts.address !== "0.0.0.0") {
      // Linux delivers a subnet broadcast only to sockets bound to that address or to 0.0.0.0, and
      // to every such socket that set SO_REUSEADDR, so each device of the subnet gets its copy. The
      // limited broadcast 255.255.255.255 (what many tools send by default) needs its own socket.
      const addresses = bcast === "255.255.255.255" ? [bcast] : [bcast, "255.255.255.255"];
      for (const a of addresses) {
        const b = dgram.createSocket({ type: "udp4", reuseAddr: true });
        this.broadcastSockets.push(b);
        b.on("message", (msg, rinfo) => this.onMessage(msg, rinfo.address, rinfo.port));
        b.on("error", (err) => this.opts.log.warn({ err, address: a }, "broadcast socket error"));
        await bind(b, this.boundPort, a);
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([this.socket, ...this.broadcastSockets].map((s) => (s ? closeSocket(s) : undefined)));
  }

  // -------------------------------------------------------------------------------------------
  // Receive.

  onMessage(msg: Buffer, ip: string, port: number): void {
    this.counters.datagramsReceived++;
    // Our own broadcasts come back on the broadcast socket; they are not requests.
    if (port === this.boundPort && ip === this.opts.address) return;
    try {
      this.handle(msg, ip, port);
    } catch (err) {
      this.counters.malformed++;
      this.counters.dropped++;
      if (!(err instanceof DecodeError)) {
        this.counters.internalErrors++;
        this.opts.log.warn({ err }, "datagram handling failed");
      }
    }
  }

  private handle(msg: Buffer, ip: string, port: number): void {
    if (msg.length < 4 || msg[0] !== 0x81) throw new DecodeError("not BACnet/IP");
    if (msg.readUInt16BE(2) !== msg.length) throw new DecodeError("BVLL length mismatch");
    const fn = msg[1] as number;
    let npduStart = 4;
    let srcIp = ip;
    let srcPort = port;
    switch (fn) {
      case Bvlc.originalUnicast:
      case Bvlc.originalBroadcast:
        break;
      case Bvlc.forwardedNpdu:
        // Forwarded by a BBMD: the originator's B/IP address travels in the BVLL (J.2.5).
        if (msg.length < 10) throw new DecodeError("truncated Forwarded-NPDU");
        srcIp = `${msg[4]}.${msg[5]}.${msg[6]}.${msg[7]}`;
        srcPort = msg.readUInt16BE(8);
        npduStart = 10;
        break;
      case Bvlc.writeBdt:
      case Bvlc.readBdt:
      case Bvlc.registerForeignDevice:
      case Bvlc.readFdt:
      case Bvlc.deleteFdtEntry:
      case Bvlc.distributeBroadcast:
        // We are not a BBMD: answer with the function's NAK result code (J.2.1.1).
        if (this.anyOnline()) this.sendBvlcResult(ip, port, BVLC_NAK[fn] as number);
        return;
      default:
        return; // results, BDT/FDT acks, secure BVLL: nothing for a device to do
    }
    const npdu = decodeNpdu(msg, npduStart, msg.length);
    const peer: Peer = {
      ip: srcIp,
      port: srcPort,
      route: npdu.snet !== undefined ? { net: npdu.snet, adr: npdu.sadr as Buffer } : undefined,
    };
    if (npdu.messageType !== undefined) {
      if (this.isRouter) this.networkMessage(msg, npdu, peer);
      return;
    }
    if (npdu.offset >= msg.length) throw new DecodeError("empty APDU");
    if (npdu.dnet === undefined || npdu.dnet === 0xffff) {
      if (this.local) this.deliver(this.local, msg, npdu.offset, peer);
      if (npdu.dnet === 0xffff) for (const net of this.routed.values()) this.deliverAll(net, msg, npdu, peer);
      return;
    }
    if (!this.isRouter) return; // addressed to a remote network; a plain device is not a router
    const net = this.routed.get(npdu.dnet);
    if (!net) {
      this.sendNetworkReject(peer, 1, npdu.dnet);
      return;
    }
    const dadr = npdu.dadr as Buffer;
    if (dadr.length === 0) {
      this.deliverAll(net, msg, npdu, peer);
      return;
    }
    const dev = dadr.length === 1 ? net.get(dadr[0] as number) : undefined;
    if (dev) this.deliver(dev, msg, npdu.offset, peer);
  }

  private deliverAll(net: Map<number, SimDevice>, msg: Buffer, npdu: Npdu, peer: Peer): void {
    for (const dev of net.values()) this.deliver(dev, msg, npdu.offset, peer);
  }

  private deliver(dev: SimDevice, msg: Buffer, offset: number, peer: Peer): void {
    if (!dev.online) {
      this.counters.dropped++;
      return;
    }
    const imp = this.impairments.get(dev) as Impairment;
    if (imp.lossRate > 0 && this.opts.rand() < imp.lossRate) {
      this.counters.dropped++;
      return;
    }
    dev.receive(msg, offset, msg.length, peer);
  }

  private anyOnline(): boolean {
    if (this.local?.online) return true;
    for (const net of this.routed.values()) for (const d of net.values()) if (d.online) return true;
    return false;
  }

  // -------------------------------------------------------------------------------------------
  // Network layer messages (router mode, clause 6.4).

  private networkMessage(msg: Buffer, npdu: Npdu, peer: Peer): void {
    if (npdu.messageType !== NetMsg.whoIsRouterToNetwork) return;
    const left = msg.length - npdu.offset;
    let nets = [...this.routed.keys()];
    if (left >= 2) {
      const asked = msg.readUInt16BE(npdu.offset);
      if (!this.routed.has(asked)) return; // we have no route to it and no other port to ask on
      nets = [asked];
    }
    const send = (ip: string, port: number, route: NetAddress | undefined, bvlc: number) => {
      const w = frame.reset();
      writeBvllNpdu(w, { bvlc, dest: route, networkMessage: NetMsg.iAmRouterToNetwork });
      for (const n of nets) w.u16(n);
      finishBvll(w);
      this.transmit(w.take(), ip, port, 0);
    };
    // I-Am-Router-To-Network is a broadcast (clause 6.4.2); the requester also gets it directly so
    // a client that cannot hear broadcasts (one socket bound to a unicast address) still learns it.
    send(peer.ip, peer.port, peer.route, Bvlc.originalUnicast);
    const bcast = this.opts.broadcastAddress;
    if (bcast) send(bcast, this.boundPort, undefined, Bvlc.originalBroadcast);
  }

  private sendNetworkReject(peer: Peer, reason: number, dnet: number): void {
    const w = frame.reset();
    writeBvllNpdu(w, {
      bvlc: Bvlc.originalUnicast,
      dest: peer.route,
      networkMessage: NetMsg.rejectMessageToNetwork,
    });
    w.u8(reason);
    w.u16(dnet);
    finishBvll(w);
    this.transmit(w.take(), peer.ip, peer.port, 0);
  }

  private sendBvlcResult(ip: string, port: number, code: number): void {
    const b = Buffer.from([0x81, Bvlc.result, 0x00, 0x06, code >> 8, code & 0xff]);
    this.transmit(b, ip, port, 0);
  }

  // -------------------------------------------------------------------------------------------
  // Send.

  send(device: SimDevice, peer: Peer, apdu: Buffer, expectingReply: boolean): void {
    const imp = this.impairments.get(device) as Impairment;
    if (imp.lossRate > 0 && this.opts.rand() < imp.lossRate) {
      this.counters.dropped++;
      return;
    }
    const w = frame.reset();
    writeBvllNpdu(w, {
      bvlc: Bvlc.originalUnicast,
      dest: peer.route,
      source: device.routedAs,
      expectingReply,
    });
    w.bytes(apdu);
    finishBvll(w);
    this.transmitImpaired(w.take(), peer.ip, peer.port, imp);
  }

  broadcast(device: SimDevice, apdu: Buffer): boolean {
    const bcast = this.opts.broadcastAddress;
    if (!bcast) return false;
    const imp = this.impairments.get(device) as Impairment;
    if (imp.lossRate > 0 && this.opts.rand() < imp.lossRate) {
      this.counters.dropped++;
      return true;
    }
    const w = frame.reset();
    // A routed device's broadcast reaches the B/IP network as the router forwards a global
    // broadcast: DNET 0xFFFF kept, SNET/SADR naming the device (clause 6.5.4).
    writeBvllNpdu(w, {
      bvlc: Bvlc.originalBroadcast,
      destBroadcastNet: device.routedAs ? 0xffff : undefined,
      source: device.routedAs,
    });
    w.bytes(apdu);
    finishBvll(w);
    this.transmitImpaired(w.take(), bcast, this.boundPort, imp);
    return true;
  }

  /** Latency, jitter (reordering) and duplicates of a device's datagram. */
  private transmitImpaired(datagram: Buffer, ip: string, port: number, imp: Impairment): void {
    const rand = this.opts.rand;
    const delay = imp.latencyMs + (imp.jitterMs > 0 ? Math.floor(rand() * imp.jitterMs) : 0);
    this.transmit(datagram, ip, port, delay);
    if (imp.duplicateRate > 0 && rand() < imp.duplicateRate) {
      // The copy comes after the original, often after the requester has settled that request and
      // moved on: a late copy must not pass for the answer to a newer request.
      this.counters.duplicated++;
      this.transmit(datagram, ip, port, delay + 1 + Math.floor(rand() * imp.duplicateDelayMs));
    }
  }

  private transmit(datagram: Buffer, ip: string, port: number, latencyMs: number): void {
    const socket = this.socket;
    if (!socket || this.closed) return;
    const go = () => {
      if (this.closed) return;
      this.counters.datagramsSent++;
      socket.send(datagram, port, ip, (err) => {
        if (err) this.counters.sendErrors++;
      });
    };
    if (latencyMs > 0) setTimeout(go, latencyMs).unref();
    else go();
  }
}

/** BVLC-Result NAK codes by the function that was refused (J.2.1.1). */
const BVLC_NAK: Record<number, number> = {
  [Bvlc.writeBdt]: 0x0010,
  [Bvlc.readBdt]: 0x0020,
  [Bvlc.registerForeignDevice]: 0x0030,
  [Bvlc.readFdt]: 0x0040,
  [Bvlc.deleteFdtEntry]: 0x0050,
  [Bvlc.distributeBroadcast]: 0x0060,
};

function bind(socket: dgram.Socket, port: number, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    socket.once("error", onError);
    socket.bind(port, address, () => {
      socket.off("error", onError);
      resolve();
    });
  });
}

function closeSocket(socket: dgram.Socket): Promise<void> {
  return new Promise((resolve) => {
    try {
      socket.close(() => resolve());
    } catch {
      resolve(); // already closed
    }
  });
}
