// The BACnet engine's public surface: what `gateway/mqtt/`, the CLI field tools and the benchmarks
// may use. Everything here is library-neutral: only `gateway/bacnet/` imports @bacnet-js/client,
// and nothing outside it sees the library's types. Shapes reuse the MQTT contract where they end
// up on the wire (point metadata, readings), so the bridge never re-maps fields.
import type { PointMetaPayload, ReadingPayload, Value } from "../../contract/index.ts";

export interface EngineOptions {
  /** Interface name (`eth0`, `Ethernet 2`) or local IPv4 address; default: the first non-internal IPv4 NIC. */
  interface?: string;
  /** UDP port to bind; default 47808. 0 picks a free port (tests). */
  port?: number;
  /** Broadcast address for Who-Is; default: computed from the interface's netmask. `""` disables broadcasts (unicast/BBMD only). */
  broadcast?: string;
  /** Foreign-device registration with a BBMD. */
  bbmd?: { address: string; port: number; ttlSeconds: number };
  /** Per-request timeout before a retry, ms (default 3000) and retries (default 2). */
  apduTimeoutMs?: number;
  retries?: number;
  /** Concurrency: requests in flight to one device, and in total (default 4 / 64; never above 255). */
  perDeviceInFlight?: number;
  globalInFlight?: number;
  /** Failures in a row before a device is marked offline (default 3). */
  offlineAfterFailures?: number;
  /** Default poll interval for points, seconds (default 10). */
  pollIntervalS?: number;
  /** Use SubscribeCOV where the device supports it (default true). */
  cov?: boolean;
  /** COV subscription lifetime, seconds (default 300); renewed before it ends. */
  covLifetimeS?: number;
  /** Writes: lowest-numbered (highest) priority allowed (default 8: 1–7 refused) and default priority. */
  minWritePriority?: number;
  defaultWritePriority?: number;
  /** Write allowlist: `device:point` patterns with `*` wildcards (e.g. `1001:analog_output_*`); empty = none allowed. */
  writeAllowlist?: string[];
  /** UDP port broadcasts and Who-Is go to (default: `port`, or 47808 when `port` is 0). */
  broadcastPort?: number;
  /** Unicast Who-Is targets `ip[:port]` always asked in discover() and when locating a device by instance. */
  targets?: string[];
  /** Ask for confirmed COV notifications (the engine sends the SimpleACK); default false. */
  covConfirmed?: boolean;
  /** Longest pause between probes of an offline device, seconds (default 60; probing backs off from the APDU timeout). */
  probeMaxS?: number;
  /**
   * Liveness: a managed device that has not answered anything for this long (all its points on
   * COV, nothing changing) is probed with a ReadProperty of its object-name; timeouts count toward
   * `offlineAfterFailures` (default 60 s).
   */
  livenessS?: number;
  /**
   * An acknowledged SubscribeCOV whose initial notification does not arrive within this many
   * seconds counts as silent: the point falls back to polling (default max(5, 2 × APDU timeout)).
   */
  covSilenceS?: number;
}

/** Where a device is reached: the BACnet/IP node that answered, plus DNET/DADR when routed. */
export interface DeviceAddress {
  /** `ip:port` of the BACnet/IP node (the device itself, or the router in front of it). */
  address: string;
  /** Remote network number for devices behind a BACnet router, else null. */
  network: number | null;
  /** Hex MAC address on the remote network (e.g. "0a" or "c0a80105bac0"), else null. */
  mac: string | null;
}

export interface DiscoveredDevice extends DeviceAddress {
  deviceInstance: number;
  maxApdu: number;
  segmentation: "both" | "transmit" | "receive" | "none";
  vendorId: number;
}

export interface DiscoverOptions {
  low?: number;
  high?: number;
  /** Unicast Who-Is targets, `ip[:port]`. */
  targets?: string[];
  /** Directed broadcast address; default the interface's broadcast. */
  broadcast?: string;
  /** Also send a global broadcast Who-Is with DNET 0xFFFF to reach routed networks (default true). */
  global?: boolean;
  /** How long to listen for I-Am after the last Who-Is, seconds (default 3). */
  timeoutS?: number;
  /** Instance range split into chunks of this size, one Who-Is each (default: no split below 100,000). */
  chunkSize?: number;
  /** Who-Is sent this many times per target (default 2); answers are de-duplicated. */
  repeats?: number;
}

export interface ScanProgress {
  scanId: string;
  phase: "whois" | "listening" | "catalogue" | "done";
  sent: number;
  total: number;
  found: number;
}

