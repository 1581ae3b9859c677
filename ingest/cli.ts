// `bacmqtt migrate` and `bacmqtt ingest`: option specs and wiring only; the work is in migrate.ts
// and service.ts.
import { defineCommand, type OptionSpec, type OptionValues, stringOption } from "../common/cli.ts";
import { ConfigError } from "../common/errors.ts";
import { createLogger } from "../common/logger.ts";
import { createPool, describeDatabase, resolveDatabaseUrl } from "./db.ts";
import { migrate } from "./migrate.ts";
import { parseAge, type StoragePolicies } from "./policies.ts";

const DATABASE_URL: OptionSpec = {
  type: "string",
  value: "URL",
  env: "DATABASE_URL",
  description: "PostgreSQL URL; without it the standard PG* variables (PGHOST, PGUSER, …) are used",
};

const DIALECT: OptionSpec = {
  type: "string",
  value: "auto|timescale|portable",
  default: "auto",
  description: "Storage dialect; auto = timescale when the extension is available, else portable",
};

const POLICY_OPTIONS: Record<string, OptionSpec> = {
  "compress-after": {
    type: "string",
    value: "AGE",
    description: 'Compress raw chunks older than AGE, e.g. "7 days" or "off" (timescale; default 7 days)',
  },
  "raw-retention": {
    type: "string",
    value: "AGE",
    description: 'Drop raw readings older than AGE, e.g. "365 days" or "off" (default 365 days)',
  },
  "hourly-retention": {
    type: "string",
    value: "AGE",
    description: "Drop hourly rollups older than AGE (default 1825 days)",
  },
  "daily-retention": {
    type: "string",
    value: "AGE",
    description: "Drop daily rollups older than AGE (default off: kept forever)",
  },
};

export function dialectOption(values: OptionValues, problems: string[]): "auto" | "timescale" | "portable" {
  const d = stringOption(values, "dialect") ?? "auto";
  if (d === "auto" || d === "timescale" || d === "portable") return d;
  problems.push(`--dialect: "${d}" is not one of auto, timescale, portable`);
  return "auto";
}

export function policyOptions(values: OptionValues, problems: string[]): Partial<StoragePolicies> {
  const out: Partial<StoragePolicies> = {};
  for (const flag of Object.keys(POLICY_OPTIONS)) {
    const raw = stringOption(values, flag);
    if (raw === undefined) continue;
    const parsed = parseAge(raw);
    if ("problem" in parsed) problems.push(`--${flag}: ${parsed.problem}`);
    else out[flag.replace(/-/g, "_") as keyof StoragePolicies] = parsed.value;
  }
  return out;
}

export const migrateCommand = defineCommand({
  name: "migrate",
  summary: "Create or upgrade the storage schema (TimescaleDB or plain PostgreSQL) and its policies",
  description: `
Applies every pending migration once (versioned, idempotent, safe to run from several processes at
once) and (re)creates the compression, retention and refresh policies. Ages given here are stored in
the database; a later run without them keeps them.`,
  options: { "database-url": DATABASE_URL, dialect: DIALECT, ...POLICY_OPTIONS },
  examples: [
    "bacmqtt migrate --database-url postgres://bacmqtt@db/bacmqtt",
    'bacmqtt migrate --raw-retention "90 days" --compress-after "3 days"',
  ],
  async run({ values }) {
    const problems: string[] = [];
    const dialect = dialectOption(values, problems);
    const policies = policyOptions(values, problems);
    if (problems.length) throw new ConfigError(problems);
    const log = createLogger("migrate");
    const url = resolveDatabaseUrl(stringOption(values, "database-url"));
    const pool = createPool({ url, max: 1, applicationName: "bacmqtt-migrate", log });
    try {
      const result = await migrate(pool, { dialect, policies, log });
      process.stdout.write(
        `${describeDatabase(url)}: ${result.dialect} dialect, ${
          result.applied.length ? `applied ${result.applied.join(", ")}` : "already up to date"
        }\n`,
      );
      return 0;
    } finally {
      await pool.end();
    }
  },
});

