// The BACnet engine: discovery, catalogue, poll scheduler with availability, COV and writes, built
// on our own endpoint (client.ts). It owns every BACnet conversation of the gateway and reports
// outcomes as events and data; it never touches MQTT and never lets a device failure escape as a
// crash. Implements `BacnetEngine` from types.ts.
import { EventEmitter } from "node:events";
import { CodedError } from "../../common/errors.ts";
import { createLogger, type Logger } from "../../common/logger.ts";
import {
  objectTypeName,
  type PointMetaPayload,
  parsePointId,
  pointId,
  type ReadingPayload,
  type Value,
} from "../../contract/index.ts";
import { BacnetClient, type CovEvent, type IAmEvent } from "./client.ts";
import {
  ARRAY_ALL,
  ackObjectId,
  type DecodedValue,
  type Destination,
  decodeReadPropertyAck,
  decodeReadPropertyMultipleAck,
  decodeRpmAckInOrder,
  encodeReadProperty,
  encodeReadPropertyMultiple,
  encodeSubscribeCov,
  encodeWriteProperty,
  hexToMac,
  type ObjectRef,
  type PropertyOutcome,
  type PropertyRef,
  parseHostPort,
  rpAckPropertyId,
  Service,
} from "./codec.ts";
import { BacnetError, bacnetErrorFrom, codeOf, GW_ERR, unreached } from "./errors.ts";
import { resolveInterface } from "./interfaces.ts";
import type {
  BacnetEngine,
  DeviceAddress,
  DeviceCatalogue,
  DeviceOptions,
  DiscoveredDevice,
  DiscoverOptions,
  EngineEvents,
  EngineOptions,
  EngineStats,
  WriteOutcome,
} from "./types.ts";
import {
  bitAt,
  COV_TYPES,
  encodeForType,
  isAnalog,
  isBinary,
  isMultistate,
  POINT_TYPES,
  Prop,
  presentValue,
  propertyId,
  SEGMENTATION_NAMES,
  ServiceBit,
  statusFlags,
  toJson,
  unitsName,
  valuesToJson,
} from "./values.ts";

type Resolved = Required<
  Omit<
    EngineOptions,
    | "interface"
    | "broadcast"
    | "bbmd"
    | "targets"
    | "broadcastPort"
    | "covConfirmed"
    | "probeMaxS"
    | "covSilenceS"
  >
> &
  EngineOptions;

interface Known {
  device: DiscoveredDevice;
  dest: Destination;
  rpm: boolean | null;
  segmentedOk: boolean;
}

interface CovSub {
  point: string;
  object: ObjectRef;
  processId: number;
  active: boolean;
  /** A SubscribeCOV went out for it: it must be cancelled on shutdown even if never confirmed. */
  sent: boolean;
  /** The SubscribeCOV in flight, awaited before cancelling so a late renewal cannot outlive stop(). */
  inflight?: Promise<unknown>;
  lastNotification: number;
  /** A (re)subscription was acknowledged and its initial notification has not arrived yet. */
  awaitingInitial: boolean;
  renewTimer?: NodeJS.Timeout;
  silentTimer?: NodeJS.Timeout;
}

interface Managed {
  cat: DeviceCatalogue;
  dest: Destination;
  options: DeviceOptions;
  /** "unknown" until the first answer: managing a device does not prove it is there. */
  state: Availability;
  failures: number;
  /** When the device last answered anything (a reply, an Error/Reject, a COV notification), on the
   * monotonic clock (`performance.now()`); 0 = never. */
  lastHeard: number;
  /** Liveness check: probes a device that has been quiet for `livenessS` (all-COV devices). */
  livenessTimer?: NodeJS.Timeout;
  pollTimers: Map<number, NodeJS.Timeout>;
  probeTimer?: NodeJS.Timeout;
  probeDelayMs: number;
  covs: Map<string, CovSub>;
  /** Points polled because COV failed them: refused for good, or silent (retried after an outage). */
  covFallback: Map<string, "refused" | "silent">;
  stopped: boolean;
}

type Availability = "unknown" | "online" | "offline";

type PropResult = { values: DecodedValue[]; error?: undefined } | { values?: undefined; error: BacnetError };

type Spec = { object: ObjectRef; properties: PropertyRef[] };

/**
 * One point list's poll, prepared once and reused every cycle: the scheduler asks a device for the
 * same points again and again, so names are parsed, RPM batches sized and request bodies encoded
 * only when the list, the device's address record or its max APDU changes.
 */
interface PollPlan {
  k: Known;
  maxApdu: number;
  points: string[];
  /** Names that are not point ids: reported as bad readings without asking the device. */
  unknown: string[];
  objs: { point: string; object: ObjectRef }[];
  specs: Spec[];
  /** RPM batches: consecutive runs of `specs` starting at `first`, with their encoded request. */
  batches: { first: number; specs: Spec[]; body: Buffer; label: string; accept: (body: Buffer) => boolean }[];
}

/**
 * Whether an RPM-ACK body answers a request for these objects: its first object is one of them
 * (devices may answer in another order). Another request's late answer under the same invoke id
 * names other objects and is not taken (BacnetClient keeps waiting for the right one).
 */
function rpmAccept(specs: readonly { object: ObjectRef }[]): (body: Buffer) => boolean {
  const oids = new Set(specs.map((s) => s.object.type * 0x400000 + s.object.instance));
  // Device 4194303 means "the device you are": it answers with its own instance.
  const anyDevice = specs.some((s) => s.object.type === 8 && s.object.instance === 0x3fffff);
  return (body) => {
    const oid = ackObjectId(body);
    return oids.has(oid) || (anyDevice && oid >>> 22 === 8);
  };
}

/** What a poll asks of every point (shared: nothing mutates a spec's property list). */
const POLL_PROPERTIES: PropertyRef[] = [{ id: Prop.PRESENT_VALUE }, { id: Prop.STATUS_FLAGS }];

const DEFAULTS = {
  port: 47808,
  apduTimeoutMs: 3000,
  retries: 2,
  perDeviceInFlight: 4,
  globalInFlight: 64,
  offlineAfterFailures: 3,
  pollIntervalS: 10,
  cov: true,
  covLifetimeS: 300,
  livenessS: 60,
  minWritePriority: 8,
  defaultWritePriority: 8,
  writeAllowlist: [] as string[],
};

// "" for "whole property": decoded answers say 0xFFFFFFFF, requests say undefined; both mean the same.
const resKey = (o: ObjectRef, p: PropertyRef) =>
  `${o.type}:${o.instance}:${p.id}:${p.index === undefined || p.index === ARRAY_ALL ? "" : p.index}`;

/** Response bytes a property is likely to take; used to size RPM batches to the device's max APDU. */
function estimate(p: PropertyRef): number {
  switch (p.id) {
    case Prop.OBJECT_NAME:
    case Prop.DESCRIPTION:
    case Prop.ACTIVE_TEXT:
    case Prop.INACTIVE_TEXT:
    case Prop.VENDOR_NAME:
    case Prop.MODEL_NAME:
    case Prop.LOCATION:
    case Prop.FIRMWARE_REVISION:
    case Prop.APPLICATION_SOFTWARE_VERSION:
      return 48;
    case Prop.STATE_TEXT:
      return p.index === 0 ? 8 : 160;
    case Prop.PRIORITY_ARRAY:
      return p.index === 0 ? 8 : 60;
    case Prop.OBJECT_LIST:
      return p.index === undefined ? 2000 : 10;
    default:
      // REAL/enumerated/unsigned (≤ 5 bytes) or a status-flags bit string (4 bytes), with margin.
      return 6;
  }
}

export class Engine extends EventEmitter implements BacnetEngine {
  private readonly opts: Resolved;
  private readonly log: Logger;
  private client?: BacnetClient;
  private iface: { name: string | null; address: string; broadcast: string | null } = {
    name: null,
    address: "0.0.0.0",
    broadcast: null,
  };
  private readonly known = new Map<number, Known>();
  private readonly duplicates = new Map<number, DeviceAddress[]>();
  private readonly managedDevices = new Map<number, Managed>();
  private readonly covByProcess = new Map<number, { device: number; sub: CovSub }>();
  private nextProcessId = 1;
  private started = false;
  private stopping = false;
  private readonly counters = {
    readsTotal: 0,
    errorsTotal: 0,
    overrunsTotal: 0,
    covNotificationsTotal: 0,
    lagMs: 0,
  };
  private readonly errorsByCode: Record<string, number> = {};
  private readonly readWindow: { t: number; n: number }[] = [];
  private scanCounter = 0;

