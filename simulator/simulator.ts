// `startSimulator`: builds the simulated devices and routers of a SimulatorConfig, binds their
// BACnet/IP nodes, runs the one timer that drives COV and expiry, and exposes the handle the tests,
// benchmarks and the `simulate` command use. The public types here are a binding API: the gateway's
// engine is tested against them.
import { ConfigError } from "../common/errors.ts";
import { createLogger } from "../common/logger.ts";
import { MAX_INSTANCE } from "../contract/points.ts";
import { type DeviceCounters, type DeviceOptions, SimDevice } from "./device.ts";
import { BipNode, type Impairment, type NodeCounters } from "./node.ts";
import { mulberry32, SIM_OBJECT_TYPES, type SimObjectTypeName } from "./objects.ts";

export type { SimObjectTypeName } from "./objects.ts";

export interface SimDeviceConfig {
  /** Device instance. */
  instance: number;
  /** object-name, default `SIM-<instance>`. */
  name?: string;
  /** IPv4 to bind, default "127.0.0.1" (127.0.0.x, or an address inside a netns). */
  address?: string;
  /** UDP port, default 47808; 0 = pick a free port. */
  port?: number;
  /** Object counts by type; default a small mixed set. */
  objects?: Partial<Record<SimObjectTypeName, number>>;
  /** Default true: replies larger than the max APDU are segmented when the client accepts segments. */
  segmentation?: boolean;
  /** Default 1476 (use e.g. 480 / 206 to force small replies). */
  maxApdu?: number;
  /** Supports ReadPropertyMultiple (default true); false => Reject/unrecognized-service. */
  rpm?: boolean;
  /** Supports SubscribeCOV (default true). */
  cov?: boolean;
  /**
   * COV misbehaviour by point id (`"*"` = every object), as broken or overloaded controllers show:
   * `"silent"` acknowledges SubscribeCOV (SimpleACK) but never sends a notification, not even the
   * initial one; `"refuse"` answers SubscribeCOV with Error (object, optional-functionality-not-supported).
   */
  covFaults?: Record<string, "silent" | "refuse">;
  vendorId?: number;
  vendorName?: string;
  modelName?: string;
  firmwareRevision?: string;
  /** Per-datagram artificial delay (added to every datagram the device sends). */
  latencyMs?: number;
  /** Drop probability (0..1) of every datagram the device receives or sends. */
  lossRate?: number;
  /** Extra random delay 0..jitterMs per datagram the device sends: replies arrive out of order. */
  jitterMs?: number;
  /** Probability (0..1) that a datagram the device sends goes out twice, the copy later. */
  duplicateRate?: number;
  /** The copy comes 1..duplicateDelayMs ms after the original (default: jitterMs, at least 20). */
  duplicateDelayMs?: number;
  /** How often inputs drift (default 1000; 0 = static). */
  changeIntervalMs?: number;
}

/** A BACnet router: one BACnet/IP node fronting remote networks. */
export interface SimRouterConfig {
  address?: string;
  port?: number;
  /** MAC of each routed device = 1 byte, 1..n, in list order. */
  networks: { network: number; devices: Omit<SimDeviceConfig, "address" | "port">[] }[];
}

export interface SimulatorConfig {
  devices?: SimDeviceConfig[];
  routers?: SimRouterConfig[];
  seed?: number;
  /** Subnet broadcast address every node also listens on (needed for broadcast Who-Is on Linux). */
  broadcastAddress?: string;
  /** Send I-Am as a broadcast to `broadcastAddress` (as many real devices do); default false = unicast. */
  iAmBroadcast?: boolean;
}

export interface SimDeviceHandle {
  instance: number;
  address: string;
  port: number;
  network: number | null;
  mac: string | null;
}

export interface SimulatorStats {
  requestsReceived: number;
  responsesSent: number;
  /** Datagrams dropped: artificial loss, offline devices, malformed input. */
  dropped: number;
  covNotificationsSent: number;
  /** Malformed datagrams (also counted in `dropped`). */
  malformed: number;
  rejected: number;
  segmentsSent: number;
  datagramsReceived: number;
  datagramsSent: number;
  /** Handler exceptions that were not malformed input (bugs); counted in `dropped` too. */
  internalErrors: number;
  /** Datagrams sent twice (duplicateRate). */
  duplicated: number;
  /** Requests received per second over the last full second. */
  requestRate: number;
}