/** A device's catalogue: device properties plus every point's metadata, in contract shape. */
export interface DeviceCatalogue extends DiscoveredDevice {
  objectName: string | null;
  description: string | null;
  location: string | null;
  vendorName: string | null;
  modelName: string | null;
  firmwareRevision: string | null;
  applicationSoftwareVersion: string | null;
  supportsRpm: boolean;
  supportsCov: boolean;
  points: PointMetaPayload[];
  /** Present values read with the metadata (point → value), so a scan can show them without a poll. */
  presentValues?: Record<string, Value>;
  readAt: string;
}

export interface WriteOutcome {
  device: number;
  point: string;
  value: Value;
  priority: number;
  presentValue: Value;
  priorityArray: Value[] | null;
  ts: string;
}

export interface DeviceOptions {
  pollIntervalS?: number;
  /** COV for the device's points; a point's own `cov` in the catalogue (configuration) wins. */
  cov?: boolean;
  include?: string[];
  exclude?: string[];
}

/** Events the engine emits; the MQTT bridge turns them into topics. */
export interface EngineEvents {
  /** A batch of values from one poll cycle or COV burst of one device. */
  readings: (device: number, readings: ReadingPayload[], source: "poll" | "cov") => void;
  availability: (device: number, state: "online" | "offline", reason: string) => void;
  /** A device answered Who-Is for the first time (or again after being lost). */
  discovered: (device: DiscoveredDevice) => void;
  /** The same instance answered from two different addresses. */
  duplicate: (device: number, addresses: DeviceAddress[]) => void;
  catalogue: (catalogue: DeviceCatalogue) => void;
  progress: (progress: ScanProgress) => void;
  overrun: (device: number, intervalS: number, cycleMs: number) => void;
  covFallback: (device: number, point: string, reason: string) => void;
  error: (err: Error) => void;
}

export interface EngineStats {
  /** Managed devices; those not answered yet (availability unknown) are neither online nor offline. */
  devices: { total: number; online: number; offline: number };
  points: number;
  readsTotal: number;
  readsPerS: number;
  errorsTotal: number;
  errorsByCode: Record<string, number>;
  overrunsTotal: number;
  lagMs: number;
  covSubscriptions: number;
  covNotificationsTotal: number;
  /** Points polled because their COV subscription was refused or stayed silent. */
  covFallbacks: number;
}

/**
 * The engine: one UDP endpoint, discovery, catalogue, scheduler, COV and writes.
 * Errors thrown are `CodedError`s with `GW_ERR_…` codes (see errors.ts in this folder).
 */
export interface BacnetEngine {
  start(): Promise<void>;
  /** Cancels COV subscriptions, stops polling, closes the socket. */
  stop(): Promise<void>;
  /** The bound local endpoint (`ip:port`), interface name and broadcast address. */
  endpoint(): { address: string; port: number; interface: string | null; broadcast: string | null };

  discover(options?: DiscoverOptions): Promise<DiscoveredDevice[]>;
  /** Reads device properties, the object list (whole, segmented or by index) and point metadata. */
  readCatalogue(device: DiscoveredDevice): Promise<DeviceCatalogue>;

  /** Adds (or replaces) a device in the scheduler: it is polled/COV-subscribed from now on. */
  manage(catalogue: DeviceCatalogue, options?: DeviceOptions): void;
  /** Removes a device from the scheduler (no more polling, COV cancelled). */
  unmanage(device: number): Promise<void>;
  setOptions(device: number, options: DeviceOptions): DeviceOptions;
  managed(): DeviceCatalogue[];
  isOnline(device: number): boolean;
  /** "unknown" from manage() until the device first answers, then "online" / "offline". */
  availability(device: number): "unknown" | "online" | "offline";

  /** Reads one property now (default present-value). */
  read(device: number, point: string, property?: string, index?: number): Promise<unknown>;
  /** Reads the present values (and status flags) of many points with RPM, falling back to RP. */
  readPoints(device: number, points: string[]): Promise<ReadingPayload[]>;
  /** WriteProperty present-value with priority; null relinquishes; reads back. Obeys allowlist and min priority. */
  write(device: number, point: string, value: Value, priority?: number): Promise<WriteOutcome>;

  stats(): EngineStats;
  /** Transport counters: requests re-sent after an APDU timeout, and requests that ran out of retries. */
  transportStats?(): { retries: number; timeouts: number } | undefined;

  on<E extends keyof EngineEvents>(event: E, listener: EngineEvents[E]): this;
  off<E extends keyof EngineEvents>(event: E, listener: EngineEvents[E]): this;
}
