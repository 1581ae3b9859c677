// Gateway settings: one schema with defaults and descriptions (TypeBox), loaded from one YAML file,
// then `BACMQTT_GATEWAY__<SECTION>__<KEY>` environment overrides, then command-line flags; validated
// before start with every problem reported at once. Owns redaction of secrets for `bridge/info`.
// Must not open sockets or files other than the config file itself.
import { readFileSync } from "node:fs";
import os from "node:os";
import { type Static, type TSchema, Type } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { parse as parseYaml } from "yaml";
import { ConfigError, errorMessage } from "../common/errors.ts";
import { DEFAULT_BASE_TOPIC, nameProblem, TopicError, Topics, validate } from "../contract/index.ts";

const Patterns = (description: string) =>
  Type.Array(Type.String({ minLength: 1, maxLength: 128 }), { default: [], maxItems: 256, description });

const PointConfig = Type.Object(
  {
    name: Type.Optional(Type.String({ maxLength: 128, description: "Friendly name shown in {device}/meta" })),
    writable: Type.Optional(
      Type.Boolean({ description: "Allow writes to this point (adds it to the write allowlist)" }),
    ),
    poll_interval_s: Type.Optional(
      Type.Number({ minimum: 0.1, maximum: 86400, description: "Poll this point at its own interval" }),
    ),
    cov: Type.Optional(
      Type.Boolean({ description: "COV for this point (over the device's and the global setting)" }),
    ),
  },
  { additionalProperties: false },
);

const DeviceConfig = Type.Object(
  {
    name: Type.Optional(Type.String({ maxLength: 128, description: "Friendly name shown in {device}/meta" })),
    enabled: Type.Optional(
      Type.Boolean({ description: "false: never poll this device; its retained topics are cleared" }),
    ),
    poll_interval_s: Type.Optional(Type.Number({ minimum: 0.1, maximum: 86400 })),
    cov: Type.Optional(Type.Boolean({ description: "Use COV subscriptions where the device supports them" })),
    include: Type.Optional(
      Patterns("Only these points (point id, object type or object name, `*` wildcard)"),
    ),
    exclude: Type.Optional(
      Patterns("Never these points (point id, object type or object name, `*` wildcard)"),
    ),
    points: Type.Optional(
      Type.Record(Type.String({ pattern: "^[a-z][a-z0-9_]*_[0-9]{1,7}$" }), PointConfig, {
        description: "Per-point options keyed by point id (e.g. analog_output_1)",
      }),
    ),
  },
  { additionalProperties: false },
);

