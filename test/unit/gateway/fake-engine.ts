// A stand-in for the BACnet engine, for unit tests of the bridge's own logic only (integration
// tests use the real engine against the simulator). Implements the interface in
// gateway/bacnet/types.ts with in-memory devices.
import { EventEmitter } from "node:events";
import { CodedError } from "../../../common/errors.ts";
import type { ReadingPayload, Value } from "../../../contract/index.ts";
import type {
  BacnetEngine,
  DeviceCatalogue,
  DeviceOptions,
  DiscoveredDevice,
  DiscoverOptions,
  EngineEvents,
  EngineStats,
  WriteOutcome,
} from "../../../gateway/bacnet/types.ts";

export function catalogue(device: number, points = 3): DeviceCatalogue {
  return {
    deviceInstance: device,
    address: `127.0.0.2:${47808 + (device % 100)}`,
    network: null,
    mac: null,
    maxApdu: 1476,
    segmentation: "both",
    vendorId: 999,
    objectName: `DEV-${device}`,
    description: null,
    location: null,
    vendorName: "test",
    modelName: null,
    firmwareRevision: null,
    applicationSoftwareVersion: null,
    supportsRpm: true,
    supportsCov: true,
    readAt: "2026-11-27T08:00:00.000Z",
    points: Array.from({ length: points }, (_, i) => ({
      point: `analog_output_${i + 1}`,
      object_type: "analog-output",
      object_instance: i + 1,
      name: `AO ${i + 1}`,
      description: null,
      units: "percent",
      units_code: 98,
      writable: true,
      state_texts: null,
      active_text: null,
      inactive_text: null,
      cov_increment: null,
    })),
  };
}

export class FakeEngine extends EventEmitter implements BacnetEngine {
  devicesOnNetwork = new Map<number, DeviceCatalogue>();
  managedDevices = new Map<number, { catalogue: DeviceCatalogue; options: DeviceOptions }>();
  offline = new Set<number>();
  writes: { device: number; point: string; value: Value; priority?: number }[] = [];
  started = false;

  async start(): Promise<void> {
    this.started = true;
  }
  async stop(): Promise<void> {
    this.started = false;
  }
  endpoint() {
    return { address: "127.0.0.5", port: 47809, interface: "lo", broadcast: "127.255.255.255" };
  }
  async discover(_o?: DiscoverOptions): Promise<DiscoveredDevice[]> {
    return [...this.devicesOnNetwork.values()];
  }
  async readCatalogue(device: DiscoveredDevice): Promise<DeviceCatalogue> {
    const c = this.devicesOnNetwork.get(device.deviceInstance);
    if (!c) throw new CodedError("GW_ERR_BACNET_TIMEOUT", "no answer");
    return c;
  }
  manage(c: DeviceCatalogue, options: DeviceOptions = {}): void {
    this.managedDevices.set(c.deviceInstance, { catalogue: c, options });
    // Announced at once; the real engine announces a device with its first answer (or failures).
    this.emit(
      "availability",
      c.deviceInstance,
      this.offline.has(c.deviceInstance) ? "offline" : "online",
      "managed",
    );
  }
  async unmanage(device: number): Promise<void> {
    this.managedDevices.delete(device);
  }
  setOptions(device: number, options: DeviceOptions): DeviceOptions {
    const m = this.managedDevices.get(device);
    if (m) m.options = { ...m.options, ...options };
    return m?.options ?? options;
  }
  managed(): DeviceCatalogue[] {
    return [...this.managedDevices.values()].map((m) => m.catalogue);
  }
  isOnline(device: number): boolean {
    return this.managedDevices.has(device) && !this.offline.has(device);
  }
  availability(device: number): "unknown" | "online" | "offline" {
    if (!this.managedDevices.has(device)) return "unknown";
    return this.offline.has(device) ? "offline" : "online";
  }
  async read(_device: number, _point: string, _property?: string): Promise<unknown> {
    return 42.5;
  }
  async readPoints(): Promise<ReadingPayload[]> {
    return [];
  }
  async write(device: number, point: string, value: Value, priority?: number): Promise<WriteOutcome> {
    this.writes.push({ device, point, value, ...(priority !== undefined ? { priority } : {}) });
    const p = priority ?? 16;
    const arr: Value[] = Array(16).fill(null);
    arr[p - 1] = value;
    return {
      device,
      point,
      value,
      priority: p,
      presentValue: value ?? 0,
      priorityArray: arr,
      ts: "2026-11-27T08:03:00.000Z",
    };
  }
  stats(): EngineStats {
    const total = this.managedDevices.size;
    const online = [...this.managedDevices.keys()].filter((d) => !this.offline.has(d)).length;
    return {
      devices: { total, online, offline: total - online },
      points: this.managed().reduce((n, c) => n + c.points.length, 0),
      readsTotal: 10,
      readsPerS: 1,
      errorsTotal: 0,
      errorsByCode: {},
      overrunsTotal: 0,
      lagMs: 0,
      covSubscriptions: 0,
      covNotificationsTotal: 0,
      covFallbacks: 0,
    };
  }
  override on<E extends keyof EngineEvents>(event: E, listener: EngineEvents[E]): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }
  override off<E extends keyof EngineEvents>(event: E, listener: EngineEvents[E]): this {
    return super.off(event, listener as (...args: unknown[]) => void);
  }
}