  constructor(options: EngineOptions = {}) {
    super();
    this.opts = { ...DEFAULTS, ...stripUndefined(options) } as Resolved;
    this.log = createLogger("bacnet");
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  async start(): Promise<void> {
    if (this.started) return;
    if (this.listenerCount("error") === 0)
      this.on("error", (err: Error) => this.log.warn({ err }, "engine error"));
    const iface = resolveInterface(this.opts.interface, this.opts.broadcast);
    this.iface = iface;
    const port = this.opts.port;
    const client = new BacnetClient({
      address: iface.address,
      port,
      broadcast: iface.broadcast,
      broadcastPort: this.opts.broadcastPort ?? (port === 0 ? 47808 : port),
      apduTimeoutMs: this.opts.apduTimeoutMs,
      retries: this.opts.retries,
      perDeviceInFlight: Math.min(this.opts.perDeviceInFlight, 255),
      globalInFlight: this.opts.globalInFlight,
      listenBroadcast: process.platform !== "win32",
      log: this.log,
    });
    client.on("error", (err: Error) => this.emit("error", err));
    client.on("iam", (e: IAmEvent) => this.onIAm(e));
    client.on("cov", (e: CovEvent) => this.onCov(e));
    await client.start();
    this.client = client;
    this.started = true;
    if (this.opts.bbmd) {
      const b = this.opts.bbmd;
      try {
        await client.registerForeignDevice(b.address, b.port, b.ttlSeconds);
      } catch (err) {
        // Registration keeps retrying at half the TTL; discovery still works for unicast targets.
        this.log.warn({ err }, "foreign-device registration failed; will retry");
        this.emit("error", err as Error);
      }
    }
    this.log.info(
      { address: iface.address, port: client.boundPort, interface: iface.name, broadcast: iface.broadcast },
      "BACnet endpoint ready",
    );
  }

  async stop(): Promise<void> {
    if (!this.started || this.stopping) return;
    this.stopping = true;
    await Promise.allSettled([...this.managedDevices.keys()].map((d) => this.unmanage(d)));
    await this.client?.stop();
    this.started = false;
  }

  endpoint(): { address: string; port: number; interface: string | null; broadcast: string | null } {
    return {
      address: this.iface.address,
      port: this.client?.boundPort ?? 0,
      interface: this.iface.name,
      broadcast: this.iface.broadcast,
    };
  }

  private c(): BacnetClient {
    if (!this.client || this.stopping)
      throw new BacnetError(GW_ERR.STOPPED, "BACnet engine is not running", "local");
    return this.client;
  }

  // ---- discovery ----------------------------------------------------------------------------

  private onIAm(e: IAmEvent): void {
    const dev: DiscoveredDevice = {
      deviceInstance: e.deviceInstance,
      address: `${e.ip}:${e.port}`,
      network: e.network,
      mac: e.mac,
      maxApdu: e.maxApdu,
      segmentation: SEGMENTATION_NAMES[e.segmentation] ?? "none",
      vendorId: e.vendorId,
    };
    const prev = this.known.get(e.deviceInstance);
    const dest: Destination = { ip: e.ip, port: e.port, network: e.network, mac: hexToMac(e.mac) };
    if (prev) {
      const same =
        prev.device.address === dev.address &&
        prev.device.network === dev.network &&
        prev.device.mac === dev.mac;
      const m = this.managedDevices.get(e.deviceInstance);
      if (m && m.state === "offline" && !m.stopped) {
        // A lost device announces itself again (rebooted, or moved to a new address by DHCP):
        // take the new address, report it as discovered again and probe now instead of waiting.
        if (!same) {
          prev.device = { ...prev.device, address: dev.address, network: dev.network, mac: dev.mac };
          prev.dest = dest;
          m.dest = dest;
          m.cat = { ...m.cat, address: dev.address, network: dev.network, mac: dev.mac };
        }
        this.emit("discovered", prev.device);
        if (m.probeTimer) clearTimeout(m.probeTimer);
        m.probeDelayMs = 0;
        this.probe(m);
        return;
      }
      if (!same) {
        const list = this.duplicates.get(e.deviceInstance) ?? [addrOf(prev.device)];
        if (!list.some((a) => a.address === dev.address && a.network === dev.network && a.mac === dev.mac)) {
          list.push(addrOf(dev));
          this.duplicates.set(e.deviceInstance, list);
          this.log.warn({ device: e.deviceInstance, addresses: list }, "duplicate device instance");
          this.emit("duplicate", e.deviceInstance, list);
        }
      }
      return;
    }
    this.known.set(e.deviceInstance, {
      device: dev,
      dest,
      rpm: null,
      segmentedOk: dev.segmentation === "both" || dev.segmentation === "transmit",
    });
    this.emit("discovered", dev);
  }

  async discover(options: DiscoverOptions = {}): Promise<DiscoveredDevice[]> {
    const client = this.c();
    const scanId = `scan-${++this.scanCounter}`;
    const low = options.low ?? 0;
    const high = options.high ?? 4_194_303;
    if (low < 0 || high > 4_194_303 || low > high)
      throw new CodedError("GW_ERR_BACNET_RANGE", `invalid instance range ${low}..${high}`);
    const unbounded = options.low === undefined && options.high === undefined;
    const chunk = options.chunkSize ?? (unbounded ? undefined : 100_000);
    const ranges: ([number, number] | null)[] = [];
    if (unbounded && options.chunkSize === undefined) ranges.push(null);
    else
      for (let a = low; a <= high; a += chunk ?? high - low + 1)
        ranges.push([a, Math.min(high, a + (chunk ?? high - low + 1) - 1)]);
    const repeats = Math.max(1, options.repeats ?? 2);
    const global = options.global ?? true;
    const targets = [...(options.targets ?? []), ...(this.opts.targets ?? [])].map((t) => parseHostPort(t));
    const broadcast = options.broadcast ?? this.iface.broadcast;
    const found = new Map<number, DiscoveredDevice>();
    const inRange = (n: number) => n >= low && n <= high;
    const onFound = (e: IAmEvent) => {
      if (!inRange(e.deviceInstance) || found.has(e.deviceInstance)) return;
      const k = this.known.get(e.deviceInstance);
      if (k) found.set(e.deviceInstance, k.device);
    };
    // Listen after the engine's own handler so `known` is already updated.
    client.on("iam", onFound);
    const total = ranges.length * repeats * (targets.length + 1);
    let sent = 0;
    const progress = (phase: "whois" | "listening" | "done") =>
      this.emit("progress", { scanId, phase, sent, total, found: found.size });
    try {
      for (let r = 0; r < repeats; r++) {
        for (const range of ranges) {
          const apdu = range ? client.whoIsApdu(range[0], range[1]) : client.whoIsApdu();
          if (broadcast || client.isForeignRegistered())
            client.broadcastApdu(apdu, { global, address: broadcast });
          sent++;
          for (const t of targets) {
            client.sendApdu({ ip: t.ip, port: t.port }, apdu, false);
            // A unicast global Who-Is asks a router at that address to forward it to its networks.
            if (global) client.sendApdu({ ip: t.ip, port: t.port, network: 0xffff }, apdu, false);
            sent++;
            // Pace long target lists: the answers come back while we send, and a burst of
            // thousands of I-Am would overflow the receive buffer.
            if (sent % 16 === 0) await new Promise((r) => setImmediate(r));
          }
          progress("whois");
          // Pace chunks so a large site answers in waves rather than one I-Am storm.
          if (ranges.length > 1) await sleep(20);
        }
        if (r < repeats - 1) await sleep(Math.min(500, (options.timeoutS ?? 3) * 250));
      }
      progress("listening");
      await sleep((options.timeoutS ?? 3) * 1000);
    } finally {
      client.off("iam", onFound);
    }
    // Devices already known before this scan (answers seen by another scan) count as found too.
    progress("done");
    return [...found.values()].sort((a, b) => a.deviceInstance - b.deviceInstance);
  }

  /** Finds one device by instance (known, or by a targeted Who-Is), for read/write by instance. */
  async locate(instance: number, timeoutS = 3): Promise<Known> {
    const k = this.known.get(instance);
    if (k) return k;
    const client = this.c();
    const waiter = new Promise<Known | undefined>((resolve) => {
      const t = setTimeout(() => {
        client.off("iam", on);
        resolve(undefined);
      }, timeoutS * 1000);
      const on = (e: IAmEvent) => {
        if (e.deviceInstance !== instance) return;
        clearTimeout(t);
        client.off("iam", on);
        resolve(this.known.get(instance));
      };
      client.on("iam", on);
    });
    const apdu = client.whoIsApdu(instance, instance);
    const targets = (this.opts.targets ?? []).map((t) => parseHostPort(t));
    for (let r = 0; r < 2; r++) {
      for (const t of targets) client.sendApdu({ ip: t.ip, port: t.port }, apdu, false);
      for (const t of targets) client.sendApdu({ ip: t.ip, port: t.port, network: 0xffff }, apdu, false);
      if (this.iface.broadcast || client.isForeignRegistered()) client.broadcastApdu(apdu, { global: true });
      const got = await Promise.race([waiter, sleep(Math.min(1000, timeoutS * 500)).then(() => undefined)]);
      if (got) return got;
    }
    const got = await waiter;
    if (!got)
      throw new BacnetError(GW_ERR.DEVICE_UNKNOWN, `device ${instance} did not answer Who-Is`, "timeout");
    return got;
  }

  /** Makes a device known without Who-Is (configuration, tests): address `ip:port`, optional network/MAC. */
  addDevice(device: DiscoveredDevice): void {
    const { ip, port } = parseHostPort(device.address);
    this.known.set(device.deviceInstance, {
      device,
      dest: { ip, port, network: device.network, mac: hexToMac(device.mac) },
      rpm: null,
      segmentedOk: device.segmentation === "both" || device.segmentation === "transmit",
    });
  }

  knownDevices(): DiscoveredDevice[] {
    return [...this.known.values()].map((k) => k.device);
  }

  duplicateDevices(): Map<number, DeviceAddress[]> {
    return new Map(this.duplicates);
  }

  private knownOrThrow(instance: number): Known {
    const k = this.known.get(instance);
    if (!k)
      throw new BacnetError(
        GW_ERR.DEVICE_UNKNOWN,
        `device ${instance} is not known; discover it first`,
        "local",
      );
    return k;
  }

  // ---- requests -----------------------------------------------------------------------------

  private countError(err: unknown): void {
    this.counters.errorsTotal++;
    const code = codeOf(err);
    this.errorsByCode[code] = (this.errorsByCode[code] ?? 0) + 1;
  }

  private countReads(n: number): void {
    this.counters.readsTotal += n;
    // One bucket per second: a per-call list would cost O(n) shifts at thousands of reads/s.
    const sec = Math.floor(Date.now() / 1000);
    const last = this.readWindow[this.readWindow.length - 1];
    if (last && last.t === sec) last.n += n;
    else this.readWindow.push({ t: sec, n });
    while (this.readWindow.length > 11) this.readWindow.shift();
  }

  async readPropertyRaw(
    k: Known,
    object: ObjectRef,
    prop: PropertyRef,
    opts: { retries?: number } = {},
  ): Promise<DecodedValue[]> {
    const oid = object.type * 0x400000 + object.instance;
    const anyDevice = object.type === 8 && object.instance === 0x3fffff;
    const r = await this.c().request(k.dest, Service.READ_PROPERTY, encodeReadProperty(object, prop), {
      label: `ReadProperty ${objectTypeName(object.type)}:${object.instance} ${prop.id} @${k.device.deviceInstance}`,
      retries: opts.retries,
      // Another request's answer under this invoke id (a late duplicate) is not taken: keep waiting.
      accept: (body) =>
        (anyDevice ? ackObjectId(body) >>> 22 === 8 : ackObjectId(body) === oid) &&
        rpAckPropertyId(body) === prop.id,
    });
    const ack = decodeReadPropertyAck(r.body);
    // A reply for another object/property is not ours (a confused device).
    if (
      ack.object.type !== object.type ||
      ack.object.instance !== object.instance ||
      ack.property !== prop.id
    )
      throw new BacnetError(
        GW_ERR.MALFORMED_REPLY,
        "ReadProperty answer does not match the request",
        "malformed",
      );
    return ack.values;
  }

  /**
   * Reads many properties with RPM batches sized to the device's max APDU; falls back to
   * ReadProperty when RPM is rejected/unsupported, and halves a batch when the answer would not fit.
   * Per-property errors come back as data; only "device did not answer" is thrown.
   */
  async readMany(
    k: Known,
    specs: { object: ObjectRef; properties: PropertyRef[] }[],
  ): Promise<Map<string, PropResult>> {
    const out = new Map<string, PropResult>();
    if (k.rpm !== false) {
      const batches = planBatches(k, specs);
      let firstError: unknown;
      await Promise.all(
        batches.map(async (b) => {
          try {
            await this.rpmBatch(k, b, out);
          } catch (err) {
            firstError ??= err;
          }
        }),
      );
      if (firstError) throw firstError;
      // rpmBatch may have learnt meanwhile that the device has no RPM.
      if ((k.rpm as boolean | null) !== false) return out;
      out.clear();
    }
    await Promise.all(specs.flatMap((s) => s.properties.map((p) => this.rpOne(k, s.object, p, out))));
    return out;
  }

  private async rpOne(
    k: Known,
    object: ObjectRef,
    p: PropertyRef,
    out: Map<string, PropResult>,
  ): Promise<void> {
    try {
      out.set(resKey(object, p), { values: await this.readPropertyRaw(k, object, p) });
    } catch (err) {
      if (unreached(err) || (err as BacnetError).code === GW_ERR.STOPPED) throw err;
      out.set(resKey(object, p), { error: err as BacnetError });
    }
  }

  private async rpmBatch(k: Known, batch: Spec[], out: Map<string, PropResult>): Promise<void> {
    if (k.rpm === false) return;
    try {
      const r = await this.c().request(
        k.dest,
        Service.READ_PROPERTY_MULTIPLE,
        encodeReadPropertyMultiple(batch),
        {
          label: `ReadPropertyMultiple (${batch.length} objects) @${k.device.deviceInstance}`,
          accept: rpmAccept(batch),
        },
      );
      const results = decodeReadPropertyMultipleAck(r.body);
      k.rpm = true;
      await this.absorbRpm(k, batch, results, out);
    } catch (err) {
      await this.rpmFailed(k, batch, err, out);
    }
  }

  /** An RPM answer into `out` by key; anything asked but not answered is read singly. */
  private async absorbRpm(
    k: Known,
    batch: Spec[],
    results: ReturnType<typeof decodeReadPropertyMultipleAck>,
    out: Map<string, PropResult>,
  ): Promise<void> {
    for (const o of results) {
      for (const p of o.properties) {
        const key = resKey(o.object, { id: p.id, index: p.index });
        if (p.error) {
          out.set(key, { error: bacnetErrorFrom(p.error.errorClass, p.error.errorCode) });
        } else out.set(key, { values: p.values });
      }
    }
    // A device that silently skips some.
    for (const s of batch)
      for (const p of s.properties) if (!out.has(resKey(s.object, p))) await this.rpOne(k, s.object, p, out);
  }

  /**
   * A failed RPM batch: no RPM at this device (→ ReadProperty), an answer too big (→ halves), or
   * anything else, which is thrown on.
   */
  private async rpmFailed(
    k: Known,
    batch: Spec[],
    err: unknown,
    out: Map<string, PropResult>,
  ): Promise<void> {
    const e = err as BacnetError;
    if (e.code === GW_ERR.SERVICE_NOT_SUPPORTED || (e.kind === "reject" && e.reason === 9)) {
      k.rpm = false;
      this.log.info(
        { device: k.device.deviceInstance },
        "ReadPropertyMultiple not supported; using ReadProperty",
      );
      return;
    }
    const tooBig =
      e.code === GW_ERR.SEGMENTATION_NOT_SUPPORTED ||
      e.code === GW_ERR.BUFFER_OVERFLOW ||
      e.kind === "reject";
    if (tooBig) {
      const props = batch.reduce((a, s) => a + s.properties.length, 0);
      if (props <= 1) {
        for (const s of batch) for (const p of s.properties) await this.rpOne(k, s.object, p, out);
        return;
      }
      // Shrink: split objects in half, or a single object's property list in half.
      let halves: { object: ObjectRef; properties: PropertyRef[] }[][];
      if (batch.length > 1) halves = [batch.slice(0, batch.length >> 1), batch.slice(batch.length >> 1)];
      else {
        const s = batch[0] as { object: ObjectRef; properties: PropertyRef[] };
        const m = s.properties.length >> 1;
        halves = [
          [{ object: s.object, properties: s.properties.slice(0, m) }],
          [{ object: s.object, properties: s.properties.slice(m) }],
        ];
      }
      for (const h of halves) await this.rpmBatch(k, h, out);
      return;
    }
    throw err;
  }

  // ---- catalogue ----------------------------------------------------------------------------

  /** Device-object properties only (no object list): what `scan` without `--points` shows. */
  async readDeviceInfo(device: DiscoveredDevice): Promise<Omit<DeviceCatalogue, "points" | "presentValues">> {
    let k = this.known.get(device.deviceInstance);
    if (
      !k ||
      k.device.address !== device.address ||
      k.device.network !== device.network ||
      k.device.mac !== device.mac
    ) {
      this.addDevice(device);
      k = this.known.get(device.deviceInstance) as Known;
    }
    const dev: ObjectRef = { type: 8, instance: device.deviceInstance };
    // Protocol_Services_Supported decides RPM vs RP before we try anything bigger.
    let supportsRpm = true;
    let supportsCov = true;
    try {
      const pss = await this.readPropertyRaw(k, dev, { id: Prop.PROTOCOL_SERVICES_SUPPORTED });
      supportsRpm = bitAt(pss[0]?.value, ServiceBit.READ_PROPERTY_MULTIPLE);
      supportsCov = bitAt(pss[0]?.value, ServiceBit.SUBSCRIBE_COV);
      k.rpm = supportsRpm ? k.rpm : false;
    } catch (err) {
      if (unreached(err) || (err as BacnetError).code === GW_ERR.STOPPED) throw err;
    }
    const devProps = [
      Prop.OBJECT_NAME,
      Prop.DESCRIPTION,
      Prop.LOCATION,
      Prop.VENDOR_NAME,
      Prop.VENDOR_IDENTIFIER,
      Prop.MODEL_NAME,
      Prop.FIRMWARE_REVISION,
      Prop.APPLICATION_SOFTWARE_VERSION,
      Prop.MAX_APDU_LENGTH_ACCEPTED,
      Prop.SEGMENTATION_SUPPORTED,
    ].map((id) => ({ id }));
    const dr = await this.readMany(k, [{ object: dev, properties: devProps }]);
    const dv = (id: number) => {
      const r = dr.get(resKey(dev, { id }));
      return r?.values ? toJson(r.values[0]) : null;
    };
    const str = (id: number) => {
      const v = dv(id);
      return typeof v === "string" ? v : null;
    };
    const apdu = dv(Prop.MAX_APDU_LENGTH_ACCEPTED);
    const maxApdu = typeof apdu === "number" && apdu >= 50 ? apdu : device.maxApdu;
    const segNum = dv(Prop.SEGMENTATION_SUPPORTED);
    const segmentation =
      typeof segNum === "number" ? (SEGMENTATION_NAMES[segNum] ?? device.segmentation) : device.segmentation;
    k.device = { ...k.device, maxApdu, segmentation };
    k.segmentedOk = segmentation === "both" || segmentation === "transmit";
    const vendorId = dv(Prop.VENDOR_IDENTIFIER);
    return {
      ...k.device,
      vendorId: typeof vendorId === "number" ? vendorId : device.vendorId,
      objectName: str(Prop.OBJECT_NAME),
      description: str(Prop.DESCRIPTION),
      location: str(Prop.LOCATION),
      vendorName: str(Prop.VENDOR_NAME),
      modelName: str(Prop.MODEL_NAME),
      firmwareRevision: str(Prop.FIRMWARE_REVISION),
      applicationSoftwareVersion: str(Prop.APPLICATION_SOFTWARE_VERSION),
      supportsRpm: (k.rpm as boolean | null) !== false && supportsRpm,
      supportsCov,
      readAt: new Date().toISOString(),
    };
  }

  async readCatalogue(device: DiscoveredDevice): Promise<DeviceCatalogue> {
    const info = await this.readDeviceInfo(device);
    const k = this.known.get(device.deviceInstance) as Known;
    const objects = await this.readObjectList(k);
    const pointObjects = objects.filter((o) => POINT_TYPES.has(o.type));
    const specs = pointObjects.map((o) => ({ object: o, properties: metaProps(o.type) }));
    const mr = await this.readMany(k, specs);
    const points: PointMetaPayload[] = pointObjects.map((o) => pointMeta(o, mr));
    const presentValues: Record<string, Value> = {};
    for (const o of pointObjects) {
      const r = mr.get(resKey(o, { id: Prop.PRESENT_VALUE }));
      presentValues[pointId(o.type, o.instance)] = r?.values ? presentValue(o.type, r.values) : null;
    }
    const cat: DeviceCatalogue = {
      ...info,
      supportsRpm: (k.rpm as boolean | null) !== false && info.supportsRpm,
      points,
      presentValues,
      readAt: new Date().toISOString(),
    };
    this.emit("catalogue", cat);
    return cat;
  }

  /** Object list: whole (segmented if needed) when it can fit, else element by element. */
  async readObjectList(k: Known): Promise<ObjectRef[]> {
    const dev: ObjectRef = { type: 8, instance: k.device.deviceInstance };
    const asRefs = (vals: DecodedValue[]) =>
      vals
        .map((v) => v.value as ObjectRef)
        .filter((o) => o && typeof o.type === "number" && typeof o.instance === "number");
    let length: number | undefined;
    if (k.segmentedOk || k.device.maxApdu >= 1476) {
      try {
        const vals = await this.readPropertyRaw(k, dev, { id: Prop.OBJECT_LIST });
        return asRefs(vals);
      } catch (err) {
        const e = err as BacnetError;
        if (e.code === GW_ERR.STOPPED) throw err;
        // Too big for an unsegmented reply, or the transfer failed: fall back to reading by index.
        this.log.debug(
          { device: dev.instance, err: e.message },
          "whole object-list read failed; reading by index",
        );
      }
    }
    const len = await this.readPropertyRaw(k, dev, { id: Prop.OBJECT_LIST, index: 0 });
    length = Number(toJson(len[0]));
    if (!Number.isInteger(length) || length < 0 || length > 1_000_000)
      throw new BacnetError(
        GW_ERR.MALFORMED_REPLY,
        `object-list length ${String(length)} is not valid`,
        "malformed",
      );
    const specs = [];
    for (let i = 1; i <= length; i++)
      specs.push({ object: dev, properties: [{ id: Prop.OBJECT_LIST, index: i }] });
    // One RPM spec per index would repeat the object id; group indexes under one object instead.
    const grouped: { object: ObjectRef; properties: PropertyRef[] }[] = [];
    const perReq = Math.max(1, Math.floor((Math.min(k.device.maxApdu || 480, 1476) - 40) / 16));
    for (let i = 0; i < specs.length; i += perReq)
      grouped.push({
        object: dev,
        properties: specs.slice(i, i + perReq).map((s) => s.properties[0] as PropertyRef),
      });
    const res = await this.readMany(k, grouped);
    const out: ObjectRef[] = [];
    for (let i = 1; i <= length; i++) {
      const r = res.get(resKey(dev, { id: Prop.OBJECT_LIST, index: i }));
      if (r?.values) out.push(...asRefs(r.values));
    }
    return out;
  }

  // ---- reading ------------------------------------------------------------------------------

  async read(device: number, point: string, property = "present_value", index?: number): Promise<unknown> {
    const k = this.known.get(device) ?? (await this.locate(device));
    const parsed = point === "device" ? { objectType: 8, instance: device } : parsePointId(point);
    if (!parsed)
      throw new BacnetError(
        GW_ERR.POINT_UNKNOWN,
        `"${point}" is not a point name (e.g. analog_input_1)`,
        "local",
      );
    const pid = propertyId(property);
    if (pid === undefined)
      throw new BacnetError(GW_ERR.PROPERTY_UNKNOWN_NAME, `unknown property "${property}"`, "local");
    const object = { type: parsed.objectType, instance: parsed.instance };
    try {
      const vals = await this.readPropertyRaw(k, object, { id: pid, index });
      this.countReads(1);
      if (pid === Prop.PRESENT_VALUE) return presentValue(object.type, vals);
      if (pid === Prop.STATUS_FLAGS) return statusFlags(vals) ?? valuesToJson(vals);
      if (pid === Prop.OBJECT_LIST && index === undefined)
        return vals.map((v) => {
          const o = v.value as ObjectRef;
          return pointId(o.type, o.instance);
        });
      const arrayProps: number[] = [Prop.PRIORITY_ARRAY, Prop.STATE_TEXT];
      return valuesToJson(vals, arrayProps.includes(pid) && index === undefined);
    } catch (err) {
      this.countError(err);
      throw err;
    }
  }

  private readonly pointCache = new Map<string, ReturnType<typeof parsePointId>>();

  /** parsePointId with a bounded cache: the scheduler asks for the same names every cycle. */
  private parsePoint(p: string): ReturnType<typeof parsePointId> {
    let v = this.pointCache.get(p);
    if (v === undefined && !this.pointCache.has(p)) {
      v = parsePointId(p);
      if (this.pointCache.size > 200_000) this.pointCache.clear();
      this.pointCache.set(p, v);
    }
    return v;
  }

  async readPoints(device: number, points: string[]): Promise<ReadingPayload[]> {
    const k = this.knownOrThrow(device);
    return this.readPlan(this.pollPlan(k, points));
  }

  private pollPlan(k: Known, points: string[]): PollPlan {
    const unknown: string[] = [];
    const objs: { point: string; object: ObjectRef }[] = [];
    for (const p of points) {
      const parsed = this.parsePoint(p);
      if (!parsed) unknown.push(p);
      else objs.push({ point: p, object: { type: parsed.objectType, instance: parsed.instance } });
    }
    const specs = objs.map((o) => ({ object: o.object, properties: POLL_PROPERTIES }));
    const plan: PollPlan = {
      k,
      maxApdu: k.device.maxApdu,
      points: [...points],
      unknown,
      objs,
      specs,
      batches: [],
    };
    this.planRequests(plan);
    return plan;
  }

  private planRequests(plan: PollPlan): void {
    const k = plan.k;
    plan.maxApdu = k.device.maxApdu;
    let first = 0;
    plan.batches = planBatches(k, plan.specs).map((b) => {
      const batch = {
        first,
        specs: b,
        body: encodeReadPropertyMultiple(b),
        label: `ReadPropertyMultiple (${b.length} objects) @${k.device.deviceInstance}`,
        accept: rpmAccept(b),
      };
      first += b.length;
      return batch;
    });
  }

  /** readPoints on a prepared plan: PV + status flags of each point, errors as readings. */
  private async readPlan(plan: PollPlan): Promise<ReadingPayload[]> {
    const k = plan.k;
    const out: ReadingPayload[] = [];
    if (plan.unknown.length > 0) {
      const ts = new Date().toISOString();
      for (const p of plan.unknown)
        out.push({ point: p, value: null, ts, quality: "bad", error: GW_ERR.POINT_UNKNOWN });
    }
    const objs = plan.objs;
    // Present value of objs[i] at 2i, its status flags at 2i + 1.
    const res: (PropResult | undefined)[] = new Array(objs.length * 2);
    if (objs.length > 0 && k.rpm !== false) {
      if (plan.maxApdu !== k.device.maxApdu) this.planRequests(plan);
      let firstError: unknown;
      if (plan.batches.length === 1) {
        try {
          await this.pollBatch(plan, plan.batches[0] as PollPlan["batches"][number], res);
        } catch (err) {
          firstError = err;
        }
      } else
        await Promise.all(
          plan.batches.map((b) =>
            this.pollBatch(plan, b, res).catch((err: unknown) => {
              firstError ??= err;
            }),
          ),
        );
      if (firstError) throw firstError;
    }
    if (objs.length > 0 && k.rpm === false) {
      // As readMany: no RPM (known before, or learnt just now) means everything by ReadProperty.
      const m = new Map<string, PropResult>();
      await Promise.all(plan.specs.flatMap((s) => s.properties.map((p) => this.rpOne(k, s.object, p, m))));
      fillResults(plan.specs, 0, m, res);
    }
    const now = new Date().toISOString();
    for (let i = 0; i < objs.length; i++) {
      const o = objs[i] as PollPlan["objs"][number];
      const pv = res[2 * i];
      const sf = res[2 * i + 1];
      if (!pv || pv.error) {
        const err = pv?.error ?? new BacnetError(GW_ERR.MALFORMED_REPLY, "no value", "malformed");
        this.countError(err);
        out.push({ point: o.point, value: null, ts: now, quality: "bad", error: err.code });
        continue;
      }
      const flags = sf?.values ? statusFlags(sf.values) : undefined;
      const reading: ReadingPayload = {
        point: o.point,
        value: presentValue(o.object.type, pv.values),
        ts: now,
      };
      if (flags) {
        reading.status_flags = flags;
        reading.quality = flags.fault
          ? "bad"
          : flags.out_of_service || flags.overridden
            ? "uncertain"
            : "good";
      } else reading.quality = "good";
      out.push(reading);
    }
    this.countReads(objs.length);
    return out;
  }

  /**
   * One RPM batch of a poll plan. The common answer (every object in the order asked, PV then
   * status flags) goes straight into its slots; anything else takes the keyed path of rpmBatch,
   * with the same fallbacks (ReadProperty, smaller batches, single reads of what is missing).
   */
  private async pollBatch(
    plan: PollPlan,
    b: PollPlan["batches"][number],
    res: (PropResult | undefined)[],
  ): Promise<void> {
    const k = plan.k;
    if (k.rpm === false) return;
    let byKey: Map<string, PropResult>;
    try {
      const r = await this.c().request(k.dest, Service.READ_PROPERTY_MULTIPLE, b.body, {
        label: b.label,
        accept: b.accept,
      });
      const from = 2 * b.first;
      // Outcomes go into the result slots as they are; the loop below turns their errors into ours.
      if (decodeRpmAckInOrder(r.body, b.specs, res as (PropertyOutcome | undefined)[], from)) {
        k.rpm = true;
        // Property errors arrive as class/code: make them the coded errors readings carry.
        for (let i = from; i < from + 2 * b.specs.length; i++) {
          const e = (res[i] as PropertyOutcome).error;
          if (e) res[i] = { error: bacnetErrorFrom(e.errorClass, e.errorCode) };
        }
        return;
      }
      const results = decodeReadPropertyMultipleAck(r.body);
      k.rpm = true;
      byKey = new Map();
      await this.absorbRpm(k, b.specs, results, byKey);
    } catch (err) {
      byKey = new Map();
      await this.rpmFailed(k, b.specs, err, byKey);
    }
    fillResults(b.specs, b.first, byKey, res);
  }

  // ---- scheduler + availability -------------------------------------------------------------

  manage(catalogue: DeviceCatalogue, options: DeviceOptions = {}): void {
    const existing = this.managedDevices.get(catalogue.deviceInstance);
    if (existing) this.teardown(existing, true).catch((err: unknown) => this.emit("error", err as Error));
    if (
      !this.known.has(catalogue.deviceInstance) ||
      this.known.get(catalogue.deviceInstance)?.device.address !== catalogue.address
    )
      this.addDevice(catalogue);
    const k = this.known.get(catalogue.deviceInstance) as Known;
    if (!catalogue.supportsRpm) k.rpm = false;
    // Managed again (new catalogue or options) at the same address: what is known of its
    // availability stays, so a refresh does not announce it again.
    const carry =
      existing !== undefined &&
      existing.dest.ip === k.dest.ip &&
      existing.dest.port === k.dest.port &&
      existing.cat.network === catalogue.network &&
      existing.cat.mac === catalogue.mac;
    const m: Managed = {
      cat: catalogue,
      dest: k.dest,
      options: { ...options },
      state: carry ? existing.state : "unknown",
      failures: 0,
      lastHeard: carry ? existing.lastHeard : 0,
      pollTimers: new Map(),
      probeDelayMs: carry ? existing.probeDelayMs : 0,
      covs: new Map(),
      covFallback: new Map(),
      stopped: false,
    };
    this.managedDevices.set(catalogue.deviceInstance, m);
    // No availability yet: it becomes online with the first answer (poll, SubscribeCOV, probe) or
    // offline after `offlineAfterFailures` timeouts. A device with nothing to poll or subscribe is
    // probed at once so it does not stay unknown.
    this.schedule(m);
    if (m.state === "offline") {
      this.probe(m);
      return;
    }
    this.subscribeAll(m);
    this.armLiveness(m, this.selected(m).length === 0 ? 0 : this.livenessMs());
  }

  async unmanage(device: number): Promise<void> {
    const m = this.managedDevices.get(device);
    if (!m) return;
    this.managedDevices.delete(device);
    await this.teardown(m, true);
  }

  private async teardown(m: Managed, cancelCov: boolean): Promise<void> {
    m.stopped = true;
    for (const t of m.pollTimers.values()) clearTimeout(t);
    m.pollTimers.clear();
    if (m.probeTimer) clearTimeout(m.probeTimer);
    if (m.livenessTimer) clearTimeout(m.livenessTimer);
    const subs = [...m.covs.values()];
    m.covs.clear();
    for (const s of subs) {
      this.clearSub(s);
      this.covByProcess.delete(s.processId);
    }
    if (!cancelCov) return;
    await this.cancelSubs(m, subs);
  }

  private async cancelSubs(m: Managed, subs: CovSub[]): Promise<void> {
    if (!this.client) return;
    // Bounded: shutdown must not wait for a dead device's retries.
    await Promise.race([Promise.allSettled(subs.map((s) => s.inflight)), sleep(2000)]);
    await Promise.allSettled(
      subs
        .filter((s) => s.sent)
        .map((s) =>
          this.client?.request(
            m.dest,
            Service.SUBSCRIBE_COV,
            encodeSubscribeCov(s.processId, s.object, null),
            {
              label: "SubscribeCOV cancel",
              retries: 0,
              timeoutMs: Math.min(this.opts.apduTimeoutMs, 2000),
            },
          ),
        ),
    );
  }

  setOptions(device: number, options: DeviceOptions): DeviceOptions {
    const m = this.managedDevices.get(device);
    if (!m) throw new BacnetError(GW_ERR.DEVICE_UNKNOWN, `device ${device} is not managed`, "local");
    m.options = { ...m.options, ...stripUndefined(options) };
    for (const t of m.pollTimers.values()) clearTimeout(t);
    m.pollTimers.clear();
    // Subscriptions follow the new selection: cancel the old ones, subscribe afresh if COV is on.
    const old = [...m.covs.values()];
    m.covs.clear();
    m.covFallback.clear();
    for (const sub of old) {
      this.clearSub(sub);
      this.covByProcess.delete(sub.processId);
    }
    this.cancelSubs(m, old).catch((err: unknown) => this.emit("error", err as Error));
    this.schedule(m);
    if (m.state !== "offline") this.subscribeAll(m);
    return { ...m.options };
  }

  managed(): DeviceCatalogue[] {
    return [...this.managedDevices.values()].map((m) => m.cat);
  }

  isOnline(device: number): boolean {
    return this.managedDevices.get(device)?.state === "online";
  }

  availability(device: number): Availability {
    return this.managedDevices.get(device)?.state ?? "unknown";
  }

  private selected(m: Managed): string[] {
    const inc = m.options.include?.length ? m.options.include.map(globToRegex) : null;
    const exc = (m.options.exclude ?? []).map(globToRegex);
    return m.cat.points
      .map((p) => p.point)
      .filter((p) => (!inc || inc.some((r) => r.test(p))) && !exc.some((r) => r.test(p)));
  }

  private schedule(m: Managed): void {
    const groups = new Map<number, string[]>();
    const defaultS = m.options.pollIntervalS ?? this.opts.pollIntervalS;
    const perPoint = new Map(m.cat.points.map((p) => [p.point, p.poll_interval_s]));
    for (const p of this.selected(m)) {
      const s = Math.max(0.05, perPoint.get(p) ?? defaultS);
      groups.set(s, [...(groups.get(s) ?? []), p]);
    }
    for (const [intervalS, points] of groups) {
      let plan: PollPlan | undefined;
      const tick = async () => {
        m.pollTimers.delete(intervalS);
        if (m.stopped) return;
        // Monotonic: a wall-clock step during a cycle must not read as an hour-long cycle (forwards)
        // or schedule the next one an hour late (backwards).
        const started = performance.now();
        // Points delivered by a live COV subscription are not polled.
        const due = m.covs.size === 0 ? points : points.filter((p) => !m.covs.get(p)?.active);
        if (m.state !== "offline" && due.length > 0) {
          try {
            const k = this.knownOrThrow(m.cat.deviceInstance);
            if (!plan || plan.k !== k || !sameList(plan.points, due)) plan = this.pollPlan(k, due);
            const readings = await this.readPlan(plan);
            this.heard(m, "answered poll");
            if (!m.stopped && readings.length) this.emit("readings", m.cat.deviceInstance, readings, "poll");
          } catch (err) {
            this.countError(err);
            this.failure(m, err);
          }
        }
        if (m.stopped) return;
        const took = Math.round(performance.now() - started);
        const intervalMs = intervalS * 1000;
        let next = intervalMs - took;
        if (next < 0) {
          // Stretch instead of piling up: the next cycle starts now, and the lag is reported.
          this.counters.overrunsTotal++;
          this.counters.lagMs = -next;
          this.emit("overrun", m.cat.deviceInstance, intervalS, took);
          next = 0;
        }
        m.pollTimers.set(intervalS, setTimeout(run, next));
      };
      const run = () => {
        tick().catch((err: unknown) => this.emit("error", err as Error));
      };
      // Spread first cycles so many devices do not all fire at once.
      m.pollTimers.set(
        intervalS,
        setTimeout(run, Math.floor(Math.random() * Math.min(intervalS * 1000, 1000))),
      );
    }
  }

  /** The device answered (a reply, or an Error/Reject PDU: both prove it is there). */
  private heard(m: Managed, reason: string): void {
    m.lastHeard = performance.now();
    m.failures = 0;
    if (m.stopped || m.state === "online") return;
    const was = m.state;
    m.state = "online";
    if (m.probeTimer) clearTimeout(m.probeTimer);
    m.probeTimer = undefined;
    if (was === "offline") {
      this.log.info({ device: m.cat.deviceInstance, reason }, "device back online");
      // Silence may have been the outage, not the device's COV: give those points another try.
      for (const [point, why] of m.covFallback) if (why === "silent") m.covFallback.delete(point);
      // Its subscriptions may have been lost with it (reboot): subscribe afresh, renewals re-armed.
      this.subscribeAll(m);
    }
    this.emit("availability", m.cat.deviceInstance, "online", reason);
    this.armLiveness(m, this.livenessMs());
  }

  private failure(m: Managed, err: unknown): void {
    const e = err as BacnetError;
    // Only silence (or a router that cannot reach it) means the device is gone; an Error/Reject
    // PDU proves it is alive.
    if (!unreached(e)) return;
    m.failures++;
    if (m.state !== "offline" && m.failures >= this.opts.offlineAfterFailures) this.goOffline(m, e.message);
  }

  private goOffline(m: Managed, reason: string): void {
    if (m.state === "offline" || m.stopped) return;
    m.state = "offline";
    this.log.warn({ device: m.cat.deviceInstance, reason }, "device offline");
    this.emit("availability", m.cat.deviceInstance, "offline", reason);
    for (const s of m.covs.values()) {
      this.clearSub(s);
      s.active = false;
      s.awaitingInitial = false;
    }
    if (m.livenessTimer) clearTimeout(m.livenessTimer);
    m.livenessTimer = undefined;
    m.probeDelayMs = Math.max(500, this.opts.apduTimeoutMs);
    this.probe(m);
  }

  private livenessMs(): number {
    return Math.max(1, this.opts.livenessS) * 1000;
  }

  /**
   * Liveness: a device that said nothing for `livenessS` (all its points on COV and nothing
   * changed, or nothing selected) gets a ReadProperty of its object-name; a timeout counts as a
   * failure like a failed poll, and the next probe follows after one APDU timeout, so a dead
   * all-COV device is offline within about livenessS + offlineAfterFailures × (retries + 2) ×
   * apduTimeout instead of at its next subscription renewal. Offline devices are left to probe().
   */
  private armLiveness(m: Managed, delayMs: number): void {
    if (m.livenessTimer) clearTimeout(m.livenessTimer);
    if (m.stopped) return;
    m.livenessTimer = setTimeout(() => {
      m.livenessTimer = undefined;
      if (m.stopped || m.state === "offline") return;
      const quietMs = performance.now() - m.lastHeard;
      if (m.lastHeard > 0 && quietMs < this.livenessMs()) {
        this.armLiveness(m, this.livenessMs() - quietMs);
        return;
      }
      const k = this.known.get(m.cat.deviceInstance);
      if (!k) return;
      const alive = () => {
        this.heard(m, "answered liveness probe");
        this.armLiveness(m, this.livenessMs());
      };
      this.readPropertyRaw(k, { type: 8, instance: m.cat.deviceInstance }, { id: Prop.OBJECT_NAME }).then(
        alive,
        (err: unknown) => {
          if (m.stopped || (err as BacnetError).code === GW_ERR.STOPPED) return;
          if (!unreached(err)) {
            alive();
            return;
          }
          this.countError(err);
          this.failure(m, err);
          if (m.state !== "offline") this.armLiveness(m, this.opts.apduTimeoutMs);
        },
      );
    }, delayMs);
  }

  /** Offline: ReadProperty object-name with backoff (APDU timeout doubling up to probeMaxS). */
  private probe(m: Managed): void {
    if (m.stopped) return;
    if (m.probeTimer) clearTimeout(m.probeTimer);
    m.probeTimer = setTimeout(() => {
      m.probeTimer = undefined;
      const k = this.known.get(m.cat.deviceInstance);
      if (!k || m.stopped || m.state !== "offline") return;
      this.readPropertyRaw(
        k,
        { type: 8, instance: m.cat.deviceInstance },
        { id: Prop.OBJECT_NAME },
        { retries: 0 },
      ).then(
        () => this.heard(m, "answered probe"),
        (err: unknown) => {
          if (m.stopped || m.state !== "offline" || (err as BacnetError).code === GW_ERR.STOPPED) return;
          // It answered (with an error): that is alive enough.
          if (!unreached(err)) {
            this.heard(m, "answered probe");
            return;
          }
          m.probeDelayMs = Math.min(
            Math.max(m.probeDelayMs * 2, this.opts.apduTimeoutMs),
            (this.opts.probeMaxS ?? 60) * 1000,
          );
          this.probe(m);
        },
      );
    }, m.probeDelayMs);
  }

  // ---- COV ----------------------------------------------------------------------------------

  private clearSub(s: CovSub): void {
    if (s.renewTimer) clearTimeout(s.renewTimer);
    if (s.silentTimer) clearTimeout(s.silentTimer);
    s.renewTimer = undefined;
    s.silentTimer = undefined;
  }

  /**
   * COV for a point: the device must support SubscribeCOV; then the point's own `cov` (from the
   * configuration, through the catalogue) wins over the device's and the engine's setting.
   */
  private covWanted(m: Managed, p: PointMetaPayload): boolean {
    return m.cat.supportsCov && (p.cov ?? m.options.cov ?? this.opts.cov);
  }

  private subscribeAll(m: Managed): void {
    if (m.stopped || m.state === "offline" || !m.cat.supportsCov) return;
    const selected = new Set(this.selected(m));
    for (const p of m.cat.points) {
      if (!selected.has(p.point) || m.covFallback.has(p.point) || !this.covWanted(m, p)) continue;
      const parsed = parsePointId(p.point);
      if (!parsed || !COV_TYPES.has(parsed.objectType)) continue;
      let s = m.covs.get(p.point);
      if (!s) {
        s = {
          point: p.point,
          object: { type: parsed.objectType, instance: parsed.instance },
          processId: this.nextProcessId++,
          active: false,
          sent: false,
          lastNotification: 0,
          awaitingInitial: false,
        };
        m.covs.set(p.point, s);
        this.covByProcess.set(s.processId, { device: m.cat.deviceInstance, sub: s });
      }
      this.subscribe(m, s, true).catch((err: unknown) => this.emit("error", err as Error));
    }
  }

  /** How long an acknowledged subscription may stay without its initial notification. */
  private covSilenceMs(): number {
    return (this.opts.covSilenceS ?? Math.max(5, (this.opts.apduTimeoutMs * 2) / 1000)) * 1000;
  }

  private async subscribe(m: Managed, s: CovSub, first: boolean): Promise<void> {
    if (m.stopped || m.state === "offline") return;
    // Never 0: that would ask for a subscription without end, which we could not clean up.
    const lifetime = Math.max(1, this.opts.covLifetimeS);
    try {
      s.sent = true;
      const req = this.c().request(
        m.dest,
        Service.SUBSCRIBE_COV,
        encodeSubscribeCov(s.processId, s.object, {
          confirmed: this.opts.covConfirmed ?? false,
          lifetimeS: lifetime,
        }),
        { label: `SubscribeCOV ${s.point} @${m.cat.deviceInstance}` },
      );
      s.inflight = req;
      await req;
    } catch (err) {
      if (m.stopped) return;
      const e = err as BacnetError;
      if (e.code === GW_ERR.STOPPED) return;
      if (unreached(e)) {
        this.failure(m, e);
        // Not refused, just unanswered: poll it meanwhile and try again at the next renewal.
        s.active = false;
        if (m.covs.get(s.point) === s) this.armRenew(m, s);
        return;
      }
      // An Error/Reject/Abort is an answer: the device is there, it just will not do COV here.
      this.heard(m, "answered SubscribeCOV");
      if (m.covs.get(s.point) === s) this.fallback(m, s, "refused", `${e.code}: ${e.message}`);
      return;
    }
    if (m.stopped) return;
    this.heard(m, "answered SubscribeCOV");
    // Replaced meanwhile (options changed): the device lets the orphan expire with its lifetime.
    if (m.covs.get(s.point) !== s || (m.state as Availability) === "offline") return;
    s.active = true;
    this.armRenew(m, s);
    if (first) {
      // The standard requires an initial notification right after a successful subscription
      // (clause 13.1.2). Acknowledged but silent for covSilenceS = broken or overloaded COV server:
      // the point goes back to polling and the subscription is cancelled at the device.
      s.awaitingInitial = true;
      if (s.silentTimer) clearTimeout(s.silentTimer);
      s.silentTimer = setTimeout(() => {
        s.silentTimer = undefined;
        if (m.stopped || !s.awaitingInitial || m.covs.get(s.point) !== s || m.state === "offline") return;
        this.fallback(
          m,
          s,
          "silent",
          `no COV notification within ${this.covSilenceMs() / 1000} s of an acknowledged SubscribeCOV`,
        );
        this.cancelSubs(m, [s]).catch((err: unknown) => this.emit("error", err as Error));
      }, this.covSilenceMs());
    }
  }

  private armRenew(m: Managed, s: CovSub): void {
    if (s.renewTimer) clearTimeout(s.renewTimer);
    // Renew at 75 % of the lifetime so an answer lost to one timeout still lands in time.
    const ms = Math.max(1000, this.opts.covLifetimeS * 750);
    s.renewTimer = setTimeout(() => {
      s.renewTimer = undefined;
      if (m.stopped || m.covs.get(s.point) !== s) return;
      this.subscribe(m, s, false).catch((err: unknown) => this.emit("error", err as Error));
    }, ms);
  }

  private fallback(m: Managed, s: CovSub, kind: "refused" | "silent", reason: string): void {
    this.clearSub(s);
    s.active = false;
    s.awaitingInitial = false;
    m.covs.delete(s.point);
    this.covByProcess.delete(s.processId);
    m.covFallback.set(s.point, kind);
    this.log.info({ device: m.cat.deviceInstance, point: s.point, reason }, "COV fallback to polling");
    this.emit("covFallback", m.cat.deviceInstance, s.point, reason);
  }

  private onCov(e: CovEvent): void {
    const entry = this.covByProcess.get(e.processId);
    if (!entry || entry.device !== e.device) return;
    const s = entry.sub;
    if (s.object.type !== e.object.type || s.object.instance !== e.object.instance) return;
    const m = this.managedDevices.get(entry.device);
    if (!m || m.stopped) return;
    this.counters.covNotificationsTotal++;
    s.lastNotification = Date.now();
    s.awaitingInitial = false;
    if (s.silentTimer) clearTimeout(s.silentTimer);
    s.silentTimer = undefined;
    this.heard(m, "COV notification");
    // An offline→online turn re-subscribed it (heard); until that is acknowledged it stays polled.
    if (m.covs.get(s.point) === s && s.renewTimer) s.active = true;
    const pv = e.values.find((v) => v.id === Prop.PRESENT_VALUE);
    if (!pv) return;
    const sf = e.values.find((v) => v.id === Prop.STATUS_FLAGS);
    const reading: ReadingPayload = {
      point: s.point,
      value: presentValue(s.object.type, pv.values),
      ts: new Date().toISOString(),
    };
    const flags = sf ? statusFlags(sf.values) : undefined;
    if (flags) {
      reading.status_flags = flags;
      reading.quality = flags.fault ? "bad" : flags.out_of_service || flags.overridden ? "uncertain" : "good";
    } else reading.quality = "good";
    this.countReads(1);
    this.emit("readings", entry.device, [reading], "cov");
  }

  // ---- writing ------------------------------------------------------------------------------

  private allowed(device: number, point: string): boolean {
    return (this.opts.writeAllowlist ?? []).some((pattern) => {
      const [d, p] = pattern.includes(":") ? (pattern.split(":", 2) as [string, string]) : ["*", pattern];
      return globToRegex(d).test(String(device)) && globToRegex(p).test(point);
    });
  }

  async write(device: number, point: string, value: Value, priority?: number): Promise<WriteOutcome> {
    const parsed = parsePointId(point);
    if (!parsed)
      throw new BacnetError(
        GW_ERR.POINT_UNKNOWN,
        `"${point}" is not a point name (e.g. analog_output_1)`,
        "local",
      );
    const prio = priority ?? this.opts.defaultWritePriority;
    if (!Number.isInteger(prio) || prio < 1 || prio > 16)
      throw new BacnetError(GW_ERR.WRITE_PRIORITY, `priority must be 1–16, got ${String(priority)}`, "local");
    if (prio < this.opts.minWritePriority)
      throw new BacnetError(
        GW_ERR.WRITE_PRIORITY,
        `priority ${prio} is above the allowed range (${this.opts.minWritePriority}–16)`,
        "local",
      );
    if (!this.allowed(device, point))
      throw new BacnetError(
        GW_ERR.WRITE_NOT_ALLOWED,
        `writing ${device}:${point} is not in the write allowlist`,
        "local",
      );
    let app: ReturnType<typeof encodeForType>;
    try {
      app = encodeForType(parsed.objectType, value);
    } catch (err) {
      throw new BacnetError(GW_ERR.WRITE_VALUE, (err as Error).message, "local");
    }
    const k = this.known.get(device) ?? (await this.locate(device));
    const object = { type: parsed.objectType, instance: parsed.instance };
    try {
      await this.c().request(
        k.dest,
        Service.WRITE_PROPERTY,
        encodeWriteProperty(object, { id: Prop.PRESENT_VALUE }, app, prio),
        {
          label: `WriteProperty ${point} @${device}`,
        },
      );
    } catch (err) {
      this.countError(err);
      throw err;
    }
    const rb = await this.readMany(k, [
      { object, properties: [{ id: Prop.PRESENT_VALUE }, { id: Prop.PRIORITY_ARRAY }] },
    ]);
    const pv = rb.get(resKey(object, { id: Prop.PRESENT_VALUE }));
    const pa = rb.get(resKey(object, { id: Prop.PRIORITY_ARRAY }));
    return {
      device,
      point,
      value,
      priority: prio,
      presentValue: pv?.values ? presentValue(object.type, pv.values) : null,
      priorityArray: pa?.values ? pa.values.map((v) => presentValue(object.type, [v])) : null,
      ts: new Date().toISOString(),
    };
  }

  // ---- stats --------------------------------------------------------------------------------

  stats(): EngineStats {
    const devices = [...this.managedDevices.values()];
    const online = devices.filter((d) => d.state === "online").length;
    // Devices that have not answered yet are neither: unknown = total − online − offline.
    const offline = devices.filter((d) => d.state === "offline").length;
    const now = Date.now();
    const sec = Math.floor(now / 1000);
    // The ten completed seconds before this one.
    const recent = this.readWindow.filter((w) => w.t >= sec - 10 && w.t < sec).reduce((a, w) => a + w.n, 0);
    return {
      devices: { total: devices.length, online, offline },
      points: devices.reduce((a, d) => a + d.cat.points.length, 0),
      readsTotal: this.counters.readsTotal,
      readsPerS: recent / 10,
      errorsTotal: this.counters.errorsTotal,
      errorsByCode: { ...this.errorsByCode },
      overrunsTotal: this.counters.overrunsTotal,
      lagMs: this.counters.lagMs,
      covSubscriptions: devices.reduce((a, d) => a + [...d.covs.values()].filter((s) => s.active).length, 0),
      covNotificationsTotal: this.counters.covNotificationsTotal,
      covFallbacks: devices.reduce((a, d) => a + d.covFallback.size, 0),
    };
  }

  /** Transport-level counters (datagrams, malformed, retries, timeouts), for health and tests. */
  transportStats() {
    return this.client?.stats();
  }

  override on<E extends keyof EngineEvents>(event: E, listener: EngineEvents[E]): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }

