// docker-compose.yml, .env.example, Dockerfile and .dockerignore, checked without a Docker engine:
// the compose file against the Compose Specification JSON schema (the copy dclint ships:
// node_modules/dclint/schemas/compose.schema.json), its variables against .env.example, its
// commands and BACMQTT_* variables against the real CLI specs, and the image against the tree.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { Ajv } from "ajv";
import { beforeAll, describe, expect, it } from "vitest";
import { COMMANDS } from "../../../cli/main.ts";
import { envName } from "../../../common/cli.ts";
import {
  type ComposeFile,
  type ComposeService,
  exampleEnvWithSecrets,
  interpolate,
  loadCompose,
  parseComposeRaw,
  readComposeText,
  readEnvExample,
  repoRoot,
  SECRETS,
  variablesIn,
} from "./compose-file.ts";

const require = createRequire(import.meta.url);
/** The Compose Specification schema as dclint ships it (the package exports only its package.json). */
const composeSchemaPath = path.join(
  path.dirname(require.resolve("dclint/package.json")),
  "schemas/compose.schema.json",
);

function compileComposeSchema() {
  const schema = JSON.parse(readFileSync(composeSchemaPath, "utf8"));
  expect(schema.title).toBe("Compose Specification");
  expect(schema.$schema).toMatch(/draft-07/);
  // Ajv's default dialect is draft-07; it only knows that meta-schema under its http:// id.
  delete schema.$schema;
  return new Ajv({ allErrors: true, strict: false }).compile(schema);
}

let compose: ComposeFile;
beforeAll(() => {
  const loaded = loadCompose(exampleEnvWithSecrets(SECRETS));
  expect(loaded.problems).toEqual([]);
  compose = loaded.compose;
});

/** Services that run the bacmqtt image (they have a build section). */
function bacmqttServices(): [string, ComposeService][] {
  return Object.entries(compose.services).filter(([, s]) => s.build !== undefined);
}

