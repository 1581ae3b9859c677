// Reads docker-compose.yml and .env.example the way Docker Compose does, for the deploy tests (no
// Docker engine here): YAML with merge keys, then variable interpolation with Compose's rules
// (`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`,
// `${VAR+alt}`, `$VAR`, `$$` for a literal dollar).
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parse, parseDocument } from "yaml";

export const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
export const composePath = `${repoRoot}docker-compose.yml`;
export const envExamplePath = `${repoRoot}.env.example`;

/** Values a user puts in .env for the "Required." variables that .env.example leaves empty. */
export const SECRETS = {
  POSTGRES_PASSWORD: "pg-secret",
  GRAFANA_ADMIN_PASSWORD: "admin-secret",
  GRAFANA_DB_PASSWORD: "reader-secret",
  MQTT_INGEST_PASSWORD: "ingest-secret",
  MQTT_API_PASSWORD: "api-secret",
  MQTT_GATEWAY_PASSWORD: "gateway-secret",
};

export interface EnvExampleEntry {
  value: string;
  /** The comment lines directly above the variable. */
  comment: string;
}

/** KEY=VALUE lines of a .env file (comments and blank lines skipped), with their comments. */
export function parseEnvFile(text: string): Map<string, EnvExampleEntry> {
  const out = new Map<string, EnvExampleEntry>();
  let comment: string[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === "") {
      comment = [];
      continue;
    }
    if (line.startsWith("#")) {
      comment.push(line.replace(/^#\s?/, ""));
      continue;
    }
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) throw new Error(`.env line is not KEY=VALUE: ${raw}`);
    let value = m[2] as string;
    if (/^".*"$/.test(value) || /^'.*'$/.test(value)) value = value.slice(1, -1);
    out.set(m[1] as string, { value, comment: comment.join(" ") });
    comment = [];
  }
  return out;
}

export function readEnvExample(): Map<string, EnvExampleEntry> {
  return parseEnvFile(readFileSync(envExamplePath, "utf8"));
}

export function readComposeText(): string {
  return readFileSync(composePath, "utf8");
}

/** The compose file as YAML data, merge keys applied, before interpolation. Throws on YAML errors. */
export function parseComposeRaw(text = readComposeText()): Record<string, unknown> {
  const doc = parseDocument(text, { merge: true, uniqueKeys: true });
  if (doc.errors.length) throw new Error(doc.errors.map((e) => e.message).join("\n"));
  return doc.toJS({ maxAliasCount: 100 }) as Record<string, unknown>;
}

const VAR = /\$(\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g;

export interface VariableUse {
  name: string;
  /** ":-", "-", ":?", "?", ":+", "+" or "" */
  operator: string;
  arg: string;
}

/** Every variable a string refers to (`$$` excluded). */
export function variablesIn(text: string): VariableUse[] {
  const out: VariableUse[] = [];
  for (const m of text.matchAll(VAR)) {
    if (m[1] === "$") continue;
    if (m[3]) {
      out.push({ name: m[3], operator: "", arg: "" });
      continue;
    }
    const inner = m[2] as string;
    const mm = /^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$/s.exec(inner);
    if (!mm) throw new Error(`invalid interpolation \${${inner}}`);
    out.push({ name: mm[1] as string, operator: mm[2] ?? "", arg: mm[3] ?? "" });
  }
  return out;
}

/** Interpolates one string; problems (required variables missing) are collected, not thrown. */
export function interpolate(
  text: string,
  env: Record<string, string | undefined>,
  problems: string[],
): string {
  return text.replace(VAR, (_all, what: string, braced: string | undefined, bare: string | undefined) => {
    if (what === "$") return "$";
    if (bare) return env[bare] ?? "";
    const [use] = variablesIn(`\${${braced}}`);
    if (!use) return "";
    const value = env[use.name];
    const set = value !== undefined;
    const nonEmpty = set && value !== "";
    switch (use.operator) {
      case "":
        return value ?? "";
      case ":-":
        return nonEmpty ? (value as string) : interpolate(use.arg, env, problems);
      case "-":
        return set ? (value as string) : interpolate(use.arg, env, problems);
      case ":?":
      case "?":
        if (use.operator === ":?" ? !nonEmpty : !set) {
          problems.push(`${use.name}: ${use.arg || "required"}`);
          return "";
        }
        return value as string;
      case ":+":
        return nonEmpty ? interpolate(use.arg, env, problems) : "";
      case "+":
        return set ? interpolate(use.arg, env, problems) : "";
      default:
        throw new Error(`unknown operator ${use.operator}`);
    }
  });
}

/** Deep-interpolates every string of the (merged) compose data, as Compose does before validating. */
export function interpolateAll<T>(data: T, env: Record<string, string | undefined>, problems: string[]): T {
  const walk = (v: unknown): unknown => {
    if (typeof v === "string") return interpolate(v, env, problems);
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === "object") {
      const out: Record<string, unknown> = {};
      for (const [k, val] of Object.entries(v)) out[k] = walk(val);
      return out;
    }
    return v;
  };
  return walk(data) as T;
}

export interface ComposeService {
  image?: string;
  build?: unknown;
  command?: string[];
  entrypoint?: string[];
  environment?: Record<string, string | number | boolean | null>;
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  profiles?: string[];
  network_mode?: string;
  restart?: string;
  user?: string;
}

export interface ComposeFile {
  name?: string;
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}

/** The compose file as `docker compose config` would see it with this environment. */
export function loadCompose(env: Record<string, string | undefined>): {
  compose: ComposeFile;
  problems: string[];
} {
  const problems: string[] = [];
  const raw = parseComposeRaw();
  // x-* extension fields are not interpolated targets of their own; they are merged already.
  const compose = interpolateAll(raw, env, problems) as unknown as ComposeFile;
  return { compose, problems };
}

/** .env.example values, with the secrets it leaves empty filled in (a user's .env). */
export function exampleEnvWithSecrets(secrets: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, e] of readEnvExample()) env[k] = e.value;
  return { ...env, ...secrets };
}

/** Raw YAML parse without merge keys, for tests that need the file exactly as written. */
export function parseYamlPlain(text: string): unknown {
  return parse(text);
}