  override off<E extends keyof EngineEvents>(event: E, listener: EngineEvents[E]): this {
    return super.off(event, listener as (...args: unknown[]) => void);
  }
}

// ---- helpers ----------------------------------------------------------------------------------

function metaProps(type: number): PropertyRef[] {
  const props: PropertyRef[] = [
    { id: Prop.OBJECT_NAME },
    { id: Prop.DESCRIPTION },
    { id: Prop.PRESENT_VALUE },
    { id: Prop.STATUS_FLAGS },
    { id: Prop.OUT_OF_SERVICE },
  ];
  if (isAnalog(type)) props.push({ id: Prop.UNITS }, { id: Prop.COV_INCREMENT });
  if (isBinary(type)) props.push({ id: Prop.ACTIVE_TEXT }, { id: Prop.INACTIVE_TEXT });
  if (isMultistate(type)) props.push({ id: Prop.STATE_TEXT });
  // Array size only: answers "has a priority array" without moving 16 values per object.
  if ([1, 2, 4, 5, 14, 19, 40, 45, 46, 48, 54, 55].includes(type))
    props.push({ id: Prop.PRIORITY_ARRAY, index: 0 });
  return props;
}

function pointMeta(o: ObjectRef, res: Map<string, PropResult>): PointMetaPayload {
  const get = (id: number, index?: number) => {
    const r = res.get(resKey(o, { id, index }));
    return r?.values;
  };
  const s = (id: number) => {
    const v = toJson(get(id)?.[0]);
    return typeof v === "string" ? v : null;
  };
  const n = (id: number) => {
    const v = toJson(get(id)?.[0]);
    return typeof v === "number" ? v : null;
  };
  const unitsCode = n(Prop.UNITS);
  const states = get(Prop.STATE_TEXT);
  const pa = get(Prop.PRIORITY_ARRAY, 0);
  return {
    point: pointId(o.type, o.instance),
    object_type: objectTypeName(o.type).replace(/_/g, "-"),
    object_instance: o.instance,
    name: s(Prop.OBJECT_NAME) ?? pointId(o.type, o.instance),
    description: s(Prop.DESCRIPTION),
    units: unitsName(unitsCode),
    units_code: unitsCode,
    writable: pa !== undefined && pa.length > 0,
    state_texts: states ? states.map((v) => String(toJson(v))) : null,
    active_text: s(Prop.ACTIVE_TEXT),
    inactive_text: s(Prop.INACTIVE_TEXT),
    cov_increment: n(Prop.COV_INCREMENT),
  };
}

