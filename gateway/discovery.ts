// Device discovery and the catalogue lifecycle: resume from the on-disk catalogue at start (polling
// begins at once), scan in the background and on a schedule, read the catalogue of new devices,
// hand devices to the engine's scheduler, notice lost devices, remove disabled ones. Scans run one
// at a time. Publishing goes through the bridge; BACnet through the engine interface.
import type { Logger } from "../common/logger.ts";
import type {
  BacnetEngine,
  DeviceCatalogue,
  DeviceOptions,
  DiscoveredDevice,
  DiscoverOptions,
} from "./bacnet/types.ts";
import type { CatalogueStore } from "./catalogue-store.ts";
import type { GatewayConfig } from "./config.ts";
import type { Bridge } from "./mqtt/bridge.ts";

export interface ScanRequest {
  low?: number;
  high?: number;
  targets?: string[];
  broadcast?: string;
  timeout_s?: number;
  chunk_size?: number;
  points?: boolean;
}

export interface ScanResult {
  scan_id: string;
  devices_found: number;
  new_devices: number[];
  duration_ms: number;
}

const CATALOGUE_CONCURRENCY = 4;

export class Discovery {
  private readonly engine: BacnetEngine;
  private readonly bridge: Bridge;
  private readonly store: CatalogueStore;
  private readonly config: GatewayConfig;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private scans = 0;
  private stopped = false;
  /** Devices whose catalogue we are reading ourselves: the engine's `catalogue` event is ours then. */
  private readonly reading = new Set<number>();
  private readonly onCatalogue = (c: DeviceCatalogue) => {
    if (this.stopped || this.reading.has(c.deviceInstance) || !this.bridge.isEnabled(c.deviceInstance))
      return;
    this.adopt(c);
  };

  constructor(deps: {
    engine: BacnetEngine;
    bridge: Bridge;
    store: CatalogueStore;
    config: GatewayConfig;
    log: Logger;
  }) {
    this.engine = deps.engine;
    this.bridge = deps.bridge;
    this.store = deps.store;
    this.config = deps.config;
    this.log = deps.log;
  }

  /** Resumes every stored device (polling starts now), then scans in the background. */
  async start(): Promise<void> {
    for (const stored of this.store.load()) {
      const id = stored.catalogue.deviceInstance;
      if (!this.bridge.isEnabled(id)) {
        await this.remove(id, "disabled in configuration");
        continue;
      }
      this.adopt(stored.catalogue, stored.options);
    }
    this.engine.on("catalogue", this.onCatalogue);
    if (this.config.discovery.on_start) this.background("start");
    const every = this.config.discovery.interval_s;
    if (every > 0) {
      this.timer = setInterval(() => this.background("schedule"), every * 1000);
      this.timer.unref();
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.engine.off("catalogue", this.onCatalogue);
  }

  private background(reason: string): void {
    void this.scan({}, true).catch((err: unknown) =>
      this.log.warn({ reason, err: String(err) }, "background scan failed"),
    );
  }

  /** A device whose catalogue is known: registered, scheduled, stored, meta published. */
  adopt(catalogue: DeviceCatalogue, runtimeOptions?: DeviceOptions): void {
    const entry = this.bridge.setCatalogue(catalogue, runtimeOptions);
    this.engine.manage(this.bridge.scheduledCatalogue(catalogue), this.bridge.engineOptions(entry.instance));
    this.store.save({ catalogue, options: entry.runtimeOptions });
    // Availability follows from the engine's own `availability` event for a managed device.
    void this.bridge.publishMeta(entry);
    this.bridge.requestDevices();
  }

  /** Reads a device's catalogue now and adopts it (discovery and `device/points`). */
  async readAndAdopt(device: DiscoveredDevice): Promise<DeviceCatalogue> {
    this.reading.add(device.deviceInstance);
    try {
      const catalogue = await this.engine.readCatalogue(device);
      if (!this.stopped)
        this.adopt(catalogue, this.bridge.devices.get(device.deviceInstance)?.runtimeOptions);
      return catalogue;
    } finally {
      this.reading.delete(device.deviceInstance);
    }
  }

  /** Stops polling a device and clears everything the gateway published or stored for it. */
  async remove(device: number, reason: string): Promise<void> {
    await this.engine.unmanage(device).catch(() => undefined);
    this.store.remove(device);
    await this.bridge.removeDevice(device, reason);
  }

  /** Runs a scan after any scan in progress (`scheduled`: from the timer or the start, not a request). */
  scan(request: ScanRequest, scheduled = false): Promise<ScanResult> {
    const run = this.chain.then(() => this.runScan(request, scheduled));
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async runScan(request: ScanRequest, scheduled: boolean): Promise<ScanResult> {
    const d = this.config.discovery;
    this.scans += 1;
    const scanId = `s-${this.scans}-${Date.now().toString(36)}`;
    const started = Date.now();
    const options: DiscoverOptions = {
      // A request's options win; what it leaves out comes from the configured site scan.
      low: request.low ?? d.low,
      high: request.high ?? d.high,
      targets: request.targets ?? (d.targets.length ? d.targets : undefined),
      broadcast: request.broadcast ?? this.config.bacnet.broadcast,
      timeoutS: request.timeout_s ?? d.timeout_s,
      chunkSize: request.chunk_size ?? d.chunk_size,
    };
    for (const k of Object.keys(options) as (keyof DiscoverOptions)[])
      if (options[k] === undefined) delete options[k];
    this.bridge.event("scan_started", { scan_id: scanId, options: { ...request }, scheduled });
    const found = await this.engine.discover(options);
    const newDevices: number[] = [];
    const toRead: DiscoveredDevice[] = [];
    for (const device of found) {
      const id = device.deviceInstance;
      if (!this.bridge.isEnabled(id)) continue;
      const known = this.bridge.devices.get(id);
      if (!known?.catalogue) newDevices.push(id);
      const moved = known && known.discovered.address !== device.address;
      this.bridge.upsertDiscovered(device);
      if (!known?.catalogue || moved) toRead.push(device);
    }
    if (request.points !== false) {
      let next = 0;
      const worker = async () => {
        while (next < toRead.length && !this.stopped) {
          const device = toRead[next++]!;
          try {
            await this.readAndAdopt(device);
          } catch (err) {
            this.log.warn({ device: device.deviceInstance, err: String(err) }, "catalogue read failed");
          }
        }
      };
      await Promise.all(Array.from({ length: CATALOGUE_CONCURRENCY }, worker));
    } else {
      for (const id of newDevices) {
        const entry = this.bridge.devices.get(id);
        if (entry) void this.bridge.publishMeta(entry);
      }
    }
    // Only a scan of the whole configured site can tell that a device is gone.
    const full = request.low === undefined && request.high === undefined && request.targets === undefined;
    if (full) this.noticeLost(new Set(found.map((f) => f.deviceInstance)));
    await this.bridge.publishDevices();
    const result: ScanResult = {
      scan_id: scanId,
      devices_found: found.length,
      new_devices: newDevices.sort((a, b) => a - b),
      duration_ms: Date.now() - started,
    };
    this.bridge.event("scan_finished", { ...result });
    return result;
  }

  private noticeLost(seen: Set<number>): void {
    for (const entry of this.bridge.devices.values()) {
      if (seen.has(entry.instance)) continue;
      entry.missedScans += 1;
      if (
        entry.missedScans === this.config.discovery.lost_after_scans &&
        !this.engine.isOnline(entry.instance)
      )
        this.bridge.event("device_lost", { device: entry.instance, missed_scans: entry.missedScans });
    }
  }
}
