// Joins the BACnet engine to MQTT: the device registry, the birth sequence, `{device}/meta`,
// `availability`, throttled `state`, `readings` (journalled in the disk buffer before every publish,
// replayed from it when the broker was away or the process died before the PUBACK), `bridge/event`, `bridge/info`, `bridge/devices`, `bridge/health`, and clearing a
// removed device's retained topics. Every topic goes through the contract's `Topics`; every publish
// through the MQTT wrapper. It never talks BACnet itself: only through the engine interface.
import type { Logger } from "../../common/logger.ts";
import { version } from "../../common/version.ts";
import {
  type BridgeDevicesPayload,
  type BridgeHealthPayload,
  type BridgeInfoPayload,
  type DeviceMetaPayload,
  type DeviceReadingsPayload,
  type EventType,
  type ReadingPayload,
  TOPIC_QOS,
  Topics,
  type Value,
} from "../../contract/index.ts";
import type {
  BacnetEngine,
  DeviceCatalogue,
  DeviceOptions,
  DiscoveredDevice,
  ScanProgress,
} from "../bacnet/types.ts";
import type { GatewayConfig } from "../config.ts";
import { publicConfig, redactUrl } from "../config.ts";
import type { DiskBuffer, LiveRecord } from "./buffer.ts";
import type { GatewayMqtt } from "./client.ts";

const DEVICES_COALESCE_MS = 250;
/**
 * Readings polled before the first connection are held in memory this long (or up to this many
 * messages) rather than written to the buffer: with the broker reachable they go out live, not as
 * "historical" replays. If the broker does not answer in time they go to the buffer.
 */
const STARTUP_GRACE_MS = 5000;
const STARTUP_HOLD_MAX = 5000;

export interface DeviceEntry {
  instance: number;
  discovered: DiscoveredDevice;
  /** null until the device's catalogue has been read. */
  catalogue: DeviceCatalogue | null;
  /** Options set through `device/options` (over the configuration file). */
  runtimeOptions: DeviceOptions;
  values: Record<string, Value>;
  /** When `state` was last published, on the monotonic clock (`performance.now()`): a wall-clock
   * step must neither hold `state` back (backwards) nor release it early (forwards). */
  lastStateAt: number;
  stateTimer: NodeJS.Timeout | undefined;
  missedScans: number;
}

/** Readings held at start-up, already journalled (unless `write_ahead` is off): a crash then loses none. */
interface HeldReadings {
  topic: string;
  payload: DeviceReadingsPayload;
  body: string;
  rec: LiveRecord | undefined;
}

export interface BridgeOptions {
  engine: BacnetEngine;
  mqtt: GatewayMqtt;
  buffer: DiskBuffer;
  config: GatewayConfig;
  log: Logger;
  startedAt?: Date;
}

export class Bridge {
  readonly devices = new Map<number, DeviceEntry>();
  private readonly engine: BacnetEngine;
  private readonly mqtt: GatewayMqtt;
  private readonly buffer: DiskBuffer;
  private readonly config: GatewayConfig;
  private readonly log: Logger;
  private readonly startedAt: Date;
  private healthTimer: NodeJS.Timeout | undefined;
  private devicesTimer: NodeJS.Timeout | undefined;
  private startupHold: HeldReadings[] | null = [];
  private startupTimer: NodeJS.Timeout | undefined;
  private readonly covBatches = new Map<number, { readings: ReadingPayload[]; timer: NodeJS.Timeout }>();
  private readonly pendingRemovals = new Map<number, string>();
  private draining: Promise<void> | undefined;
  private drainAgain = false;
  private stopped = false;
  /** The journal write is failing (e.g. disk full): said once, not per message. */
  private journalFailing = false;
  /** Where request messages go (the dispatcher); the subscription is made at the end of each birth. */
  private onRequest: ((relativeTopic: string, payload: Buffer) => void) | undefined;
  readonly counters = { readingsMessages: 0, readingsValues: 0, buffered: 0 };
  private readonly listeners: Array<[string, (...args: never[]) => void]> = [];

  constructor(options: BridgeOptions) {
    this.engine = options.engine;
    this.mqtt = options.mqtt;
    this.buffer = options.buffer;
    this.config = options.config;
    this.log = options.log;
    this.startedAt = options.startedAt ?? new Date();
  }