export const ingestCommand = defineCommand({
  name: "ingest",
  summary: "Store readings, metadata and events from MQTT in PostgreSQL/TimescaleDB",
  description: `
Subscribes with a persistent session (fixed client id, clean session off, QoS 1) and acknowledges each
message only after its rows are committed: a database outage stalls ingest, it never drops readings.
Runs the migrations first (idempotent). Several ingests can share the load with --share-group (MQTT
shared subscriptions; each needs its own --client-id). Prometheus metrics on /metrics.`,
  options: {
    "mqtt-url": { type: "string", value: "URL", default: "mqtt://127.0.0.1:1883", description: "Broker URL" },
    "mqtt-username": { type: "string", value: "USER", description: "Broker user name" },
    "mqtt-password": { type: "string", value: "PASSWORD", description: "Broker password" },
    "database-url": DATABASE_URL,
    dialect: DIALECT,
    "base-topic": {
      type: "string",
      value: "TOPIC",
      default: "bacmqtt",
      description: "Base topic of the gateways",
    },
    "client-id": {
      type: "string",
      value: "ID",
      default: "bacmqtt-ingest",
      description: "MQTT client id of the persistent session (distinct per replica)",
    },
    "share-group": {
      type: "string",
      value: "NAME",
      description: "Share readings and events among the ingests of this group ($share/NAME/…)",
    },
    "batch-size": {
      type: "string",
      value: "N",
      default: "20000",
      description: "Commit when N readings wait",
    },
    "batch-wait-ms": {
      type: "string",
      value: "MS",
      default: "200",
      description: "… or after MS milliseconds",
    },
    "pool-size": { type: "string", value: "N", default: "4", description: "Database connections" },
    "max-future-s": {
      type: "string",
      value: "S",
      default: "86400",
      description:
        "Readings stamped more than S seconds ahead of this clock become dead letters (0 = no limit)",
    },
    "min-time": {
      type: "string",
      value: "ISO",
      default: "2000-01-01T00:00:00Z",
      description: 'Readings stamped before this time become dead letters ("none" = no limit)',
    },
    "metrics-host": { type: "string", value: "HOST", default: "0.0.0.0", description: "Address of /metrics" },
    "metrics-port": {
      type: "string",
      value: "PORT",
      default: "9465",
      description: 'Port of /metrics (0 = any free port, "off" = no metrics server)',
    },
  },
  examples: [
    "bacmqtt ingest --mqtt-url mqtt://broker:1883 --database-url postgres://bacmqtt@db/bacmqtt",
    "bacmqtt ingest --share-group ingest --client-id ingest-2",
  ],
  async run({ values }) {
    const { intOption } = await import("../common/cli.ts");
    const problems: string[] = [];
    const dialect = dialectOption(values, problems);
    const batchSize = intOption(values, "batch-size", problems, { min: 1, max: 100_000 });
    const batchWaitMs = intOption(values, "batch-wait-ms", problems, { min: 1, max: 60_000 });
    const poolSize = intOption(values, "pool-size", problems, { min: 1, max: 100 });
    const maxFutureS = intOption(values, "max-future-s", problems, { min: 0, max: 10 * 365 * 86_400 });
    const minTimeRaw = stringOption(values, "min-time") ?? "2000-01-01T00:00:00Z";
    const minTimeMs = minTimeRaw === "none" ? Number.NEGATIVE_INFINITY : Date.parse(minTimeRaw);
    if (Number.isNaN(minTimeMs))
      problems.push(`--min-time: "${minTimeRaw}" is not a date-time (e.g. 2000-01-01T00:00:00Z) or "none"`);
    const metricsRaw = stringOption(values, "metrics-port") ?? "9465";
    const metricsPort =
      metricsRaw === "off" ? undefined : intOption({ p: metricsRaw }, "p", problems, { min: 0, max: 65535 });
    if (problems.length) throw new ConfigError(problems);

    const { catchShutdown } = await import("../common/shutdown.ts");
    const { IngestService } = await import("./service.ts");
    const { IngestMetrics, serveMetrics } = await import("./metrics.ts");
    const log = createLogger("ingest");
    // A signal while waiting for the database or the broker ends the command cleanly.
    const shutdown = catchShutdown(log);
    const url = resolveDatabaseUrl(stringOption(values, "database-url"));
    const pool = createPool({ url, max: poolSize ?? 4, applicationName: "bacmqtt-ingest", log });
    // The database may come up after the ingest (docker-compose): wait for it, like an outage.
    let migrated: Awaited<ReturnType<typeof migrate>> | undefined;
    for (let attempt = 0; !migrated; attempt++) {
      if (shutdown.requested) {
        await pool.end();
        return 0;
      }
      try {
        migrated = await migrate(pool, { dialect, log });
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        const unavailable =
          typeof code !== "string" || /^(08|53|57)/.test(code) || !/^[0-9A-Z]{5}$/.test(code);
        if (!unavailable || attempt >= 1000) throw err;
        const delay = Math.min(30_000, 500 * 2 ** Math.min(attempt, 6));
        log.warn({ err: (err as Error).message, code, retryInMs: delay }, "database unavailable; waiting");
        await Promise.race([new Promise((r) => setTimeout(r, delay)), shutdown.signalled]);
      }
    }
    log.info({ database: describeDatabase(url), dialect: migrated.dialect }, "database ready");
    const metrics = new IngestMetrics({ defaultMetrics: true });
    const service = new IngestService({
      mqttUrl: stringOption(values, "mqtt-url") ?? "mqtt://127.0.0.1:1883",
      username: stringOption(values, "mqtt-username"),
      password: stringOption(values, "mqtt-password"),
      pool,
      dialect: migrated.dialect,
      baseTopic: stringOption(values, "base-topic"),
      clientId: stringOption(values, "client-id"),
      shareGroup: stringOption(values, "share-group"),
      batchSize,
      batchWaitMs,
      timeWindow: {
        ...(maxFutureS !== undefined ? { maxFutureMs: maxFutureS * 1000 } : {}),
        minTimeMs,
      },
      metrics,
      log,
    });
    const server =
      metricsPort === undefined
        ? undefined
        : await serveMetrics(metrics, stringOption(values, "metrics-host") ?? "0.0.0.0", metricsPort);
    if (server) log.info({ port: server.port }, "metrics on /metrics");
    try {
      await service.start();
    } catch (err) {
      await server?.close();
      await pool.end();
      throw err;
    }
    log.info("ingest running");
    await new Promise<void>((resolve) => {
      shutdown.ready(async () => {
        await service.stop();
        await server?.close();
        await pool.end();
        resolve();
      });
    });
    return 0;
  },
});
