// Field tools on the engine: `bacmqtt interfaces`, `scan`, `read`, `write`. They share the
// interface/port/BBMD options of the gateway so what works here works in the gateway. JSON goes to
// stdout, logs to stderr.
import {
  defineCommand,
  intOption,
  listOption,
  type OptionSpec,
  type OptionValues,
  stringOption,
} from "../../common/cli.ts";
import { ConfigError } from "../../common/errors.ts";
import type { Value } from "../../contract/index.ts";
import { parseHostPort } from "./codec.ts";
import { Engine } from "./engine.ts";
import { listInterfaces } from "./interfaces.ts";
import type { DeviceCatalogue, EngineOptions } from "./types.ts";

const NETWORK_OPTIONS: Record<string, OptionSpec> = {
  interface: {
    type: "string",
    value: "NAME|IP",
    description: "Network interface name or local IPv4 address to bind",
    env: "BACMQTT_BACNET_INTERFACE",
  },
  port: {
    type: "string",
    value: "N",
    default: "47808",
    description: "Local UDP port (0 = any free port)",
    env: "BACMQTT_BACNET_PORT",
  },
  broadcast: {
    type: "string",
    value: "ADDR",
    description: "Broadcast address for Who-Is (default: from the interface netmask)",
    env: "BACMQTT_BACNET_BROADCAST",
  },
  target: {
    type: "string",
    multiple: true,
    value: "IP[:PORT]",
    description: "Send Who-Is by unicast to this address as well (devices, routers); repeatable",
    env: "BACMQTT_BACNET_TARGETS",
  },
  bbmd: {
    type: "string",
    value: "IP:PORT",
    description: "Register as a foreign device with this BBMD",
    env: "BACMQTT_BACNET_BBMD",
  },
  ttl: {
    type: "string",
    value: "S",
    default: "300",
    description: "Foreign-device registration time-to-live, seconds",
    env: "BACMQTT_BACNET_BBMD_TTL",
  },
  timeout: {
    type: "string",
    value: "S",
    default: "3",
    description: "Seconds to wait for answers (I-Am, replies)",
    env: false,
  },
  json: { type: "boolean", description: "Print JSON", env: false },
};

function engineOptions(values: OptionValues, problems: string[]): EngineOptions {
  const port = intOption(values, "port", problems, { min: 0, max: 65535 });
  const ttl = intOption(values, "ttl", problems, { min: 1, max: 65535 });
  const timeout = intOption(values, "timeout", problems, { min: 1, max: 600 });
  const targets = listOption(values, "target");
  for (const t of targets) {
    try {
      parseHostPort(t);
    } catch (err) {
      problems.push(`--target: ${(err as Error).message}`);
    }
  }
  let bbmd: EngineOptions["bbmd"];
  const b = stringOption(values, "bbmd");
  if (b) {
    try {
      const { ip, port: bp } = parseHostPort(b);
      bbmd = { address: ip, port: bp, ttlSeconds: ttl ?? 300 };
    } catch (err) {
      problems.push(`--bbmd: ${(err as Error).message}`);
    }
  }
  return {
    interface: stringOption(values, "interface"),
    port: port ?? 47808,
    broadcast: stringOption(values, "broadcast"),
    bbmd,
    targets,
    // A field tool answers quickly or says so: short timeout, one retry.
    apduTimeoutMs: Math.min(3000, Math.max(500, ((timeout ?? 3) * 1000) / 2)),
    retries: 1,
    perDeviceInFlight: 4,
    globalInFlight: 64,
    cov: false,
  };
}

async function withEngine<T>(options: EngineOptions, fn: (e: Engine) => Promise<T>): Promise<T> {
  const engine = new Engine(options);
  await engine.start();
  try {
    return await fn(engine);
  } finally {
    await engine.stop();
  }
}