  /** Wires engine and MQTT events; the first birth happens when the connection is up. */
  start(onRequest: (relativeTopic: string, payload: Buffer) => void): void {
    this.onRequest = onRequest;
    const on = <E extends Parameters<BacnetEngine["on"]>[0]>(
      event: E,
      listener: Parameters<BacnetEngine["on"]>[1] & ((...args: never[]) => void),
    ) => {
      this.engine.on(event, listener as never);
      this.listeners.push([event, listener]);
    };
    on("readings", (device: number, readings: ReadingPayload[], source: "poll" | "cov") =>
      this.onReadings(device, readings, source),
    );
    on("availability", (device: number, state: "online" | "offline", reason: string) =>
      this.onAvailability(device, state, reason),
    );
    on("duplicate", (device: number, addresses: unknown) =>
      this.event("duplicate_device", { device, addresses }),
    );
    on("overrun", (device: number, intervalS: number, cycleMs: number) =>
      this.event("poll_overrun", { device, interval_s: intervalS, cycle_ms: cycleMs }),
    );
    on("covFallback", (device: number, point: string, reason: string) =>
      this.event("cov_fallback", { device, point, reason }),
    );
    on("discovered", (d: DiscoveredDevice) =>
      this.event("device_discovered", {
        device: d.deviceInstance,
        address: d.address,
        network: d.network,
        mac: d.mac,
      }),
    );
    on("progress", (p: ScanProgress) =>
      this.event("scan_progress", {
        scan_id: p.scanId,
        phase: p.phase,
        sent: p.sent,
        total: p.total,
        found: p.found,
      }),
    );
    on("error", (err: Error) => this.log.warn({ err: err.message }, "engine error"));
    this.mqtt.on(
      "online",
      () =>
        void this.birth().then(() => {
          this.releaseStartupHold(true);
          this.kickDrain();
        }),
    );
    this.startupTimer = setTimeout(() => this.releaseStartupHold(false), STARTUP_GRACE_MS);
    this.startupTimer.unref?.();
    // Only the request filter is subscribed; the dispatcher parses and checks each topic.
    this.mqtt.on("message", (topic, payload) => this.onRequest?.(topic, payload));
    this.healthTimer = setInterval(
      () => void this.publishHealth(),
      this.config.mqtt.health_interval_s * 1000,
    );
    this.healthTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.releaseStartupHold(false);
    if (this.healthTimer) clearInterval(this.healthTimer);
    if (this.devicesTimer) clearTimeout(this.devicesTimer);
    for (const [event, listener] of this.listeners) this.engine.off(event as never, listener as never);
    for (const device of [...this.covBatches.keys()]) this.flushCov(device);
    for (const entry of this.devices.values()) {
      if (entry.stateTimer) {
        clearTimeout(entry.stateTimer);
        entry.stateTimer = undefined;
        await this.publishState(entry);
      }
    }
  }

  // ---- registry ----------------------------------------------------------------------------

  upsertDiscovered(device: DiscoveredDevice): DeviceEntry {
    let entry = this.devices.get(device.deviceInstance);
    if (!entry) {
      entry = {
        instance: device.deviceInstance,
        discovered: device,
        catalogue: null,
        runtimeOptions: {},
        values: {},
        lastStateAt: Number.NEGATIVE_INFINITY,
        stateTimer: undefined,
        missedScans: 0,
      };
      this.devices.set(device.deviceInstance, entry);
    } else {
      entry.discovered = device;
    }
    entry.missedScans = 0;
    return entry;
  }

  setCatalogue(catalogue: DeviceCatalogue, runtimeOptions?: DeviceOptions): DeviceEntry {
    const entry = this.upsertDiscovered(catalogue);
    entry.catalogue = catalogue;
    if (runtimeOptions) entry.runtimeOptions = runtimeOptions;
    return entry;
  }

  /** Effective options for a device: global polling settings, then the device's config, then run-time changes. */
  deviceOptions(device: number): Required<DeviceOptions> {
    const p = this.config.polling;
    const d = this.config.devices[String(device)] ?? {};
    const r = this.devices.get(device)?.runtimeOptions ?? {};
    return {
      pollIntervalS: r.pollIntervalS ?? d.poll_interval_s ?? p.interval_s,
      cov: r.cov ?? d.cov ?? p.cov,
      include: r.include ?? d.include ?? p.include,
      exclude: r.exclude ?? [...p.exclude, ...(d.exclude ?? [])],
    };
  }

