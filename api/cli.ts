// `bacmqtt api` and `bacmqtt api-key`: option specs and wiring only; the app is in app.ts.
import { defineCommand, intOption, listOption, type OptionSpec, stringOption } from "../common/cli.ts";
import { ConfigError } from "../common/errors.ts";
import { createLogger } from "../common/logger.ts";
import { catchShutdown } from "../common/shutdown.ts";
import { createPool, describeDatabase, resolveDatabaseUrl } from "../ingest/db.ts";
import { createKey, isRole, listKeys, ROLES, revokeKey } from "./keys.ts";
import { redactUrl } from "./relay.ts";

const DATABASE_URL: OptionSpec = {
  type: "string",
  value: "URL",
  env: "DATABASE_URL",
  description: "PostgreSQL URL; without it the standard PG* variables (PGHOST, PGUSER, …) are used",
};

export const apiCommand = defineCommand({
  name: "api",
  summary: "Run the REST API and web console (commands relayed to gateways over MQTT)",
  description: `
Serves the REST API (OpenAPI at /docs), Server-Sent Events at /api/events, /api/health, /metrics
and the web console at /. Reads need a viewer key unless --read-access open; commands always need
an operator key. Create keys with \`bacmqtt api-key create NAME --role operator\`. The database must
have been migrated (\`bacmqtt migrate\`).`,
  options: {
    port: { type: "string", value: "N", default: "8080", description: "HTTP port" },
    host: { type: "string", value: "ADDR", default: "0.0.0.0", description: "Address to listen on" },
    "mqtt-url": {
      type: "string",
      value: "URL",
      default: "mqtt://127.0.0.1:1883",
      description: "MQTT broker URL",
    },
    "mqtt-username": { type: "string", value: "USER", description: "MQTT user name" },
    "mqtt-password": { type: "string", value: "PASS", description: "MQTT password" },
    "base-topic": { type: "string", value: "TOPIC", default: "bacmqtt", description: "MQTT base topic" },
    "database-url": DATABASE_URL,
    "read-access": {
      type: "string",
      value: "key|open",
      default: "key",
      description: "key: reads need a viewer key; open: anyone may read (commands always need operator)",
    },
    "cors-origin": {
      type: "string",
      value: "ORIGIN",
      multiple: true,
      description: "Origin allowed to call the API from a browser (default: none, same origin only)",
    },
    "rate-limit": {
      type: "string",
      value: "N",
      default: "600",
      description: "Requests per minute per key (or per address without one); 0 disables",
    },
    "command-timeout": {
      type: "string",
      value: "S",
      default: "10",
      description: "Seconds to wait for a gateway's answer to read/write (discovery adds its own timeout)",
    },
  },
  examples: [
    "bacmqtt api --port 8080 --mqtt-url mqtt://broker:1883 --database-url postgres://bacmqtt@db/bacmqtt",
    "bacmqtt api --read-access open --cors-origin https://grafana.example.com",
  ],
  async run({ values }) {
    const problems: string[] = [];
    const port = intOption(values, "port", problems, { min: 0, max: 65535 });
    const rate = intOption(values, "rate-limit", problems, { min: 0, max: 1_000_000 });
    const timeout = intOption(values, "command-timeout", problems, { min: 1, max: 600 });
    const readAccess = stringOption(values, "read-access") ?? "key";
    if (readAccess !== "key" && readAccess !== "open")
      problems.push(`--read-access: "${readAccess}" is not one of key, open`);
    const mqttUrl = stringOption(values, "mqtt-url") as string;
    if (!/^(mqtts?|wss?|tcp|ssl):\/\//.test(mqttUrl))
      problems.push(`--mqtt-url: "${mqttUrl}" is not an MQTT URL`);
    if (problems.length) throw new ConfigError(problems);
    const log = createLogger("api");
    const { startApi } = await import("./server.ts");
    const databaseUrl = resolveDatabaseUrl(stringOption(values, "database-url"));
    const mqttUsername = stringOption(values, "mqtt-username");
    const mqttPassword = stringOption(values, "mqtt-password");
    const shutdown = catchShutdown(log);
    const server = await startApi({
      host: stringOption(values, "host") as string,
      port: port ?? 8080,
      mqttUrl,
      baseTopic: stringOption(values, "base-topic") as string,
      readAccess: readAccess as "key" | "open",
      corsOrigins: listOption(values, "cors-origin"),
      rateLimit: rate ? { max: rate, timeWindowMs: 60_000 } : false,
      timeouts: { commandMs: (timeout ?? 10) * 1000 },
      log,
      ...(databaseUrl ? { databaseUrl } : {}),
      ...(mqttUsername ? { mqttUsername } : {}),
      ...(mqttPassword ? { mqttPassword } : {}),
    });
    log.info(
      { url: server.url, database: describeDatabase(databaseUrl), mqtt: redactUrl(mqttUrl), readAccess },
      "api listening",
    );
    shutdown.ready(() => server.close());
    await new Promise<never>(() => {});
    return 0;
  },
});

export const apiKeyCommand = defineCommand({
  name: "api-key",
  summary: "Create, list or revoke API keys (stored hashed; a new key is printed once)",
  usage: "create NAME --role viewer|operator|admin | list | revoke NAME [options]",
  options: {
    role: {
      type: "string",
      value: "ROLE",
      default: "viewer",
      description: `Role of a new key: ${ROLES.join(", ")}`,
    },
    "database-url": DATABASE_URL,
  },
  positionals: [1, 2],
  examples: [
    "bacmqtt api-key create console --role operator",
    "bacmqtt api-key list",
    "bacmqtt api-key revoke console",
  ],
  async run({ values, positionals }) {
    const [action, name] = positionals;
    const problems: string[] = [];
    const role = stringOption(values, "role") ?? "viewer";
    if (action === "create" || action === "revoke") {
      if (!name) problems.push(`${action} needs a key NAME`);
    } else if (action === "list") {
      if (name) problems.push("list takes no NAME");
    } else problems.push(`unknown action "${action}": expected create, list or revoke`);
    if (action === "create" && !isRole(role))
      problems.push(`--role: "${role}" is not one of ${ROLES.join(", ")}`);
    if (problems.length) throw new ConfigError(problems);
    const pool = createPool({
      url: stringOption(values, "database-url"),
      max: 1,
      applicationName: "bacmqtt-api-key",
    });
    try {
      if (action === "create" && isRole(role)) {
        const { key, row } = await createKey(pool, name as string, role);
        process.stderr.write(
          `created key "${row.name}" with role ${row.role}; it is shown only this once:\n`,
        );
        process.stdout.write(`${key}\n`);
      } else if (action === "list") {
        for (const k of await listKeys(pool))
          process.stdout.write(
            `${k.name}\t${k.role}\t${k.revoked ? "revoked" : "active"}\tcreated ${k.created_at.toISOString()}\tlast used ${k.last_used_at?.toISOString() ?? "never"}\n`,
          );
      } else if (action === "revoke") {
        if (!(await revokeKey(pool, name as string))) {
          process.stderr.write(`no active key named "${name}"\n`);
          return 1;
        }
        process.stderr.write(`revoked "${name}"\n`);
      }
      return 0;
    } finally {
      await pool.end();
    }
  },
});