export interface Simulator {
  devices(): SimDeviceHandle[];
  /** point = "analog_output_1". */
  presentValue(instance: number, point: string): unknown;
  /** As the plant would (not via priority array). */
  setPresentValue(instance: number, point: string, value: number | boolean | string): void;
  /** Offline = stops answering anything. */
  setOnline(instance: number, online: boolean): void;
  stats(): SimulatorStats;
  close(): Promise<void>;
}

export const DEFAULT_OBJECTS: Readonly<Partial<Record<SimObjectTypeName, number>>> = Object.freeze({
  analog_input: 4,
  analog_output: 2,
  analog_value: 2,
  binary_input: 2,
  binary_output: 2,
  binary_value: 2,
  multi_state_input: 1,
  multi_state_output: 1,
  multi_state_value: 1,
});

const log = createLogger("simulator");

function deviceOptions(
  c: Omit<SimDeviceConfig, "address" | "port">,
  seed: number,
  iAmBroadcast: boolean,
): DeviceOptions {
  return {
    instance: c.instance,
    name: c.name ?? `SIM-${c.instance}`,
    objects: c.objects ?? DEFAULT_OBJECTS,
    segmentation: c.segmentation ?? true,
    maxApdu: c.maxApdu ?? 1476,
    rpm: c.rpm ?? true,
    cov: c.cov ?? true,
    covFaults: c.covFaults ?? {},
    vendorId: c.vendorId ?? 999,
    vendorName: c.vendorName ?? "bacmqtt",
    modelName: c.modelName ?? "bacmqtt simulated controller",
    firmwareRevision: c.firmwareRevision ?? "1.0.0",
    changeIntervalMs: c.changeIntervalMs ?? 1000,
    seed,
    iAmBroadcast,
  };
}