  /**
   * Options as the engine takes them: the engine matches point ids with `*`; `name:<glob>` (object
   * name) and `type:<object_type>` patterns are expanded here against the device's catalogue.
   */
  engineOptions(device: number): Required<DeviceOptions> {
    const o = this.deviceOptions(device);
    const points = this.devices.get(device)?.catalogue?.points ?? [];
    const expand = (patterns: string[]) => expandPatterns(patterns, points);
    return { ...o, include: expand(o.include), exclude: expand(o.exclude) };
  }

  /** The catalogue as handed to the engine: per-point poll intervals and COV from the configuration applied. */
  scheduledCatalogue(catalogue: DeviceCatalogue): DeviceCatalogue {
    const points = this.config.devices[String(catalogue.deviceInstance)]?.points;
    if (!points) return catalogue;
    return {
      ...catalogue,
      points: catalogue.points.map((p) => {
        const interval = points[p.point]?.poll_interval_s;
        const cov = points[p.point]?.cov;
        if (interval === undefined && cov === undefined) return p;
        return {
          ...p,
          ...(interval !== undefined ? { poll_interval_s: interval } : {}),
          ...(cov !== undefined ? { cov } : {}),
        };
      }),
    };
  }

  isEnabled(device: number): boolean {
    return this.config.devices[String(device)]?.enabled !== false;
  }

  // ---- birth -------------------------------------------------------------------------------

  /**
   * The birth sequence: `bridge/state` online (already sent by the wrapper on connect), info,
   * devices, every device's meta/availability/state, then the request subscription. Publishes are
   * issued in order and awaited together: one TCP stream keeps them in order.
   */
  async birth(options: { includeState?: boolean } = {}): Promise<number> {
    if (!this.mqtt.connected) return 0;
    for (const [device, reason] of [...this.pendingRemovals]) {
      this.pendingRemovals.delete(device);
      await this.removeDevice(device, reason);
    }
    const sends: Promise<boolean>[] = [];
    if (options.includeState)
      sends.push(
        this.mqtt.publish(
          Topics.bridgeRel("state"),
          { state: "online", bd_seq: this.mqtt.bdSeq, timestamp: new Date().toISOString() },
          TOPIC_QOS.state,
        ),
      );
    sends.push(this.mqtt.publish(Topics.bridgeRel("info"), this.info(), TOPIC_QOS.info));
    sends.push(this.mqtt.publish(Topics.bridgeRel("devices"), this.inventory(), TOPIC_QOS.devices));
    let count = 0;
    for (const entry of [...this.devices.values()].sort((a, b) => a.instance - b.instance)) {
      count += 1;
      sends.push(this.publishMeta(entry));
      // Not answered yet since it was managed: the first answer (or its absence) publishes it.
      const availability = this.engine.availability(entry.instance);
      if (availability !== "unknown")
        sends.push(this.publishAvailability(entry.instance, availability === "online"));
      if (Object.keys(entry.values).length > 0) sends.push(this.publishState(entry));
    }
    await Promise.all(sends);
    await this.mqtt.subscribe(Topics.requestFilterRel());
    void this.publishHealth();
    return count;
  }

  info(): BridgeInfoPayload {
    const ep = safeEndpoint(this.engine);
    const bbmd = this.config.bacnet.bbmd ?? null;
    return {
      version,
      gateway_id: this.config.gateway_id,
      started_at: this.startedAt.toISOString(),
      bacnet: {
        interface: ep?.interface ?? this.config.bacnet.interface ?? null,
        address: ep?.address ?? null,
        port: ep?.port ?? this.config.bacnet.port,
        broadcast: ep?.broadcast ?? this.config.bacnet.broadcast ?? null,
        bbmd,
      },
      mqtt: { base_topic: this.config.mqtt.base_topic, url: redactUrl(this.config.mqtt.url) },
      config: publicConfig(this.config),
    };
  }

  inventory(): BridgeDevicesPayload {
    let online = 0;
    let offline = 0;
    let points = 0;
    const instances: number[] = [];
    for (const entry of this.devices.values()) {
      instances.push(entry.instance);
      // A device that has not answered since it was managed is neither (count − online − offline).
      const availability = this.engine.availability(entry.instance);
      if (availability === "online") online += 1;
      else if (availability === "offline") offline += 1;
      points += entry.catalogue?.points.length ?? 0;
    }
    instances.sort((a, b) => a - b);
    return {
      timestamp: new Date().toISOString(),
      count: instances.length,
      online,
      offline,
      points,
      device_instances: instances,
    };
  }

