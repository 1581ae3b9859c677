// `bacmqtt <command>`: the one CLI. Each command lives beside the code it drives and is loaded
// lazily so `bacmqtt broker` never loads the BACnet stack (and vice versa).
import { type CommandSpec, formatHelp, parseCommand } from "../common/cli.ts";
import { ConfigError } from "../common/errors.ts";

type Loader = () => Promise<CommandSpec>;

/** Command name → loader. Add a line here when a command lands. */
export const COMMANDS: Record<string, { summary: string; load: Loader }> = {
  all: {
    summary: "Run everything in one process (broker, gateway, ingest, api, console) on embedded defaults",
    load: async () => (await import("./all.ts")).allCommand,
  },
  simulate: {
    summary: "Run simulated BACnet/IP devices and routers (tests, benchmarks, demos)",
    load: async () => (await import("../simulator/cli.ts")).simulateCommand,
  },
  interfaces: {
    summary: "List network interfaces with address, netmask and broadcast",
    load: async () => (await import("../gateway/bacnet/cli.ts")).interfacesCommand,
  },
  scan: {
    summary: "Discover BACnet devices (broadcast, unicast, routed, BBMD) and their points",
    load: async () => (await import("../gateway/bacnet/cli.ts")).scanCommand,
  },
  read: {
    summary: "Read a BACnet property (default present-value) of a point",
    load: async () => (await import("../gateway/bacnet/cli.ts")).readCommand,
  },
  write: {
    summary: "Write a point's present-value at a priority (null relinquishes) and read it back",
    load: async () => (await import("../gateway/bacnet/cli.ts")).writeCommand,
  },
  api: {
    summary: "Run the REST API and web console (commands relayed to gateways over MQTT)",
    load: async () => (await import("../api/cli.ts")).apiCommand,
  },
  "api-key": {
    summary: "Create, list or revoke API keys (stored hashed; a new key is printed once)",
    load: async () => (await import("../api/cli.ts")).apiKeyCommand,
  },
  schema: {
    summary: "Print the JSON Schema of every MQTT payload",
    load: async () => (await import("./schema.ts")).schemaCommand,
  },
  doctor: {
    summary: "Check interfaces, UDP 47808, BACnet devices, the broker, the api and the database",
    load: async () => (await import("../gateway/doctor.ts")).doctorCommand,
  },
  gateway: {
    summary: "Run the BACnet/IP → MQTT gateway (discovery, polling, COV, writes, store-and-forward)",
    load: async () => (await import("../gateway/cli.ts")).gatewayCommand,
  },
  broker: {
    summary: "Run the MQTT broker (aedes: TCP, WebSocket, optional TLS, users and ACLs)",
    load: async () => (await import("../broker/cli.ts")).brokerCommand,
  },
  ingest: {
    summary: "Store readings, metadata and events from MQTT in PostgreSQL/TimescaleDB",
    load: async () => (await import("../ingest/cli.ts")).ingestCommand,
  },
  migrate: {
    summary: "Create or upgrade the storage schema (TimescaleDB or plain PostgreSQL) and its policies",
    load: async () => (await import("../ingest/cli.ts")).migrateCommand,
  },
  "broker-user": {
    summary: "Add, update or remove a user in a broker users file",
    load: async () => (await import("../broker/cli.ts")).brokerUserCommand,
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2;
  const rows = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}${c.summary}`);
  return [
    "Usage: bacmqtt <command> [options]",
    "",
    "BACnet/IP to MQTT gateway, broker, ingest and API.",
    "",
    "Commands:",
    ...rows,
    "",
    "Run `bacmqtt <command> --help` for a command's options.",
    "",
  ].join("\n");
}

export async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(usage());
    if (!name) process.exitCode = 1;
    return;
  }
  if (name === "--version" || name === "-v") {
    const { version } = await import("../common/version.ts");
    process.stdout.write(`${version}\n`);
    return;
  }
  const entry = COMMANDS[name];
  if (!entry) {
    process.stderr.write(`bacmqtt: unknown command "${name}"\n\n${usage()}`);
    process.exitCode = 2;
    return;
  }
  try {
    const spec = await entry.load();
    const parsed = parseCommand(spec, rest);
    if (parsed.help) {
      process.stdout.write(formatHelp(spec));
      return;
    }
    const code = await spec.run(parsed);
    if (typeof code === "number") process.exitCode = code;
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`bacmqtt ${name}: ${err.message}\nRun \`bacmqtt ${name} --help\` for usage.\n`);
      process.exitCode = 1;
      return;
    }
    const code = (err as { code?: string }).code;
    process.stderr.write(
      `bacmqtt ${name}: ${code ? `${code}: ` : ""}${(err as Error)?.message ?? String(err)}\n`,
    );
    process.exitCode = 1;
  }
}
