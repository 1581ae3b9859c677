// Which writes the gateway lets through: the configured allowlist (`device:point` patterns with `*`,
// plus points marked `writable: true`), points marked `writable: false` (always refused), and the
// minimum priority. Checked before the engine is asked (which enforces the same list again), so a
// refusal never reaches the building network and is always reported the same way.
import { CodedError } from "../common/errors.ts";
import type { GatewayConfig } from "./config.ts";

function globToRegExp(glob: string): RegExp {
  return new RegExp(`^${glob.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`);
}

export class WritePolicy {
  private readonly allow: RegExp[];
  private readonly denied = new Set<string>();
  readonly minPriority: number;
  readonly defaultPriority: number;
  /** The allowlist in the engine's `device:point` pattern form. */
  readonly patterns: string[];

  constructor(config: GatewayConfig) {
    const patterns = [...config.write.allowlist];
    for (const [device, d] of Object.entries(config.devices)) {
      for (const [point, p] of Object.entries(d.points ?? {})) {
        if (p.writable === true) patterns.push(`${device}:${point}`);
        if (p.writable === false) this.denied.add(`${device}:${point}`);
      }
    }
    this.patterns = patterns;
    this.allow = patterns.map(globToRegExp);
    this.minPriority = config.write.min_priority;
    this.defaultPriority = config.write.default_priority;
  }

  /** Throws GW_ERR_WRITE_NOT_ALLOWED with the reason; returns the priority to use. */
  check(device: number, point: string, priority: number | undefined): number {
    const key = `${device}:${point}`;
    const p = priority ?? this.defaultPriority;
    if (this.denied.has(key) || !this.allow.some((re) => re.test(key)))
      throw new CodedError("GW_ERR_WRITE_NOT_ALLOWED", `${key} is not in the gateway's write allowlist`);
    if (p < this.minPriority)
      throw new CodedError(
        "GW_ERR_WRITE_NOT_ALLOWED",
        `priority ${p} is above the configured minimum priority ${this.minPriority}`,
      );
    return p;
  }
}