  meta(entry: DeviceEntry): DeviceMetaPayload {
    const c = entry.catalogue;
    const d = entry.discovered;
    const cfg = this.config.devices[String(entry.instance)];
    const opts = this.deviceOptions(entry.instance);
    const pointsCfg = cfg?.points ?? {};
    return {
      device_instance: entry.instance,
      address: d.address,
      network: d.network,
      mac: d.mac,
      object_name: c?.objectName ?? null,
      description: c?.description ?? null,
      location: c?.location ?? null,
      vendor_id: d.vendorId ?? null,
      vendor_name: c?.vendorName ?? null,
      model_name: c?.modelName ?? null,
      firmware_revision: c?.firmwareRevision ?? null,
      application_software_version: c?.applicationSoftwareVersion ?? null,
      max_apdu: d.maxApdu ?? null,
      segmentation: d.segmentation ?? null,
      supports_rpm: c?.supportsRpm ?? false,
      ...(cfg?.name !== undefined ? { friendly_name: cfg.name } : {}),
      updated_at: c?.readAt ?? new Date().toISOString(),
      points: (c?.points ?? []).map((p) => {
        const friendly = pointsCfg[p.point]?.name;
        return {
          ...p,
          poll_interval_s: pointsCfg[p.point]?.poll_interval_s ?? p.poll_interval_s ?? opts.pollIntervalS,
          ...(friendly !== undefined ? { friendly_name: friendly } : {}),
        };
      }),
    };
  }

  publishMeta(entry: DeviceEntry): Promise<boolean> {
    return this.mqtt.publish(Topics.deviceRel(entry.instance, "meta"), this.meta(entry), TOPIC_QOS.meta);
  }

  publishDevices(): Promise<boolean> {
    if (this.devicesTimer) clearTimeout(this.devicesTimer);
    this.devicesTimer = undefined;
    return this.mqtt.publish(Topics.bridgeRel("devices"), this.inventory(), TOPIC_QOS.devices);
  }

  /**
   * Coalesced `bridge/devices`: a scan adopting hundreds of devices, or a network blip taking them
   * offline together, sends one inventory instead of one per device.
   */
  requestDevices(): void {
    if (this.devicesTimer || this.stopped) return;
    this.devicesTimer = setTimeout(() => {
      this.devicesTimer = undefined;
      void this.publishDevices();
    }, DEVICES_COALESCE_MS);
    this.devicesTimer.unref?.();
  }

  publishAvailability(device: number, online: boolean, reason?: string): Promise<boolean> {
    return this.mqtt.publish(
      Topics.deviceRel(device, "availability"),
      {
        state: online ? "online" : "offline",
        timestamp: new Date().toISOString(),
        ...(reason ? { reason } : {}),
      },
      TOPIC_QOS.availability,
    );
  }

  /** A removed device: no more polling, retained topics cleared with empty payloads, event. */
  async removeDevice(device: number, reason: string): Promise<void> {
    const entry = this.devices.get(device);
    if (entry?.stateTimer) clearTimeout(entry.stateTimer);
    this.devices.delete(device);
    if (!this.mqtt.connected) {
      // Cleared at the next birth: the broker keeps the retained topics until then.
      this.pendingRemovals.set(device, reason);
      return;
    }
    await Promise.all([
      this.mqtt.clearRetained(Topics.deviceRel(device, "meta")),
      this.mqtt.clearRetained(Topics.deviceRel(device, "availability")),
      this.mqtt.clearRetained(Topics.deviceRel(device, "state")),
    ]);
    this.event("device_removed", { device, reason });
    await this.publishDevices();
  }

  // ---- engine events -----------------------------------------------------------------------

  private onAvailability(device: number, state: "online" | "offline", reason: string): void {
    if (this.stopped) return;
    void this.publishAvailability(device, state === "online", reason);
    this.event(state === "online" ? "device_online" : "device_offline", { device, reason });
    this.requestDevices();
  }