function print(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

// ---- interfaces -------------------------------------------------------------------------------

export const interfacesCommand = defineCommand({
  name: "interfaces",
  summary: "List network interfaces with address, netmask and broadcast (for --interface)",
  options: { json: { type: "boolean", description: "Print JSON" } },
  run({ values }) {
    const list = listInterfaces();
    if (values.json) {
      print(
        JSON.stringify({
          interfaces: list.map((i) => ({
            name: i.name,
            address: i.address,
            netmask: i.netmask,
            broadcast: i.broadcast,
            internal: i.internal,
          })),
        }),
      );
      return 0;
    }
    const rows = [["NAME", "ADDRESS", "NETMASK", "BROADCAST", ""]];
    for (const i of list)
      rows.push([i.name, i.address, i.netmask, i.broadcast, i.internal ? "(loopback)" : ""]);
    print(table(rows));
    return 0;
  },
});

// ---- scan -------------------------------------------------------------------------------------

export const scanCommand = defineCommand({
  name: "scan",
  summary: "Discover BACnet devices (broadcast, unicast targets, BBMD) and optionally list their points",
  usage: "[options]",
  description: `Sends Who-Is as a global broadcast on the chosen interface, to every --target, and through
the BBMD when --bbmd is given; devices behind BACnet routers answer with their network and MAC.`,
  options: {
    ...NETWORK_OPTIONS,
    low: { type: "string", value: "N", description: "Lowest device instance", env: false },
    high: { type: "string", value: "N", description: "Highest device instance", env: false },
    points: {
      type: "boolean",
      description: "Also read each device's object list and point metadata",
      env: false,
    },
  },
  examples: [
    "bacmqtt scan --interface eth0 --json",
    "bacmqtt scan --target 192.168.1.40 --low 1000 --high 1999 --points",
    "bacmqtt scan --bbmd 10.0.0.1:47808 --ttl 120",
  ],
  async run({ values }) {
    const problems: string[] = [];
    const opts = engineOptions(values, problems);
    const low = intOption(values, "low", problems, { min: 0, max: 4194303 });
    const high = intOption(values, "high", problems, { min: 0, max: 4194303 });
    const timeout = intOption(values, "timeout", problems, { min: 1, max: 600 }) ?? 3;
    if (problems.length) throw new ConfigError(problems);
    return withEngine(opts, async (engine) => {
      const found = await engine.discover({ low, high, timeoutS: timeout });
      const devices: Record<string, unknown>[] = [];
      // A handful of devices at a time: the engine's limits do the rest.
      const queue = [...found];
      const workers = Array.from({ length: Math.min(8, queue.length) }, async () => {
        for (let d = queue.shift(); d; d = queue.shift()) {
          const base = {
            device_instance: d.deviceInstance,
            address: d.address,
            network: d.network,
            mac: d.mac,
            object_name: null as string | null,
            vendor_id: d.vendorId,
            vendor_name: null as string | null,
            model_name: null as string | null,
            max_apdu: d.maxApdu,
            segmentation: d.segmentation,
          };
          try {
            if (values.points) {
              const cat = await engine.readCatalogue(d);
              devices.push({ ...deviceJson(cat, base), points: pointsJson(cat) });
            } else {
              const info = await engine.readDeviceInfo(d);
              devices.push(deviceJson(info, base));
            }
          } catch (err) {
            const code = (err as { code?: string }).code ?? "GW_ERR_BACNET_ERROR";
            devices.push({
              ...base,
              ...(values.points ? { points: [] } : {}),
              error: `${code}: ${(err as Error).message}`,
            });
          }
        }
      });
      await Promise.all(workers);
      devices.sort((a, b) => (a.device_instance as number) - (b.device_instance as number));
      const dups = engine.duplicateDevices();
      if (values.json) {
        print(
          JSON.stringify({
            devices,
            ...(dups.size
              ? {
                  duplicates: [...dups].map(([device, addresses]) => ({
                    device_instance: device,
                    addresses,
                  })),
                }
              : {}),
          }),
        );
        return 0;
      }
      const rows = [["DEVICE", "ADDRESS", "NET", "MAC", "NAME", "VENDOR", "MODEL", "APDU", "SEGMENTATION"]];
      for (const d of devices)
        rows.push(
          [
            d.device_instance,
            d.address,
            d.network ?? "",
            d.mac ?? "",
            d.object_name ?? "",
            d.vendor_name ?? d.vendor_id,
            d.model_name ?? "",
            d.max_apdu,
            d.segmentation,
          ].map(String),
        );
      print(table(rows));
      for (const d of devices) {
        if (!Array.isArray(d.points) || d.points.length === 0) continue;
        print(`\n${d.device_instance} ${d.object_name ?? ""}`);
        const pr = [["POINT", "NAME", "VALUE", "UNITS", "WRITABLE"]];
        for (const p of d.points as Record<string, unknown>[])
          pr.push([
            String(p.point),
            String(p.name),
            JSON.stringify(p.present_value),
            String(p.units ?? ""),
            p.writable ? "yes" : "",
          ]);
        print(table(pr));
      }
      for (const [dev, addrs] of dups)
        process.stderr.write(
          `warning: device ${dev} answered from ${addrs.map((a) => a.address + (a.network ? `/${a.network}:${a.mac}` : "")).join(" and ")}\n`,
        );
      print(`\n${devices.length} device(s) found`);
      return 0;
    });
  },
});

function deviceJson(info: Omit<DeviceCatalogue, "points" | "presentValues">, base: Record<string, unknown>) {
  return {
    ...base,
    object_name: info.objectName,
    vendor_id: info.vendorId,
    vendor_name: info.vendorName,
    model_name: info.modelName,
    max_apdu: info.maxApdu,
    segmentation: info.segmentation,
  };
}

function pointsJson(cat: DeviceCatalogue) {
  return cat.points.map((p) => ({
    point: p.point,
    object_type: p.object_type,
    object_instance: p.object_instance,
    name: p.name,
    units: p.units,
    present_value: cat.presentValues?.[p.point] ?? null,
    writable: p.writable,
  }));
}

// ---- read / write -----------------------------------------------------------------------------

function deviceArg(text: string | undefined, problems: string[]): number {
  if (!text || !/^\d+$/.test(text) || Number(text) > 4194302) {
    problems.push(`DEVICE must be a device instance 0..4194302, got "${text ?? ""}"`);
    return 0;
  }
  return Number(text);
}

export const readCommand = defineCommand({
  name: "read",
  summary: "Read one property of a point (default present-value)",
  usage: "DEVICE POINT [options]",
  positionals: [2, 2],
  options: {
    ...NETWORK_OPTIONS,
    property: {
      type: "string",
      value: "NAME",
      default: "present_value",
      description: "Property name or number",
    },
    index: { type: "string", value: "N", description: "Array index (0 = length)" },
  },
  examples: [
    "bacmqtt read 1001 analog_input_1 --target 192.168.1.31",
    "bacmqtt read 1001 device --property object_list --json",
  ],
  async run({ values, positionals }) {
    const problems: string[] = [];
    const opts = engineOptions(values, problems);
    const device = deviceArg(positionals[0], problems);
    const point = positionals[1] as string;
    const index = intOption(values, "index", problems, { min: 0 });
    const property = stringOption(values, "property") ?? "present_value";
    if (problems.length) throw new ConfigError(problems);
    return withEngine(opts, async (engine) => {
      const value = await engine.read(device, point, property, index);
      const prop = property.toLowerCase().replace(/-/g, "_");
      if (values.json)
        print(
          JSON.stringify({ device, point, property: prop, ...(index !== undefined ? { index } : {}), value }),
        );
      else print(typeof value === "object" ? JSON.stringify(value) : String(value));
      return 0;
    });
  },
});

function parseValue(text: string): Value {
  if (text === "null") return null;
  if (text === "true") return true;
  if (text === "false") return false;
  if (text.trim() !== "" && Number.isFinite(Number(text))) return Number(text);
  return text;
}

export const writeCommand = defineCommand({
  name: "write",
  summary: "Write a point's present-value at a priority (null relinquishes), then read it back",
  usage: "DEVICE POINT VALUE|null [options]",
  positionals: [3, 3],
  options: {
    ...NETWORK_OPTIONS,
    priority: { type: "string", value: "N", default: "8", description: "Write priority 1–16" },
    "min-priority": {
      type: "string",
      value: "N",
      default: "1",
      description: "Refuse priorities numerically below this (the gateway's own default is 8)",
    },
  },
  examples: [
    "bacmqtt write 1001 analog_output_1 22.5 --priority 8",
    "bacmqtt write 1001 binary_output_1 null --priority 8",
  ],
  async run({ values, positionals }) {
    const problems: string[] = [];
    const opts = engineOptions(values, problems);
    const device = deviceArg(positionals[0], problems);
    const point = positionals[1] as string;
    const value = parseValue(positionals[2] as string);
    const priority = intOption(values, "priority", problems, { min: 1, max: 16 }) ?? 8;
    const minPriority = intOption(values, "min-priority", problems, { min: 1, max: 16 }) ?? 1;
    if (problems.length) throw new ConfigError(problems);
    // The engineer at the command line chose this write explicitly: every point is allowed.
    return withEngine({ ...opts, writeAllowlist: ["*"], minWritePriority: minPriority }, async (engine) => {
      const r = await engine.write(device, point, value, priority);
      const out = {
        device: r.device,
        point: r.point,
        value: r.value,
        priority: r.priority,
        present_value: r.presentValue,
        priority_array: r.priorityArray,
        ts: r.ts,
      };
      if (values.json) print(JSON.stringify(out));
      else
        print(
          `${device} ${point} ← ${JSON.stringify(value)} @${priority}; present-value now ${JSON.stringify(r.presentValue)}`,
        );
      return 0;
    });
  },
});

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length))) ?? [];
  return rows
    .map((r) =>
      r
        .map((cell, c) => cell.padEnd(widths[c] ?? 0))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}