export const GatewayConfigSchema = Type.Object(
  {
    gateway_id: Type.String({
      default: defaultGatewayId(),
      description: "Topic level identifying this gateway: {base}/{gateway_id}/… (default: host name)",
    }),
    data_dir: Type.String({
      default: ".data/gateway",
      description: "Where bd_seq, the device catalogue and the store-and-forward buffer live",
    }),
    mqtt: Type.Object(
      {
        url: Type.String({
          default: "mqtt://127.0.0.1:1883",
          description: "Broker URL: mqtt://, mqtts:// (TLS), ws://, wss://; may carry user:pass@",
        }),
        base_topic: Type.String({ default: DEFAULT_BASE_TOPIC, description: "First topic level(s)" }),
        username: Type.Optional(Type.String({ description: "Overrides the user in the URL" })),
        password: Type.Optional(Type.String({ description: "Secret: never published or logged" })),
        client_id: Type.Optional(Type.String({ description: "Default: bacmqtt-gw-<gateway_id>-<random>" })),
        keepalive_s: Type.Integer({ default: 30, minimum: 0, maximum: 65535 }),
        reconnect_period_ms: Type.Integer({ default: 2000, minimum: 100, maximum: 600000 }),
        connect_timeout_ms: Type.Integer({ default: 10000, minimum: 100, maximum: 600000 }),
        ca: Type.Optional(Type.String({ description: "TLS: CA certificate file (PEM)" })),
        cert: Type.Optional(Type.String({ description: "TLS: client certificate file (PEM)" })),
        key: Type.Optional(Type.String({ description: "TLS: client key file (PEM); secret" })),
        reject_unauthorized: Type.Boolean({
          default: true,
          description: "TLS: verify the broker certificate",
        }),
        state_throttle_ms: Type.Integer({
          default: 1000,
          minimum: 0,
          maximum: 3600000,
          description: "At most one {device}/state per device in this period (the last value wins)",
        }),
        health_interval_s: Type.Number({ default: 60, minimum: 1, maximum: 86400 }),
        cov_batch_ms: Type.Integer({
          default: 100,
          minimum: 0,
          maximum: 10000,
          description: "COV notifications of one device within this window go out as one readings message",
        }),
        duplicate_check_ms: Type.Integer({
          default: 3000,
          minimum: 0,
          maximum: 60000,
          description:
            "At connect, another instance's retained online state is given this long to answer a health check (0 = not asked: taken as stale)",
        }),
      },
      { default: {}, additionalProperties: false },
    ),
    bacnet: Type.Object(
      {
        interface: Type.Optional(Type.String({ description: "Interface name or local IPv4 address" })),
        port: Type.Integer({ default: 47808, minimum: 0, maximum: 65535 }),
        broadcast: Type.Optional(Type.String({ description: "Broadcast address for Who-Is" })),
        bbmd: Type.Optional(
          Type.String({ description: "Register as foreign device with this BBMD, ip:port" }),
        ),
        bbmd_ttl_s: Type.Integer({ default: 300, minimum: 30, maximum: 65535 }),
        apdu_timeout_ms: Type.Integer({ default: 3000, minimum: 100, maximum: 60000 }),
        retries: Type.Integer({ default: 2, minimum: 0, maximum: 10 }),
        per_device_in_flight: Type.Integer({ default: 4, minimum: 1, maximum: 64 }),
        global_in_flight: Type.Integer({ default: 64, minimum: 1, maximum: 255 }),
        offline_after_failures: Type.Integer({ default: 3, minimum: 1, maximum: 100 }),
        liveness_s: Type.Number({
          default: 60,
          minimum: 1,
          maximum: 86400,
          description: "Probe a device that has not answered anything for this long (e.g. all points on COV)",
        }),
      },
      { default: {}, additionalProperties: false },
    ),
    discovery: Type.Object(
      {
        on_start: Type.Boolean({ default: true, description: "Scan in the background at start" }),
        interval_s: Type.Number({
          default: 3600,
          minimum: 0,
          maximum: 604800,
          description: "Rescan this often; 0 = only at start and on request",
        }),
        low: Type.Optional(Type.Integer({ minimum: 0, maximum: 4194303 })),
        high: Type.Optional(Type.Integer({ minimum: 0, maximum: 4194303 })),
        targets: Type.Array(Type.String({ maxLength: 64 }), {
          default: [],
          description: "Unicast Who-Is targets, ip[:port]",
        }),
        timeout_s: Type.Number({ default: 3, exclusiveMinimum: 0, maximum: 600 }),
        chunk_size: Type.Optional(Type.Integer({ minimum: 1, maximum: 4194304 })),
        lost_after_scans: Type.Integer({
          default: 3,
          minimum: 1,
          maximum: 1000,
          description: "A device missing from this many full scans in a row, and offline, is reported lost",
        }),
      },
      { default: {}, additionalProperties: false },
    ),
    polling: Type.Object(
      {
        interval_s: Type.Number({ default: 10, minimum: 0.1, maximum: 86400 }),
        cov: Type.Boolean({ default: true }),
        cov_lifetime_s: Type.Integer({ default: 300, minimum: 60, maximum: 86400 }),
        include: Patterns("Only these points, on every device"),
        exclude: Patterns("Never these points, on any device"),
      },
      { default: {}, additionalProperties: false },
    ),
    write: Type.Object(
      {
        allowlist: Type.Array(Type.String({ pattern: "^[0-9*]+:[a-z0-9_*]+$" }), {
          default: [],
          description:
            "device:point patterns with * wildcards (e.g. 1001:analog_output_*); empty = no writes",
        }),
        min_priority: Type.Integer({
          default: 8,
          minimum: 1,
          maximum: 16,
          description: "Highest priority (lowest number) a write may use",
        }),
        default_priority: Type.Integer({ default: 16, minimum: 1, maximum: 16 }),
      },
      { default: {}, additionalProperties: false },
    ),
    buffer: Type.Object(
      {
        max_bytes: Type.Integer({ default: 256 * 1024 * 1024, minimum: 4096 }),
        max_age_s: Type.Number({ default: 7 * 86400, minimum: 1 }),
        segment_bytes: Type.Integer({ default: 4 * 1024 * 1024, minimum: 1024 }),
        fsync: Type.Union([Type.Literal("always"), Type.Literal("interval"), Type.Literal("never")], {
          default: "interval",
          description:
            "always: fsync each append; interval: every fsync_interval_ms; never: leave it to the OS",
        }),
        fsync_interval_ms: Type.Integer({ default: 1000, minimum: 10, maximum: 60000 }),
        write_ahead: Type.Boolean({
          default: true,
          description:
            "journal every live readings message here before publishing it, done on the PUBACK: a gateway crash loses nothing it read; false: only what could not be published is buffered (less disk writing, e.g. on SD cards)",
        }),
      },
      { default: {}, additionalProperties: false },
    ),
    metrics: Type.Object(
      {
        enabled: Type.Boolean({ default: true }),
        host: Type.String({ default: "0.0.0.0" }),
        port: Type.Integer({ default: 9464, minimum: 0, maximum: 65535 }),
      },
      { default: {}, additionalProperties: false },
    ),
    devices: Type.Record(Type.String({ pattern: "^[0-9]{1,7}$" }), DeviceConfig, {
      default: {},
      description: "Per-device options keyed by device instance",
    }),
  },
  { additionalProperties: false },
);