  onReadings(device: number, readings: ReadingPayload[], source: "poll" | "cov"): void {
    if (readings.length === 0) return;
    const entry = this.devices.get(device);
    if (entry) {
      for (const r of readings) if (r.error === undefined) entry.values[r.point] = r.value;
      this.scheduleState(entry);
    }
    const window = this.config.mqtt.cov_batch_ms;
    if (source === "cov" && window > 0) {
      // COV notifications arrive one value at a time; a burst becomes one readings message.
      let batch = this.covBatches.get(device);
      if (!batch) {
        const timer = setTimeout(() => this.flushCov(device), window);
        batch = { readings: [], timer };
        this.covBatches.set(device, batch);
      }
      batch.readings.push(...readings);
      return;
    }
    // A poll cycle's values come after the COV values that preceded them.
    this.flushCov(device);
    this.sendReadings({ device, source, readings });
  }

  private flushCov(device: number): void {
    const batch = this.covBatches.get(device);
    if (!batch) return;
    clearTimeout(batch.timer);
    this.covBatches.delete(device);
    this.sendReadings({ device, source: "cov", readings: batch.readings });
  }

  /** Ends the startup hold: live when connected with nothing older buffered, else to the buffer. */
  private releaseStartupHold(connected: boolean): void {
    const held = this.startupHold;
    if (held === null) return;
    this.startupHold = null;
    if (this.startupTimer) clearTimeout(this.startupTimer);
    const live = connected && this.buffer.depth === 0 && this.draining === undefined;
    for (const h of held) {
      if (live) this.publishLive(h.topic, h.payload, h.body, h.rec);
      // Journalled: it waits for the replay where it is, behind what the last process left.
      else if (h.rec) this.settle(h.topic, h.payload, h.rec, false);
      else this.toBuffer(h.topic, h.payload);
    }
  }

  /**
   * Write-ahead: the message is in the disk journal before it is handed to MQTT, and marked done
   * there on the PUBACK. A process that dies in between leaves it to the next start's replay
   * (historical, perhaps a duplicate: the ingest is idempotent on point + ts). A failed publish
   * leaves it waiting in its place, for the replay. With `buffer.write_ahead: false` only a failed
   * publish is buffered (appended at the end), as before the journal.
   */
  private publishLive(
    topic: string,
    payload: DeviceReadingsPayload,
    body = JSON.stringify(payload),
    rec = this.journal(topic, body),
  ): void {
    void this.mqtt
      .publish(topic, body, TOPIC_QOS.readings)
      .then((ok) => this.settle(topic, payload, rec, ok));
  }

  /** Writes a live message ahead; undefined when `write_ahead` is off or the write failed. */
  private journal(topic: string, body: string): LiveRecord | undefined {
    if (!this.config.buffer.write_ahead) return undefined;
    try {
      const rec = this.buffer.appendLive(topic, body);
      if (this.journalFailing) this.log.info("readings journal writable again");
      this.journalFailing = false;
      return rec;
    } catch (err) {
      // Still published: the broker may take it, only the crash protection is missing for it.
      if (!this.journalFailing)
        this.log.error(
          { err: (err as Error).message },
          "cannot journal readings before publishing: a crash now loses what is in flight",
        );
      this.journalFailing = true;
      return undefined;
    }
  }

  /** The broker's answer (or none, for held readings going to the buffer) for a live message. */
  private settle(
    topic: string,
    payload: DeviceReadingsPayload,
    rec: LiveRecord | undefined,
    ok: boolean,
  ): void {
    if (rec === undefined) {
      if (!ok) this.toBuffer(topic, payload);
      return;
    }
    this.buffer.settleLive(rec, ok);
    if (ok) return;
    this.counters.buffered += 1;
    if (this.mqtt.connected) this.kickDrain();
  }

  private sendReadings(payload: DeviceReadingsPayload): void {
    this.counters.readingsMessages += 1;
    this.counters.readingsValues += payload.readings.length;
    if (this.startupHold !== null) {
      const topic = Topics.deviceRel(payload.device, "readings");
      const body = JSON.stringify(payload);
      this.startupHold.push({ topic, payload, body, rec: this.journal(topic, body) });
      if (this.startupHold.length >= STARTUP_HOLD_MAX) this.releaseStartupHold(this.mqtt.connected);
      return;
    }
    const topic = Topics.deviceRel(payload.device, "readings");
    // Order matters: once anything waits in the buffer, new readings queue behind it.
    if (this.mqtt.connected && this.buffer.depth === 0 && this.draining === undefined) {
      this.publishLive(topic, payload);
    } else {
      this.toBuffer(topic, payload);
    }
  }

  private toBuffer(topic: string, payload: DeviceReadingsPayload): void {
    try {
      this.buffer.append(topic, JSON.stringify(payload));
      this.counters.buffered += 1;
    } catch (err) {
      this.log.error({ err: (err as Error).message }, "cannot buffer readings");
      return;
    }
    if (this.mqtt.connected) this.kickDrain();
  }

