// `bacmqtt all`: the embedded default — broker, ingest, gateway, api and console in one process,
// with an in-process PostgreSQL (PGlite) when no database URL is given. Each part is the same code
// the separate commands run; this file only wires them together and stops them in reverse order.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { defineCommand, intOption, stringOption } from "../common/cli.ts";
import { ConfigError, errorMessage } from "../common/errors.ts";
import { createLogger } from "../common/logger.ts";
import { catchShutdown } from "../common/shutdown.ts";

const DEFAULTS = { http: 8080, mqtt: 1883, ws: 8083 } as const;

/** True when something already listens on host:port (TCP). */
export function portInUse(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(true));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(false)));
  });
}

/**
 * A port the user did not ask for explicitly may move when the default is taken (Mosquitto on
 * 1883, another web app on 8080): a trial should start, and it says where it went. A port the user
 * asked for never moves: taking it is an error.
 */
async function choosePort(
  asked: number | undefined,
  fallback: number,
  host: string,
  label: string,
  notes: string[],
): Promise<number> {
  if (asked !== undefined) return asked;
  if (!(await portInUse(fallback, host))) return fallback;
  for (let p = fallback + 10_000; p < fallback + 10_050 && p < 65_536; p++) {
    if (!(await portInUse(p, host))) {
      notes.push(`${label}: port ${fallback} is in use, using ${p} (pass --${label}-port to choose)`);
      return p;
    }
  }
  notes.push(`${label}: port ${fallback} is in use, using a free port`);
  return 0;
}

export interface AllOptions {
  dataDir: string;
  host: string;
  httpPort?: number;
  mqttPort?: number;
  wsPort?: number;
  databaseUrl?: string;
  simulate: number;
  /** First UDP port of the simulated devices (one port each). */
  simulatePort: number;
  gatewayId: string;
  gatewayConfig?: string;
  interface?: string;
  bacnetPort?: number;
}

export interface RunningAll {
  consoleUrl: string;
  mqttUrl: string;
  wsUrl: string | undefined;
  databaseUrl: string;
  embeddedDatabase: boolean;
  adminKey: string | null;
  adminKeyFile: string;
  simulated: { instance: number; address: string; port: number }[];
  notes: string[];
  stop(): Promise<void>;
  /** Settles with an error when the gateway stopped itself (another instance holds its id). */
  gatewayStopped: Promise<Error | undefined>;
}

/** The admin key is created once and kept in the data directory, so a restart reuses it. */
async function ensureAdminKey(pool: import("pg").Pool, file: string): Promise<string> {
  const { createKey, findKey } = await import("../api/keys.ts");
  if (existsSync(file)) {
    const key = readFileSync(file, "utf8").trim();
    if (await findKey(pool, key)) return key;
  }
  const { key } = await createKey(pool, `local-admin-${Date.now()}`, "admin");
  writeFileSync(file, `${key}\n`, { mode: 0o600 });
  return key;
}

