// The device catalogue on disk: one JSON file per device (its catalogue and the options set at run
// time through `device/options`), replaced atomically, so a restart resumes polling at once while
// a rescan runs in the background. Owns `<data_dir>/devices/`; nothing else writes there.
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Logger } from "../common/logger.ts";
import type { DeviceCatalogue, DeviceOptions } from "./bacnet/types.ts";

export interface StoredDevice {
  catalogue: DeviceCatalogue;
  /** Options changed through `device/options` (they win over the configuration file). */
  options: DeviceOptions;
}

export class CatalogueStore {
  private readonly dir: string;
  private readonly log: Logger;

  constructor(dataDir: string, log: Logger) {
    this.dir = path.join(dataDir, "devices");
    this.log = log;
  }

  private file(device: number): string {
    return path.join(this.dir, `${device}.json`);
  }

  /** Every stored device; unreadable files are logged and skipped (the rescan finds the device again). */
  load(): StoredDevice[] {
    mkdirSync(this.dir, { recursive: true });
    const out: StoredDevice[] = [];
    for (const name of readdirSync(this.dir)) {
      if (!/^\d+\.json$/.test(name)) continue;
      try {
        const stored = JSON.parse(readFileSync(path.join(this.dir, name), "utf8")) as StoredDevice;
        if (typeof stored?.catalogue?.deviceInstance !== "number" || !Array.isArray(stored.catalogue.points))
          throw new Error("not a stored device");
        out.push({ catalogue: stored.catalogue, options: stored.options ?? {} });
      } catch (err) {
        this.log.warn({ file: name, err: (err as Error).message }, "ignoring unreadable catalogue file");
      }
    }
    return out.sort((a, b) => a.catalogue.deviceInstance - b.catalogue.deviceInstance);
  }

  save(device: StoredDevice): void {
    mkdirSync(this.dir, { recursive: true });
    const file = this.file(device.catalogue.deviceInstance);
    try {
      writeFileSync(`${file}.tmp`, JSON.stringify(device));
      renameSync(`${file}.tmp`, file);
    } catch (err) {
      this.log.error({ file, err: (err as Error).message }, "cannot save device catalogue");
    }
  }

  remove(device: number): void {
    rmSync(this.file(device), { force: true });
  }
}