export type GatewayConfig = Static<typeof GatewayConfigSchema>;
export type DeviceConfigEntry = Static<typeof DeviceConfig>;

/** Input accepted by `startGateway`: any subset of the schema; defaults fill the rest. */
export type GatewayConfigInput = DeepPartial<GatewayConfig>;
type DeepPartial<T> = T extends unknown[] ? T : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;

function defaultGatewayId(): string {
  const id = os
    .hostname()
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, "-")
    .slice(0, 64);
  return id && !nameProblem(id) ? id : "gw1";
}

export const ENV_PREFIX = "BACMQTT_GATEWAY__";

/** `BACMQTT_GATEWAY__MQTT__PASSWORD=x` → `{mqtt:{password:"x"}}`; values are YAML scalars/flow lists. */
export function envOverrides(env: NodeJS.ProcessEnv, problems: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith(ENV_PREFIX) || raw === undefined) continue;
    const path = name
      .slice(ENV_PREFIX.length)
      .split("__")
      .map((p) => p.toLowerCase());
    if (path.some((p) => p === "")) {
      problems.push(`${name}: empty path segment`);
      continue;
    }
    let value: unknown;
    try {
      value = parseYaml(raw);
    } catch {
      value = raw;
    }
    // Keys that must stay strings even when they look like numbers or booleans.
    if (["gateway_id", "password", "username", "client_id", "url", "base_topic"].includes(path.at(-1) ?? ""))
      value = raw;
    setPath(out, path, value);
  }
  return out;
}

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== "object" || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path.at(-1) as string] = value;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Deep merge where `over` wins; arrays are replaced, not concatenated. */
export function merge(base: unknown, over: unknown): unknown {
  if (over === undefined) return base;
  if (!isPlainObject(base) || !isPlainObject(over)) return over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = merge(base[k], v);
  return out;
}

