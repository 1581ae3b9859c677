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