export async function startAll(opts: AllOptions): Promise<RunningAll> {
  const log = createLogger("all");
  const notes: string[] = [];
  const stops: { name: string; stop: () => Promise<void> }[] = [];
  const stopAll = async () => {
    for (const { name, stop } of stops.splice(0).reverse()) {
      try {
        await stop();
      } catch (err) {
        log.warn({ part: name, err: errorMessage(err) }, "stop failed");
      }
    }
  };
  mkdirSync(opts.dataDir, { recursive: true });
  try {
    // 1. Database: the given URL, or PGlite persisted in the data directory.
    let databaseUrl = opts.databaseUrl;
    const embedded = databaseUrl === undefined;
    if (databaseUrl === undefined) {
      const { startEmbeddedPostgres } = await import("../ingest/embedded-db.ts");
      const db = await startEmbeddedPostgres({ dataDir: path.join(opts.dataDir, "pg") });
      stops.push({ name: "database", stop: () => db.close() });
      databaseUrl = db.url;
    }
    const { createPool } = await import("../ingest/db.ts");
    const { migrate } = await import("../ingest/migrate.ts");
    // PGlite answers one connection's transaction at a time reliably; with interleaved transactions
    // from several connections it can leave a query unanswered (measured with the ingest's tests).
    const pool = createPool({
      url: databaseUrl,
      max: embedded ? 1 : 10,
      applicationName: "bacmqtt-all",
      log,
    });
    stops.push({ name: "pool", stop: () => pool.end() });
    const { dialect } = await migrate(pool, { dialect: embedded ? "portable" : "auto", log });

    // 2. Broker.
    const { startBroker } = await import("../broker/index.ts");
    const mqttPort = await choosePort(opts.mqttPort, DEFAULTS.mqtt, opts.host, "mqtt", notes);
    const wsPort = await choosePort(opts.wsPort, DEFAULTS.ws, opts.host, "ws", notes);
    const broker = await startBroker({
      host: opts.host,
      port: mqttPort,
      wsPort,
      // A local trial: anonymous clients may do everything. Put a users file in front of anything
      // reachable from a network (`bacmqtt broker --users`).
      allowAnonymous: true,
      sysInterval: 10_000,
    });
    stops.push({ name: "broker", stop: () => broker.close() });

    // 3. Ingest.
    const { IngestService } = await import("../ingest/service.ts");
    const ingest = new IngestService({ mqttUrl: broker.url, pool, dialect, clientId: "bacmqtt-all-ingest" });
    await ingest.start();
    stops.push({ name: "ingest", stop: () => ingest.stop() });

    // 4. Simulated site, on loopback ports so it works the same on Windows, macOS and Linux.
    const simulated: RunningAll["simulated"] = [];
    if (opts.simulate > 0) {
      const { startSimulator } = await import("../simulator/index.ts");
      const sim = await startSimulator({
        devices: Array.from({ length: opts.simulate }, (_, i) => ({
          instance: 1001 + i,
          name: `SIM-AHU-${i + 1}`,
          address: "127.0.0.1",
          // Fixed ports, so a restart finds each device where its saved catalogue says it is.
          port: opts.simulatePort + i,
          objects: {
            analog_input: 6,
            analog_output: 2,
            analog_value: 2,
            binary_input: 2,
            binary_output: 2,
            binary_value: 1,
            multi_state_value: 1,
          },
          changeIntervalMs: 2000,
        })),
      });
      stops.push({ name: "simulator", stop: () => sim.close() });
      for (const d of sim.devices())
        simulated.push({ instance: d.instance, address: d.address, port: d.port });
    }

    // 5. Gateway.
    const { loadConfig, startGateway } = await import("../gateway/index.ts");
    const gwConfig = loadConfig({
      ...(opts.gatewayConfig ? { file: opts.gatewayConfig } : {}),
      overrides: {
        gateway_id: opts.gatewayId,
        data_dir: path.join(opts.dataDir, "gateway"),
        mqtt: { url: broker.url },
        metrics: { enabled: false },
        ...(opts.simulate > 0
          ? {
              bacnet: { interface: "127.0.0.1", port: opts.bacnetPort ?? 0 },
              discovery: { targets: simulated.map((d) => `${d.address}:${d.port}`), timeout_s: 2 },
              polling: { interval_s: 5 },
              // Simulated devices may be commanded from the console at priority 8 and below.
              write: { allowlist: ["*:*"], min_priority: 8, default_priority: 8 },
            }
          : {
              bacnet: {
                ...(opts.interface ? { interface: opts.interface } : {}),
                ...(opts.bacnetPort !== undefined ? { port: opts.bacnetPort } : {}),
              },
            }),
      },
    });
    const gateway = await startGateway(gwConfig);
    stops.push({ name: "gateway", stop: () => gateway.stop() });

    // 6. API and console.
    const { startApi } = await import("../api/index.ts");
    const httpPort = await choosePort(opts.httpPort, DEFAULTS.http, opts.host, "http", notes);
    const adminKeyFile = path.join(opts.dataDir, "admin-key");
    const adminKey = await ensureAdminKey(pool, adminKeyFile);
    const api = await startApi({
      host: opts.host,
      port: httpPort,
      pool,
      mqttUrl: broker.url,
      readAccess: "open",
    });
    stops.push({ name: "api", stop: () => api.close() });

    return {
      consoleUrl: `${api.url}/`,
      mqttUrl: broker.url,
      wsUrl: broker.wsUrl,
      databaseUrl,
      embeddedDatabase: embedded,
      adminKey,
      adminKeyFile,
      simulated,
      notes,
      stop: stopAll,
      gatewayStopped: gateway.stopped,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

export const allCommand = defineCommand({
  name: "all",
  summary: "Run everything in one process: broker, gateway, ingest, api and web console (embedded defaults)",
  description: `
Starts the MQTT broker, the ingest, the BACnet gateway and the REST API with its web console in one
process. Without --database-url it keeps its data in an in-process PostgreSQL (PGlite) inside the
data directory, so a restart keeps devices, readings and the admin API key. --simulate N adds N
simulated BACnet devices on loopback so you can try everything without a building.`,
  options: {
    simulate: {
      type: "string",
      description: "Add N simulated BACnet devices (0 = none)",
      default: "0",
      value: "N",
    },
    "simulate-port": {
      type: "string",
      description: "First UDP port of the simulated devices, one port each",
      default: "47809",
      value: "N",
    },
    "data-dir": { type: "string", description: "Where data is kept", default: ".data", value: "DIR" },
    "http-port": { type: "string", description: "Web console and REST API port (default 8080)", value: "N" },
    "mqtt-port": { type: "string", description: "MQTT port (default 1883)", value: "N" },
    "ws-port": { type: "string", description: "MQTT over WebSocket port (default 8083)", value: "N" },
    host: {
      type: "string",
      description: "Address the console, API and broker listen on (0.0.0.0 = every interface)",
      default: "127.0.0.1",
      value: "ADDR",
    },
    interface: { type: "string", description: "BACnet interface name or IPv4 address", value: "NAME|IP" },
    "bacnet-port": { type: "string", description: "BACnet/IP UDP port (default 47808)", value: "N" },
    "database-url": {
      type: "string",
      description: "Use this PostgreSQL/TimescaleDB instead of the embedded one",
      env: "DATABASE_URL",
      value: "URL",
    },
    "gateway-id": { type: "string", description: "Gateway id in MQTT topics", default: "local", value: "ID" },
    "gateway-config": { type: "string", description: "Gateway YAML configuration file", value: "FILE" },
  },
  examples: ["bacmqtt all --simulate 5", "bacmqtt all --interface eth0 --data-dir /var/lib/bacmqtt"],
  async run({ values }) {
    const problems: string[] = [];
    const simulate = intOption(values, "simulate", problems, { min: 0, max: 1000 }) ?? 0;
    const simulatePort = intOption(values, "simulate-port", problems, { min: 1, max: 65535 - 1000 }) ?? 47809;
    const httpPort = intOption(values, "http-port", problems, { min: 0, max: 65535 });
    const mqttPort = intOption(values, "mqtt-port", problems, { min: 0, max: 65535 });
    const wsPort = intOption(values, "ws-port", problems, { min: 0, max: 65535 });
    const bacnetPort = intOption(values, "bacnet-port", problems, { min: 0, max: 65535 });
    if (problems.length) throw new ConfigError(problems);
    const databaseUrl = stringOption(values, "database-url");
    const gatewayConfig = stringOption(values, "gateway-config");
    const iface = stringOption(values, "interface");
    // From here on a signal stops everything cleanly, even while it is still starting.
    const shutdown = catchShutdown(createLogger("all"));
    const running = await startAll({
      dataDir: path.resolve(stringOption(values, "data-dir") ?? ".data"),
      host: stringOption(values, "host") ?? "127.0.0.1",
      simulate,
      simulatePort,
      gatewayId: stringOption(values, "gateway-id") ?? "local",
      ...(httpPort !== undefined ? { httpPort } : {}),
      ...(mqttPort !== undefined ? { mqttPort } : {}),
      ...(wsPort !== undefined ? { wsPort } : {}),
      ...(bacnetPort !== undefined ? { bacnetPort } : {}),
      ...(databaseUrl ? { databaseUrl } : {}),
      ...(gatewayConfig ? { gatewayConfig } : {}),
      ...(iface ? { interface: iface } : {}),
    });
    const lines = [
      "bacmqtt is running:",
      `  Web console    ${running.consoleUrl}`,
      `  REST API docs  ${running.consoleUrl}docs`,
      `  MQTT broker    ${running.mqttUrl}${running.wsUrl ? ` (WebSocket ${running.wsUrl})` : ""}`,
      `  Database       ${running.embeddedDatabase ? `embedded PostgreSQL (PGlite) in ${path.join(stringOption(values, "data-dir") ?? ".data", "pg")}` : "external"}`,
      `  Admin API key  ${running.adminKey} (kept in ${running.adminKeyFile}; paste it into the console to command points)`,
      ...(running.simulated.length
        ? [
            `  Simulated site ${running.simulated.length} BACnet devices (${running.simulated[0]?.instance}–${running.simulated.at(-1)?.instance}) on 127.0.0.1:${running.simulated[0]?.port}–${running.simulated.at(-1)?.port}`,
          ]
        : []),
      ...running.notes.map((n) => `  Note: ${n}`),
      "Press Ctrl+C to stop.",
      "",
    ];
    process.stdout.write(lines.join("\n"));
    const failure = await new Promise<Error | undefined>((resolve) => {
      shutdown.ready(async () => {
        await running.stop();
        resolve(undefined);
      });
      // The gateway gives way when another instance holds its gateway id: stop everything, exit 1.
      void running.gatewayStopped.then(async (err) => {
        if (!err) return;
        await running.stop();
        resolve(err);
      });
    });
    if (failure) throw failure;
    return 0;
  },
});