const impairment = (c: Omit<SimDeviceConfig, "address" | "port">): Impairment => ({
  latencyMs: c.latencyMs ?? 0,
  lossRate: c.lossRate ?? 0,
  jitterMs: c.jitterMs ?? 0,
  duplicateRate: c.duplicateRate ?? 0,
  duplicateDelayMs: c.duplicateDelayMs ?? Math.max(c.jitterMs ?? 0, 20),
});

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Every problem of a configuration at once (ConfigError), before anything is bound. */
export function validateSimulatorConfig(config: SimulatorConfig): void {
  const problems: string[] = [];
  const seen = new Set<number>();
  const endpoints = new Set<string>();
  const checkDevice = (c: Omit<SimDeviceConfig, "address" | "port">, where: string) => {
    if (!Number.isInteger(c.instance) || c.instance < 0 || c.instance >= MAX_INSTANCE)
      problems.push(`${where}: instance must be an integer 0..${MAX_INSTANCE - 1}`);
    else if (seen.has(c.instance)) problems.push(`${where}: instance ${c.instance} is used twice`);
    seen.add(c.instance);
    for (const [type, n] of Object.entries(c.objects ?? {})) {
      if (!(type in SIM_OBJECT_TYPES)) problems.push(`${where}: unknown object type "${type}"`);
      if (!Number.isInteger(n) || (n as number) < 0 || (n as number) > 100_000)
        problems.push(`${where}: object count for ${type} must be an integer 0..100000`);
    }
    for (const [key, fault] of Object.entries(c.covFaults ?? {}))
      if (fault !== "silent" && fault !== "refuse")
        problems.push(`${where}: covFaults.${key} must be "silent" or "refuse"`);
    if (c.maxApdu !== undefined && (!Number.isInteger(c.maxApdu) || c.maxApdu < 50 || c.maxApdu > 1476))
      problems.push(`${where}: maxApdu must be an integer 50..1476`);
    if (c.lossRate !== undefined && !(c.lossRate >= 0 && c.lossRate <= 1))
      problems.push(`${where}: lossRate must be within 0..1`);
    if (c.latencyMs !== undefined && !(c.latencyMs >= 0 && c.latencyMs <= 60_000))
      problems.push(`${where}: latencyMs must be within 0..60000`);
    if (c.jitterMs !== undefined && !(c.jitterMs >= 0 && c.jitterMs <= 60_000))
      problems.push(`${where}: jitterMs must be within 0..60000`);
    if (c.duplicateRate !== undefined && !(c.duplicateRate >= 0 && c.duplicateRate <= 1))
      problems.push(`${where}: duplicateRate must be within 0..1`);
    if (c.duplicateDelayMs !== undefined && !(c.duplicateDelayMs >= 0 && c.duplicateDelayMs <= 60_000))
      problems.push(`${where}: duplicateDelayMs must be within 0..60000`);
    if (c.changeIntervalMs !== undefined && !(c.changeIntervalMs >= 0))
      problems.push(`${where}: changeIntervalMs must be >= 0`);
    if (c.vendorId !== undefined && (!Number.isInteger(c.vendorId) || c.vendorId < 0 || c.vendorId > 65535))
      problems.push(`${where}: vendorId must be an integer 0..65535`);
  };
  const checkEndpoint = (address: string | undefined, port: number | undefined, where: string) => {
    const a = address ?? "127.0.0.1";
    const m = IPV4.exec(a);
    if (!m || m.slice(1).some((x) => Number(x) > 255))
      problems.push(`${where}: "${a}" is not an IPv4 address`);
    const p = port ?? 47808;
    if (!Number.isInteger(p) || p < 0 || p > 65535) problems.push(`${where}: port must be 0..65535`);
    if (p !== 0) {
      const key = `${a}:${p}`;
      if (endpoints.has(key)) problems.push(`${where}: ${key} is used twice`);
      endpoints.add(key);
    }
  };
  (config.devices ?? []).forEach((d, i) => {
    checkDevice(d, `devices[${i}]`);
    checkEndpoint(d.address, d.port, `devices[${i}]`);
  });
  (config.routers ?? []).forEach((r, i) => {
    checkEndpoint(r.address, r.port, `routers[${i}]`);
    const nets = new Set<number>();
    if (!Array.isArray(r.networks) || r.networks.length === 0) problems.push(`routers[${i}]: no networks`);
    (r.networks ?? []).forEach((n, j) => {
      if (!Number.isInteger(n.network) || n.network < 1 || n.network > 65534)
        problems.push(`routers[${i}].networks[${j}]: network must be 1..65534`);
      if (nets.has(n.network)) problems.push(`routers[${i}]: network ${n.network} is listed twice`);
      nets.add(n.network);
      if ((n.devices ?? []).length > 255)
        problems.push(`routers[${i}].networks[${j}]: at most 255 devices (1-byte MAC)`);
      (n.devices ?? []).forEach((d, k) => {
        checkDevice(d, `routers[${i}].networks[${j}].devices[${k}]`);
      });
    });
  });
  if (config.broadcastAddress !== undefined && !IPV4.test(config.broadcastAddress))
    problems.push(`broadcastAddress: "${config.broadcastAddress}" is not an IPv4 address`);
  if (problems.length) throw new ConfigError(problems);
}