/** RPM batches sized to the device's max APDU (segmentation is not relied on for polling). */
function planBatches(k: Known, specs: Spec[]): Spec[][] {
  const budget = Math.max(100, Math.min(k.device.maxApdu || 480, 1476) - 40);
  const batches: Spec[][] = [];
  let cur: Spec[] = [];
  let size = 0;
  for (const s of specs) {
    // Per object: object id (5) + opening/closing tags (2); per property: id (2) + tags (2) + value.
    let cost = 7;
    for (const p of s.properties) cost += 4 + estimate(p);
    if (cur.length > 0 && size + cost > budget) {
      batches.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(s);
    size += cost;
  }
  if (cur.length) batches.push(cur);
  return batches;
}

/** Present value and status flags of `specs` (starting at `first`) from a keyed result map. */
function fillResults(
  specs: Spec[],
  first: number,
  m: Map<string, PropResult>,
  res: (PropResult | undefined)[],
): void {
  for (let i = 0; i < specs.length; i++) {
    const o = (specs[i] as Spec).object;
    res[2 * (first + i)] = m.get(resKey(o, { id: Prop.PRESENT_VALUE }));
    res[2 * (first + i) + 1] = m.get(resKey(o, { id: Prop.STATUS_FLAGS }));
  }
}

function sameList(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function addrOf(d: DeviceAddress): DeviceAddress {
  return { address: d.address, network: d.network, mac: d.mac };
}

function globToRegex(glob: string): RegExp {
  return new RegExp(`^${glob.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