export interface LoadOptions {
  /** YAML file path. */
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** Highest precedence: command-line flags (or an embedding caller's object). */
  overrides?: GatewayConfigInput;
}

/** Loads, merges and validates; throws ConfigError listing every problem. */
export function loadConfig(options: LoadOptions = {}): GatewayConfig {
  const problems: string[] = [];
  let fromFile: unknown = {};
  if (options.file) {
    try {
      const text = readFileSync(options.file, "utf8");
      fromFile = parseYaml(text) ?? {};
      if (!isPlainObject(fromFile)) {
        problems.push(`${options.file}: the top level must be a mapping`);
        fromFile = {};
      }
    } catch (err) {
      problems.push(`${options.file}: ${errorMessage(err)}`);
    }
  }
  const fromEnv = envOverrides(options.env ?? process.env, problems);
  const merged = merge(merge(fromFile, fromEnv), options.overrides ?? {});
  return resolveConfig(merged, problems);
}

/** Fills defaults and validates an already-merged object. */
export function resolveConfig(input: unknown, problems: string[] = []): GatewayConfig {
  const withDefaults = Value.Default(GatewayConfigSchema, structuredClone(input ?? {}));
  const result = validate(GatewayConfigSchema, withDefaults);
  if (!result.ok) problems.push(...result.errors.map(humanPath));
  const cfg = withDefaults as GatewayConfig;
  try {
    problems.push(...semanticProblems(cfg));
  } catch {
    // A shape too broken for the semantic checks: the schema errors above already say why.
  }
  if (problems.length) throw new ConfigError(problems);
  return cfg;
}

function humanPath(error: string): string {
  // "/mqtt/keepalive_s: Expected integer" → "mqtt.keepalive_s: Expected integer"
  return error.replace(/^\/([^:]*):/, (_m, p: string) => `${p.replace(/\//g, ".")}:`);
}

function semanticProblems(cfg: GatewayConfig): string[] {
  const problems: string[] = [];
  try {
    new Topics(cfg.mqtt.base_topic, cfg.gateway_id);
  } catch (err) {
    problems.push(err instanceof TopicError ? err.message : errorMessage(err));
  }
  let url: URL | undefined;
  try {
    url = new URL(cfg.mqtt.url);
  } catch {
    problems.push(`mqtt.url: "${redactUrl(cfg.mqtt.url)}" is not a URL`);
  }
  if (url && !["mqtt:", "mqtts:", "tcp:", "tls:", "ssl:", "ws:", "wss:"].includes(url.protocol))
    problems.push(`mqtt.url: protocol ${url.protocol} is not one of mqtt:, mqtts:, ws:, wss:`);
  if (cfg.bacnet.bbmd !== undefined && !parseHostPort(cfg.bacnet.bbmd))
    problems.push(`bacnet.bbmd: "${cfg.bacnet.bbmd}" is not ip:port`);
  const { low, high } = cfg.discovery;
  if (low !== undefined && high !== undefined && low > high)
    problems.push(`discovery.low (${low}) is above discovery.high (${high})`);
  for (const t of cfg.discovery.targets)
    if (!parseHostPort(t, true)) problems.push(`discovery.targets: "${t}" is not ip[:port]`);
  if (cfg.write.default_priority < cfg.write.min_priority)
    problems.push(
      `write.default_priority (${cfg.write.default_priority}) is above write.min_priority (${cfg.write.min_priority})`,
    );
  for (const key of Object.keys(cfg.devices))
    if (Number(key) > 4194303) problems.push(`devices.${key}: device instance out of range`);
  if (cfg.buffer.segment_bytes > cfg.buffer.max_bytes)
    problems.push("buffer.segment_bytes must not exceed buffer.max_bytes");
  return problems;
}

export function parseHostPort(
  text: string,
  portOptional = false,
): { host: string; port: number } | undefined {
  const m = /^([0-9a-zA-Z.-]+)(?::(\d{1,5}))?$/.exec(text.trim());
  if (!m || (!portOptional && m[2] === undefined)) return undefined;
  const port = m[2] === undefined ? 47808 : Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  return { host: m[1] as string, port };
}

/** The URL without user info: what is safe to log and publish. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = "";
    u.password = "";
    return u.toString().replace(/\/$/, "");
  } catch {
    return url.replace(/\/\/[^@/]*@/, "//");
  }
}

const SECRET_KEYS = new Set(["password", "key", "username"]);

/** Effective configuration with secrets removed, for `bridge/info` and logs. */
export function publicConfig(cfg: GatewayConfig): Record<string, unknown> {
  const strip = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(strip);
    if (!isPlainObject(v)) return v;
    const out: Record<string, unknown> = {};
    for (const [k, val] of Object.entries(v)) if (!SECRET_KEYS.has(k)) out[k] = strip(val);
    return out;
  };
  const out = strip(cfg) as Record<string, unknown>;
  (out.mqtt as Record<string, unknown>).url = redactUrl(cfg.mqtt.url);
  return out;
}

/** JSON Schema of the configuration file (for docs and editors). */
export function configJsonSchema(): TSchema {
  return GatewayConfigSchema;
}