export async function startSimulator(config: SimulatorConfig): Promise<Simulator> {
  validateSimulatorConfig(config);
  const seed = config.seed ?? 1;
  const rand = mulberry32(seed ^ 0x5eed);
  const deviceCounters: DeviceCounters = {
    requestsReceived: 0,
    responsesSent: 0,
    covNotificationsSent: 0,
    segmentsSent: 0,
    rejected: 0,
  };
  const nodeCounters: NodeCounters = {
    dropped: 0,
    malformed: 0,
    datagramsReceived: 0,
    datagramsSent: 0,
    sendErrors: 0,
    duplicated: 0,
    internalErrors: 0,
  };
  const nodes: BipNode[] = [];
  const devices = new Map<
    number,
    { device: SimDevice; node: BipNode; network: number | null; mac: number | null }
  >();
  const nodeOpts = (address: string | undefined, port: number | undefined) => ({
    address: address ?? "127.0.0.1",
    port: port ?? 47808,
    broadcastAddress: config.broadcastAddress,
    rand,
    log,
  });

  for (const d of config.devices ?? []) {
    const node = new BipNode(nodeOpts(d.address, d.port), nodeCounters);
    const device = new SimDevice(
      deviceOptions(d, seed, config.iAmBroadcast === true),
      node,
      deviceCounters,
      undefined,
    ).init();
    node.addLocal(device, impairment(d));
    nodes.push(node);
    devices.set(d.instance, { device, node, network: null, mac: null });
  }
  for (const r of config.routers ?? []) {
    const node = new BipNode(nodeOpts(r.address, r.port), nodeCounters);
    for (const n of r.networks) {
      n.devices.forEach((d, i) => {
        const mac = i + 1;
        const device = new SimDevice(
          deviceOptions(d, seed, config.iAmBroadcast === true),
          node,
          deviceCounters,
          {
            net: n.network,
            adr: Buffer.from([mac]),
          },
        ).init();
        node.addRouted(n.network, mac, device, impairment(d));
        devices.set(d.instance, { device, node, network: n.network, mac });
      });
    }
    nodes.push(node);
  }

  // Bind in batches: a thousand binds at once is fine for the kernel but floods the event loop.
  try {
    for (let i = 0; i < nodes.length; i += 200) {
      await Promise.all(nodes.slice(i, i + 200).map((n) => n.start()));
    }
  } catch (err) {
    await Promise.all(nodes.map((n) => n.close()));
    const e = err as NodeJS.ErrnoException;
    const hint =
      e.code === "EADDRNOTAVAIL"
        ? " (the address is not on this host; 127.0.0.0/8 works on Linux, elsewhere add loopback aliases)"
        : e.code === "EADDRINUSE"
          ? " (another process, or another simulated device, already listens there)"
          : "";
    throw new Error(`simulator: cannot bind: ${e.message}${hint}`, { cause: err });
  }

  // One timer drives COV for every device: as often as the fastest-changing device, at most 1 s.
  let fastest = 1000;
  for (const { device } of devices.values()) {
    const ms = device.opts.changeIntervalMs;
    if (ms > 0 && ms < fastest) fastest = ms;
  }
  const sweepMs = Math.max(20, fastest);
  const sweep = setInterval(() => {
    const now = Date.now();
    for (const { device } of devices.values()) device.covSweep(now);
  }, sweepMs);
  sweep.unref();
  let lastCount = 0;
  let requestRate = 0;
  const rateTimer = setInterval(() => {
    requestRate = deviceCounters.requestsReceived - lastCount;
    lastCount = deviceCounters.requestsReceived;
  }, 1000);
  rateTimer.unref();

  log.info({ devices: devices.size, nodes: nodes.length }, "simulator started");

  const get = (instance: number) => {
    const entry = devices.get(instance);
    if (!entry) throw new RangeError(`no simulated device ${instance}`);
    return entry;
  };
  let closed = false;
  return {
    devices: () =>
      [...devices.values()].map(({ device, node, network, mac }) => ({
        instance: device.instance,
        address: node.address,
        port: node.boundPort,
        network,
        mac: mac === null ? null : mac.toString(16).padStart(2, "0"),
      })),
    presentValue: (instance, point) => get(instance).device.presentValue(point),
    setPresentValue: (instance, point, value) => get(instance).device.setPresentValue(point, value),
    setOnline: (instance, online) => {
      get(instance).device.online = online;
    },
    stats: () => ({
      requestsReceived: deviceCounters.requestsReceived,
      responsesSent: deviceCounters.responsesSent,
      dropped: nodeCounters.dropped,
      covNotificationsSent: deviceCounters.covNotificationsSent,
      malformed: nodeCounters.malformed,
      rejected: deviceCounters.rejected,
      segmentsSent: deviceCounters.segmentsSent,
      datagramsReceived: nodeCounters.datagramsReceived,
      datagramsSent: nodeCounters.datagramsSent,
      internalErrors: nodeCounters.internalErrors,
      duplicated: nodeCounters.duplicated,
      requestRate,
    }),
    close: async () => {
      if (closed) return;
      closed = true;
      clearInterval(sweep);
      clearInterval(rateTimer);
      for (const { device } of devices.values()) device.stop();
      await Promise.all(nodes.map((n) => n.close()));
      log.info("simulator stopped");
    },
  };
}