  /** Replays the buffer (marked historical); one drain at a time, restarted if more arrived meanwhile. */
  kickDrain(): void {
    if (this.draining !== undefined) {
      this.drainAgain = true;
      return;
    }
    if (this.buffer.depth === 0 || !this.mqtt.connected) return;
    this.draining = (async () => {
      do {
        this.drainAgain = false;
        const sent = await this.buffer.drain(
          // Marked historical without re-parsing: the body is a JSON object as buffered.
          (topic, body) => this.mqtt.publishAcked(topic, `{"historical":true,${body.slice(1)}`),
          { shouldStop: () => !this.mqtt.connected },
        );
        if (sent > 0) this.log.info({ sent, left: this.buffer.depth }, "buffer replayed");
      } while ((this.drainAgain || this.buffer.depth > 0) && this.mqtt.connected && !this.stopped);
    })()
      .catch((err: unknown) => this.log.error({ err: String(err) }, "buffer replay failed"))
      .finally(() => {
        this.draining = undefined;
      });
  }

  /** Waits until the buffer replay in progress (if any) has finished. */
  async drained(): Promise<void> {
    while (this.draining !== undefined) await this.draining;
  }

  private scheduleState(entry: DeviceEntry): void {
    const throttle = this.config.mqtt.state_throttle_ms;
    if (entry.stateTimer) return;
    const wait = entry.lastStateAt + throttle - performance.now();
    if (wait <= 0) {
      void this.publishState(entry);
      return;
    }
    entry.stateTimer = setTimeout(() => {
      entry.stateTimer = undefined;
      void this.publishState(entry);
    }, wait);
  }

  publishState(entry: DeviceEntry): Promise<boolean> {
    entry.lastStateAt = performance.now();
    return this.mqtt.publish(
      Topics.deviceRel(entry.instance, "state"),
      { timestamp: new Date().toISOString(), values: entry.values },
      TOPIC_QOS.state,
    );
  }

  // ---- events and health -------------------------------------------------------------------

  event(type: EventType, data: Record<string, unknown>): void {
    if (this.stopped && type !== "write") return;
    void this.mqtt.publish(
      Topics.bridgeRel("event"),
      { type, timestamp: new Date().toISOString(), data },
      TOPIC_QOS.event,
    );
  }

  health(): BridgeHealthPayload {
    const s = this.engine.stats();
    return {
      timestamp: new Date().toISOString(),
      uptime_s: Math.round((Date.now() - this.startedAt.getTime()) / 100) / 10,
      devices: { ...s.devices },
      points: s.points,
      polling: {
        reads_per_s: s.readsPerS,
        errors_total: s.errorsTotal,
        overruns_total: s.overrunsTotal,
        lag_ms: s.lagMs,
      },
      cov: { subscriptions: s.covSubscriptions, notifications_total: s.covNotificationsTotal },
      buffer: {
        depth: this.buffer.depth,
        bytes: this.buffer.bytes,
        dropped_total: this.buffer.stats.dropped,
      },
      mqtt: { published_total: this.mqtt.stats.published, failed_total: this.mqtt.stats.failed },
    };
  }

  publishHealth(): Promise<boolean> {
    return this.mqtt.publish(Topics.bridgeRel("health"), this.health(), TOPIC_QOS.health);
  }
}

function globRegExp(glob: string): RegExp {
  return new RegExp(`^${glob.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`, "i");
}

export function expandPatterns(patterns: string[], points: { point: string; name: string }[]): string[] {
  const out: string[] = [];
  for (const p of patterns) {
    if (p.startsWith("name:")) {
      const re = globRegExp(p.slice(5));
      for (const point of points) if (re.test(point.name)) out.push(point.point);
      // A pattern that matches nothing must still select nothing rather than everything.
      if (!points.some((point) => re.test(point.name))) out.push(`__no_point_named_${out.length}`);
    } else if (p.startsWith("type:")) {
      out.push(`${p.slice(5).replace(/-/g, "_")}_*`);
    } else {
      out.push(p);
    }
  }
  return out;
}

function safeEndpoint(engine: BacnetEngine): ReturnType<BacnetEngine["endpoint"]> | undefined {
  try {
    return engine.endpoint();
  } catch {
    return undefined;
  }
}
