// Turns `bacmqtt simulate` flags or a YAML/JSON file into a SimulatorConfig. Every problem is
// collected and reported at once (ConfigError), like every other command of the CLI.
import { readFileSync } from "node:fs";
import YAML from "yaml";
import { intOption, type OptionValues, stringOption } from "../common/cli.ts";
import { ConfigError } from "../common/errors.ts";
import { SIM_OBJECT_TYPES, type SimObjectTypeName } from "./objects.ts";
import type { SimDeviceConfig, SimRouterConfig, SimulatorConfig } from "./simulator.ts";

/** "analog_input=10,binary_output=4" → counts. */
export function parseObjectCounts(
  text: string,
  problems: string[],
): Partial<Record<SimObjectTypeName, number>> {
  const out: Partial<Record<SimObjectTypeName, number>> = {};
  for (const part of text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)) {
    const m = /^([a-z_]+)\s*[=:]\s*(\d+)$/.exec(part);
    if (!m) {
      problems.push(`--objects: "${part}" is not TYPE=COUNT`);
      continue;
    }
    const type = m[1] as string;
    if (!(type in SIM_OBJECT_TYPES)) {
      problems.push(
        `--objects: unknown object type "${type}" (known: ${Object.keys(SIM_OBJECT_TYPES).join(", ")})`,
      );
      continue;
    }
    out[type as SimObjectTypeName] = Number(m[2]);
  }
  return out;
}

/** The IPv4 address `n` places after `base` (127.0.0.1 + 1 = 127.0.0.2). */
export function nthAddress(base: string, n: number): string {
  const parts = base.split(".").map(Number);
  let v =
    (((parts[0] ?? 0) << 24) >>> 0) + ((parts[1] ?? 0) << 16) + ((parts[2] ?? 0) << 8) + (parts[3] ?? 0);
  v = (v + n) >>> 0;
  return [v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff].join(".");
}

export function loadConfigFile(path: string): SimulatorConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError([`--config: cannot read ${path}: ${(err as Error).message}`]);
  }
  let parsed: unknown;
  try {
    parsed = YAML.parse(text);
  } catch (err) {
    throw new ConfigError([`--config: ${path} is not valid YAML: ${(err as Error).message}`]);
  }
  if (!parsed || typeof parsed !== "object" || Array.isArray(parsed))
    throw new ConfigError([`--config: ${path} must hold a mapping with "devices" and/or "routers"`]);
  return parsed as SimulatorConfig;
}

/** Builds the configuration from command-line values (see simulator/cli.ts for the flags). */
export function configFromOptions(values: OptionValues): SimulatorConfig {
  const problems: string[] = [];
  const file = stringOption(values, "config");
  const seed = intOption(values, "seed", problems, { min: 0, max: 2 ** 31 - 1 });
  const broadcast = stringOption(values, "broadcast-address");
  const count = intOption(values, "devices", problems, { min: 0, max: 100_000 }) ?? (file ? 0 : 1);
  const first = intOption(values, "first-instance", problems, { min: 0, max: 4_194_302 }) ?? 1001;
  const address = stringOption(values, "address") ?? "127.0.0.1";
  const port = intOption(values, "port", problems, { min: 0, max: 65535 }) ?? 47808;
  const spread = stringOption(values, "spread") ?? "address";
  if (spread !== "address" && spread !== "port") problems.push(`--spread: expected "address" or "port"`);
  const maxApdu = intOption(values, "max-apdu", problems, { min: 50, max: 1476 });
  const latency = intOption(values, "latency", problems, { min: 0, max: 60_000 });
  const jitter = intOption(values, "jitter", problems, { min: 0, max: 60_000 });
  const dupText = stringOption(values, "duplicate");
  let duplicate: number | undefined;
  if (dupText !== undefined) {
    duplicate = Number(dupText);
    if (!(duplicate >= 0 && duplicate <= 1))
      problems.push(`--duplicate: "${dupText}" is not a probability 0..1`);
  }
  const change = intOption(values, "change-interval", problems, { min: 0, max: 86_400_000 });
  const lossText = stringOption(values, "loss");
  let loss: number | undefined;
  if (lossText !== undefined) {
    loss = Number(lossText);
    if (!(loss >= 0 && loss <= 1)) problems.push(`--loss: "${lossText}" is not a probability 0..1`);
  }
  const objectsText = stringOption(values, "objects");
  const objects = objectsText ? parseObjectCounts(objectsText, problems) : undefined;
  const common: Omit<SimDeviceConfig, "instance" | "address" | "port"> = {
    ...(objects ? { objects } : {}),
    ...(values["no-segmentation"] ? { segmentation: false } : {}),
    ...(values["no-rpm"] ? { rpm: false } : {}),
    ...(values["no-cov"] ? { cov: false } : {}),
    ...(maxApdu !== undefined ? { maxApdu } : {}),
    ...(latency !== undefined ? { latencyMs: latency } : {}),
    ...(loss !== undefined ? { lossRate: loss } : {}),
    ...(jitter !== undefined ? { jitterMs: jitter } : {}),
    ...(duplicate !== undefined ? { duplicateRate: duplicate } : {}),
    ...(change !== undefined ? { changeIntervalMs: change } : {}),
  };
  const config: SimulatorConfig = file ? loadConfigFile(file) : {};
  const devices: SimDeviceConfig[] = [...(config.devices ?? [])];
  // Flag devices sit one address apart on the same port (the way 1,000 devices share 47808 on lo),
  // or one port apart on one address with --spread port.
  for (let i = 0; i < count; i++) {
    devices.push({
      ...common,
      instance: first + i,
      address: spread === "port" ? address : nthAddress(address, i),
      port: spread === "port" && port !== 0 ? port + i : port,
    });
  }
  const routers: SimRouterConfig[] = [...(config.routers ?? [])];
  const routerSpecs = values.router;
  const specs = Array.isArray(routerSpecs)
    ? routerSpecs
    : typeof routerSpecs === "string"
      ? [routerSpecs]
      : [];
  if (specs.length) {
    let next = first + count;
    const networks: SimRouterConfig["networks"] = [];
    for (const spec of specs) {
      const m = /^(\d+):(\d+)$/.exec(spec.trim());
      if (!m) {
        problems.push(`--router: "${spec}" is not NETWORK:COUNT`);
        continue;
      }
      const n = Number(m[2]);
      networks.push({
        network: Number(m[1]),
        devices: Array.from({ length: n }, (_, i) => ({ ...common, instance: next + i })),
      });
      next += n;
    }
    // The router takes the address after the flag devices (or the next port with --spread port).
    routers.push({
      address: spread === "port" ? address : nthAddress(address, count),
      port: spread === "port" && port !== 0 ? port + count : port,
      networks,
    });
  }
  if (problems.length) throw new ConfigError(problems);
  return {
    ...config,
    devices,
    routers,
    ...(seed !== undefined ? { seed } : {}),
    ...(broadcast ? { broadcastAddress: broadcast } : {}),
    ...(values["i-am-broadcast"] ? { iAmBroadcast: true } : {}),
  };
}