describe("docker-compose.yml", () => {
  it("is valid against the Compose Specification schema", () => {
    const validate = compileComposeSchema();
    const ok = validate(compose);
    expect(validate.errors ?? [], JSON.stringify(validate.errors, null, 2)).toEqual([]);
    expect(ok).toBe(true);
  });

  it("the schema check rejects what Compose rejects (an unknown service key, a bad depends_on)", () => {
    const validate = compileComposeSchema();
    const broken = structuredClone(compose) as unknown as {
      services: Record<string, Record<string, unknown>>;
    };
    (broken.services.broker as Record<string, unknown>).healthchek = { test: ["NONE"] };
    expect(validate(broken)).toBe(false);
    const broken2 = structuredClone(compose) as unknown as {
      services: Record<string, Record<string, unknown>>;
    };
    (broken2.services.api as Record<string, unknown>).depends_on = 5;
    expect(validate(broken2)).toBe(false);
  });

  it("uses only variables documented in .env.example, and .env.example lists nothing unused", () => {
    const used = new Set(variablesIn(readComposeText()).map((v) => v.name));
    const documented = readEnvExample();
    expect([...used].filter((v) => !documented.has(v)).sort()).toEqual([]);
    expect([...documented.keys()].filter((v) => !used.has(v)).sort()).toEqual([]);
    for (const [name, entry] of documented) expect(entry.comment, `${name} has a comment`).not.toBe("");
  });

  it("refuses to start until every secret is set, and the example leaves exactly those empty", () => {
    const { problems } = loadCompose(exampleEnvWithSecrets({}));
    const missing = [...new Set(problems.map((p) => p.split(":")[0]))].sort();
    expect(missing).toEqual(Object.keys(SECRETS).sort());
    const empty = [...readEnvExample()].filter(([, e]) => e.value === "");
    const required = empty.filter(([, e]) => /^Required\./.test(e.comment)).map(([k]) => k);
    expect(required.sort()).toEqual(Object.keys(SECRETS).sort());
    // The other empty ones are optional and say what empty means.
    for (const [name, e] of empty) if (!required.includes(name)) expect(e.comment, name).toMatch(/empty = /i);
  });

  it("defaults in the file agree with the values in .env.example", () => {
    const documented = readEnvExample();
    for (const use of variablesIn(readComposeText())) {
      if (use.operator !== ":-" && use.operator !== "-") continue;
      expect(interpolate(use.arg, {}, []), `default of ${use.name}`).toBe(documented.get(use.name)?.value);
    }
  });

  it("runs TimescaleDB on a pinned tag of a supported PostgreSQL major, and pins every image", () => {
    expect(compose.services.timescaledb?.image).toMatch(/^timescale\/timescaledb:2\.\d+\.\d+-pg(1[5-8])$/);
    for (const [name, s] of Object.entries(compose.services)) {
      if (s.build !== undefined) continue;
      expect(s.image, name).toMatch(/^[\w./-]+:\d+\.\d+\.\d+[\w.-]*$/);
    }
  });

  it("has the services of the issue, each with a health check or a one-shot role", () => {
    for (const name of ["timescaledb", "broker", "migrate", "ingest", "api", "grafana", "gateway"])
      expect(compose.services, name).toHaveProperty(name);
    for (const [name, s] of Object.entries(compose.services)) {
      const oneShot = s.restart === "no";
      if (!oneShot && name !== "gateway")
        expect(s.healthcheck?.test?.length ?? 0, `${name} health check`).toBeGreaterThan(0);
    }
  });

  it("keeps state in named volumes that are declared", () => {
    const declared = new Set(Object.keys(compose.volumes ?? {}));
    const namedUsed = new Set<string>();
    for (const [name, s] of Object.entries(compose.services)) {
      for (const v of s.volumes ?? []) {
        const source = v.split(":")[0] as string;
        if (source.startsWith(".") || source.startsWith("/")) {
          expect(existsSync(path.join(repoRoot, source)), `${name}: bind source ${source} exists`).toBe(true);
          continue;
        }
        expect(declared.has(source), `${name}: volume ${source} is declared`).toBe(true);
        namedUsed.add(source);
      }
    }
    expect([...declared].filter((v) => !namedUsed.has(v))).toEqual([]);
    expect(compose.services.timescaledb?.volumes?.some((v) => v.endsWith(":/var/lib/postgresql/data"))).toBe(
      true,
    );
  });

  it("publishes MQTT for the native gateway and HTTP for people, nothing for the database", () => {
    const published = (s: string) =>
      (compose.services[s]?.ports ?? []).map((p) => Number(String(p).split(":").at(-1)?.split("/")[0]));
    expect(published("broker")).toContain(1883);
    expect(published("api")).toContain(8080);
    expect(published("grafana")).toContain(3000);
    expect(compose.services.timescaledb?.ports ?? []).toEqual([]);
  });

  it("starts things in order: database healthy, then migrate, then the services that use the schema", () => {
    const services = compose.services;
    for (const [name, s] of Object.entries(services))
      for (const dep of Object.keys(s.depends_on ?? {}))
        expect(services, `${name} → ${dep}`).toHaveProperty(dep);
    expect(services.migrate?.depends_on?.timescaledb?.condition).toBe("service_healthy");
    for (const name of ["ingest", "api"])
      expect(services[name]?.depends_on?.migrate?.condition, name).toBe("service_completed_successfully");
    expect(services.ingest?.depends_on?.broker?.condition).toBe("service_healthy");
  });

  it("runs the gateway only under a profile, with host networking and no published ports", () => {
    const gw = compose.services.gateway as ComposeService;
    expect(gw.profiles).toEqual(["linux-gateway"]);
    expect(gw.network_mode).toBe("host");
    expect(gw.ports ?? []).toEqual([]);
    for (const [name, s] of Object.entries(compose.services))
      if (name !== "gateway") expect(s.profiles ?? [], name).toEqual([]);
  });

  it("runs every bacmqtt service as an existing command with options that command really has", async () => {
    const services = bacmqttServices();
    expect(services.length).toBeGreaterThanOrEqual(4);
    for (const [name, s] of services) {
      if (s.entrypoint) {
        // A one-shot script of the image (deploy/docker/*.sh) instead of a bacmqtt command.
        expect(s.entrypoint[0], name).toBe("sh");
        expect(
          existsSync(path.join(repoRoot, s.entrypoint[1] as string)),
          `${name}: ${s.entrypoint[1]}`,
        ).toBe(true);
        continue;
      }
      const [command, ...args] = s.command ?? [];
      expect(Object.keys(COMMANDS), `${name}: command ${command}`).toContain(command);
      const spec = await (COMMANDS[command as string] as (typeof COMMANDS)[string]).load();
      const envOfOptions = new Set(
        Object.entries(spec.options)
          .filter(([, o]) => o.env !== false)
          .map(([opt, o]) => (o.env as string | undefined) ?? envName(opt)),
      );
      for (const key of Object.keys(s.environment ?? {})) {
        if (key === "BACMQTT_LOG_LEVEL") continue; // read by common/logger.ts in every process
        if (command === "gateway" && key.startsWith("BACMQTT_GATEWAY__")) continue; // config file overrides
        if (!key.startsWith("BACMQTT_") && !envOfOptions.has(key)) continue; // e.g. PG* read by pg
        expect(envOfOptions.has(key), `${name}: ${key} is an option of bacmqtt ${command}`).toBe(true);
      }
      const flags = args.filter((a) => a.startsWith("--")).map((a) => a.slice(2).split("=")[0]);
      for (const f of flags) expect(Object.keys(spec.options), `${name}: --${f}`).toContain(f);
    }
  });

  it("configures the gateway profile through real gateway flags and config keys", async () => {
    const { gatewayCommand } = await import("../../../gateway/cli.ts");
    const { loadConfig } = await import("../../../gateway/config.ts");
    const { parseCommand } = await import("../../../common/cli.ts");
    const env = Object.fromEntries(
      Object.entries(compose.services.gateway?.environment ?? {}).map(([k, v]) => [k, String(v)]),
    );
    const { values } = parseCommand(gatewayCommand, [], env);
    const example = readEnvExample();
    expect(values["gateway-id"]).toBe(example.get("GATEWAY_ID")?.value);
    expect(values["data-dir"]).toBe("/data");
    expect(values["mqtt-url"]).toBe(`mqtt://127.0.0.1:${example.get("MQTT_PORT")?.value}`);
    // Empty BACNET_INTERFACE / BACNET_BBMD leave the options unset (the gateway chooses).
    expect(values.interface).toBeUndefined();
    expect(values.bbmd).toBeUndefined();
    const cfg = loadConfig({ env });
    expect(cfg.mqtt.username).toBe(example.get("GATEWAY_ID")?.value);
    expect(cfg.mqtt.password).toBe(SECRETS.MQTT_GATEWAY_PASSWORD);
  });

  it("points health checks and scripts at files that exist in the image or the tree", () => {
    for (const [name, s] of Object.entries(compose.services)) {
      for (const part of [...(s.healthcheck?.test ?? []), ...(s.command ?? []), ...(s.entrypoint ?? [])]) {
        const m = /^(deploy\/\S+)$/.exec(part);
        if (m) expect(existsSync(path.join(repoRoot, m[1] as string)), `${name}: ${part}`).toBe(true);
      }
    }
  });

  it("never puts a literal secret in the file", () => {
    const raw = parseComposeRaw() as unknown as ComposeFile;
    for (const [name, s] of Object.entries(raw.services))
      for (const [k, v] of Object.entries(s.environment ?? {}))
        if (/PASSWORD|SECRET|TOKEN/.test(k)) expect(String(v), `${name}.${k}`).toMatch(/^\$\{[A-Z_]+:\?/);
  });
});

describe("Dockerfile", () => {
  const text = readFileSync(path.join(repoRoot, "Dockerfile"), "utf8");
  const lines = text
    .replace(/\\\r?\n/g, " ")
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  const ignore = readFileSync(path.join(repoRoot, ".dockerignore"), "utf8")
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));

  /** .dockerignore semantics for plain paths: the last matching pattern wins, `!` re-includes. */
  function ignored(rel: string): boolean {
    let out = false;
    for (const pat of ignore) {
      const neg = pat.startsWith("!");
      const p = (neg ? pat.slice(1) : pat).replace(/^\/+/, "").replace(/\/+$/, "");
      const re = new RegExp(
        `^${p
          .split("/")
          .map((seg) =>
            seg === "**"
              ? ".*"
              : seg
                  .replace(/[.+^${}()|[\]\\]/g, "\\$&")
                  .replace(/\*/g, "[^/]*")
                  .replace(/\?/g, "[^/]"),
          )
          .join("/")
          .replace(/\.\*\//g, "(?:.*/)?")}(?:/.*)?$`,
      );
      if (re.test(rel)) out = !neg;
    }
    return out;
  }

  it("is multi-stage, on a pinned Node image, and the final stage runs as a non-root user", () => {
    const froms = lines.filter((l) => /^FROM\s/i.test(l));
    expect(froms.length).toBeGreaterThanOrEqual(2);
    const arg = /^ARG NODE_IMAGE=(\S+)$/m.exec(text)?.[1];
    expect(arg).toMatch(/^node:(20|22|24)\.\d+\.\d+-[a-z]+(-slim)?$/);
    const lastFrom = lines.map((l, i) => [l, i] as const).filter(([l]) => /^FROM\s/i.test(l));
    const finalStage = lines.slice((lastFrom.at(-1) as readonly [string, number])[1]);
    const users = finalStage.filter((l) => /^USER\s/i.test(l));
    expect(users.length).toBeGreaterThan(0);
    expect(users.at(-1)).not.toMatch(/^USER\s+(root|0)(:|$)/i);
    expect(finalStage.some((l) => /--from=deps/.test(l))).toBe(true);
    expect(lines.some((l) => /npm ci\b.*--omit=dev/.test(l))).toBe(true);
    expect(finalStage.find((l) => /^ENTRYPOINT/i.test(l))).toContain("bin/bacmqtt.mjs");
  });

  it("copies only paths that exist and that .dockerignore lets through", () => {
    const copies = lines.filter((l) => /^COPY\s/i.test(l) && !/--from=/.test(l));
    expect(copies.length).toBeGreaterThan(3);
    for (const l of copies) {
      const parts = l.split(/\s+/).slice(1, -1);
      for (const src of parts) {
        expect(existsSync(path.join(repoRoot, src)), `COPY ${src}`).toBe(true);
        expect(ignored(src), `${src} is not excluded by .dockerignore`).toBe(false);
      }
    }
    for (const secretish of [".env", ".git", "node_modules", ".data", "test"])
      expect(ignored(secretish)).toBe(true);
    expect(ignored(".env.example")).toBe(false);
  });

  it("copies every source folder that the commands import, and nothing they import is a devDependency", () => {
    const pkg = JSON.parse(readFileSync(path.join(repoRoot, "package.json"), "utf8"));
    const prod = new Set(Object.keys(pkg.dependencies ?? {}));
    const dev = new Set(Object.keys(pkg.devDependencies ?? {}));
    const copied = lines
      .filter((l) => /^COPY\s/i.test(l) && !/--from=/.test(l))
      .flatMap((l) => l.split(/\s+/).slice(1, -1));
    const inImage = (rel: string) => copied.some((c) => rel === c || rel.startsWith(`${c}/`));
    // Walk the import graph from the entry point through the relative imports that exist now.
    const seen = new Set<string>();
    const queue = ["bin/bacmqtt.mjs"];
    const problems: string[] = [];
    while (queue.length) {
      const rel = queue.pop() as string;
      if (seen.has(rel)) continue;
      seen.add(rel);
      if (!inImage(rel)) problems.push(`${rel} is imported but not copied into the image`);
      const src = readFileSync(path.join(repoRoot, rel), "utf8");
      for (const m of src.matchAll(
        /(?:import|export)\s[^;]*?from\s+["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/g,
      )) {
        const spec = (m[1] ?? m[2]) as string;
        if (spec.startsWith(".")) {
          const target = path.posix.normalize(path.posix.join(path.posix.dirname(rel), spec));
          if (existsSync(path.join(repoRoot, target)) && statSync(path.join(repoRoot, target)).isFile())
            queue.push(target);
          continue;
        }
        if (spec.startsWith("node:")) continue;
        const name = spec.startsWith("@")
          ? spec.split("/").slice(0, 2).join("/")
          : (spec.split("/")[0] as string);
        // Type-only imports vanish at run time.
        if (/^import\s+type\s/.test(m[0]) || /^export\s+type\s/.test(m[0])) continue;
        if (dev.has(name) && !prod.has(name)) problems.push(`${rel} imports devDependency ${name}`);
        else if (!prod.has(name)) problems.push(`${rel} imports ${name}, which is not a dependency`);
      }
    }
    expect(seen.size).toBeGreaterThan(5);
    expect(problems).toEqual([]);
  });

  it("leaves tests, benchmarks and docs out of the build context", () => {
    for (const dir of ["test", "bench", "docs"]) {
      if (!existsSync(path.join(repoRoot, dir))) continue;
      expect(ignored(dir), dir).toBe(true);
      for (const f of readdirSync(path.join(repoRoot, dir))) expect(ignored(`${dir}/${f}`)).toBe(true);
    }
  });
});
