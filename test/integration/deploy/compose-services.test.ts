// Every bacmqtt service of docker-compose.yml started here as a real process (`node
// bin/bacmqtt.mjs <command>`, or the service's entrypoint script) with the environment the compose
// file gives it (.env.example plus the secrets a user sets), and brought up healthy by running its
// own health-check command. No Docker engine: only what a container network provides is mapped —
// service host names to this machine's services, container ports to free local ports, /data to a
// temporary folder:
//   timescaledb → for migrate: TimescaleDB in PGlite (WASM) over the PostgreSQL protocol (the
//                 compose dialect; a native TimescaleDB is not installable here). For ingest and
//                 api: a fresh database on the local PostgreSQL, already migrated (portable),
//                 because PGlite runs one statement at a time and the long-running services'
//                 concurrent connections stall it.
//   redis       → the local Redis on 6379, with a key prefix of its own
//   broker      → the broker process started by this test
// The gateway service (host network, BACnet broadcasts) is not started here: see doctor.test.ts.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPortableDatabase, type TestDatabase } from "../../support/db-postgres.ts";
import { startWasmTimescale, type WasmTimescale } from "../../support/db-timescale.ts";
import {
  type ComposeService,
  exampleEnvWithSecrets,
  loadCompose,
  repoRoot,
  SECRETS,
} from "../../unit/deploy/compose-file.ts";

const bin = path.join(repoRoot, "bin/bacmqtt.mjs");

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address() as { port: number };
  await new Promise((r) => s.close(r));
  return port;
}

interface Running {
  name: string;
  child: ChildProcess;
  output: string[];
  exit: Promise<number | null>;
}

const running: Running[] = [];
let dataDir: string;
let ts: WasmTimescale;
/** Service → container port → the local port standing in for it (each container has its own ports). */
const ports: Record<string, Record<string, number>> = {};
const CONTAINER_PORTS = ["1883", "8083", "8080", "9465"];
let databaseUrl: string;
let pgDb: TestDatabase;
const redisPrefix = `bacmqtt-compose-test-${process.pid}:`;

const { compose, problems } = loadCompose(exampleEnvWithSecrets(SECRETS));
const services = compose.services;

/** What a container network would resolve for `service`: host names, container ports, volumes. */
function localise(value: string, service: string): string {
  const own = ports[service] as Record<string, number>;
  let v = value
    .replace(/^postgres:\/\/[^@]*@timescaledb:5432\/\w+$/, () => databaseUrl)
    .replace(/redis:\/\/redis:6379\//, "redis://127.0.0.1:6379/")
    .replace(/\bbroker:(1883|8083)\b/g, (_m, p: string) => `127.0.0.1:${ports.broker?.[p]}`)
    .replace(/\b127\.0\.0\.1:(\d+)\b/g, (m, p: string) => (own[p] ? `127.0.0.1:${own[p]}` : m))
    .replace(/^\/data(\/|$)/, `${dataDir}$1`);
  if (own[v]) v = String(own[v]);
  if (v === "0.0.0.0") v = "127.0.0.1"; // listen on loopback only in tests
  return v;
}

function envOf(name: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const service = services[name] as ComposeService;
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME };
  for (const [k, v] of Object.entries(service.environment ?? {})) env[k] = localise(String(v ?? ""), name);
  return { ...env, ...extra };
}

/** The service's process: its entrypoint script, or `node bin/bacmqtt.mjs <command>` as the image's ENTRYPOINT. */
function start(name: string, extra: Record<string, string> = {}): Running {
  const s = services[name] as ComposeService;
  const argv = s.entrypoint
    ? [...s.entrypoint]
    : [process.execPath, bin, ...(s.command ?? []).map((a) => localise(a, name))];
  const [cmd, ...args] = argv as [string, ...string[]];
  const child = spawn(cmd, args, {
    cwd: repoRoot,
    env: envOf(name, extra),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output: string[] = [];
  child.stdout?.on("data", (d: Buffer) => output.push(d.toString()));
  child.stderr?.on("data", (d: Buffer) => output.push(d.toString()));
  const exit = new Promise<number | null>((resolve) =>
    // "close", not "exit": the output has been read by then.
    child.once("close", (code, signal) => {
      if (signal) output.push(`\n[killed by ${signal}]`);
      resolve(code);
    }),
  );
  const r = { name, child, output, exit };
  running.push(r);
  return r;
}

/** Runs the service's own health-check command (CMD form) once; true when it exits 0. */
async function healthy(name: string): Promise<boolean> {
  const test = services[name]?.healthcheck?.test ?? [];
  expect(test[0], `${name} health check is CMD form`).toBe("CMD");
  const [cmd, ...args] = test.slice(1).map((a) => localise(a, name)) as [string, ...string[]];
  const child = spawn(cmd === "node" ? process.execPath : cmd, args, { cwd: repoRoot, stdio: "ignore" });
  return (await new Promise<number | null>((r) => child.once("exit", r))) === 0;
}

/** Polls the health check like Docker does (interval, bounded retries); fails with the service's output. */
async function waitHealthy(r: Running, attempts = 60): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    if (r.child.exitCode !== null)
      throw new Error(`${r.name} exited ${r.child.exitCode}:\n${r.output.join("")}`);
    if (await healthy(r.name)) return;
    await new Promise((res) => setTimeout(res, 1000));
  }
  throw new Error(`${r.name} never became healthy:\n${r.output.join("")}`);
}

describe("docker-compose.yml services, started here with their compose environment", () => {
  beforeAll(async () => {
    expect(problems).toEqual([]);
    dataDir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-compose-"));
    for (const name of Object.keys(services)) {
      ports[name] = {};
      for (const p of CONTAINER_PORTS) (ports[name] as Record<string, number>)[p] = await freePort();
    }
    ts = await startWasmTimescale();
    const u = new URL(ts.url);
    // Same credentials as compose; PGlite has the one user "postgres".
    databaseUrl = `postgres://postgres:${SECRETS.POSTGRES_PASSWORD}@127.0.0.1:${u.port}/postgres`;
    pgDb = await createPortableDatabase("bacmqtt_compose");
  }, 120_000);

  afterAll(async () => {
    for (const r of running) if (r.child.exitCode === null) r.child.kill("SIGTERM");
    await Promise.all(
      running.map((r) =>
        Promise.race([r.exit, new Promise((res) => setTimeout(res, 30_000))]).then(() => {
          if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill("SIGKILL");
          return r.exit;
        }),
      ),
    );
    await ts?.drop();
    await pgDb?.drop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    // The broker's keys in the shared local Redis.
    const { Redis } = await import("ioredis");
    const redis = new Redis("redis://127.0.0.1:6379/0", { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await redis.connect();
      const keys = await redis.keys(`${redisPrefix}*`);
      if (keys.length) await redis.del(...keys);
    } finally {
      redis.disconnect();
    }
  });

  it("migrate: creates the timescale schema and exits 0", async () => {
    const r = start("migrate");
    expect(await r.exit, r.output.join("")).toBe(0);
    expect(r.output.join("")).toMatch(/timescale dialect/);
    const c = new pg.Client({ connectionString: databaseUrl });
    await c.connect();
    try {
      const { rows } = await c.query("SELECT hypertable_name FROM timescaledb_information.hypertables");
      expect(rows.map((x) => x.hypertable_name)).toContain("readings");
    } finally {
      await c.end();
    }
  }, 120_000);

  it("broker-users: writes the three MQTT users and exits 0", async () => {
    const r = start("broker-users");
    expect(await r.exit, r.output.join("")).toBe(0);
    const out = r.output.join("");
    for (const line of ["api\tapi", "gw1\tgateway\tgw1", "ingest\tingest"]) expect(out).toContain(line);
  }, 60_000);

  it("broker: comes up healthy on its users file and Redis, refusing anonymous clients", async () => {
    const r = start("broker", { BACMQTT_REDIS_PREFIX: redisPrefix });
    await waitHealthy(r);
    const mqtt = await import("mqtt");
    const anonymous = await mqtt
      .connectAsync(`mqtt://127.0.0.1:${ports.broker?.["1883"]}`, {
        reconnectPeriod: 0,
        connectTimeout: 5000,
      })
      .then((c) => c.endAsync().then(() => "accepted"))
      .catch((err: Error) => err.message);
    expect(anonymous).toMatch(/Not authorized|Bad username/i);
    const gateway = await mqtt.connectAsync(`mqtt://127.0.0.1:${ports.broker?.["1883"]}`, {
      reconnectPeriod: 0,
      connectTimeout: 5000,
      username: "gw1",
      password: SECRETS.MQTT_GATEWAY_PASSWORD,
    });
    await gateway.endAsync();
  }, 120_000);

  it("ingest: comes up healthy against a migrated database and the broker", async () => {
    const r = start("ingest", { DATABASE_URL: pgDb.url });
    await waitHealthy(r);
    // mqtt_connected turns 1 on CONNACK; the subscriptions follow. Up means "ingest running".
    for (let i = 0; i < 60 && !/"msg":"ingest running"/.test(r.output.join("")); i++)
      await new Promise((res) => setTimeout(res, 500));
    expect(r.output.join("")).toMatch(/"msg":"ingest running"/);
  }, 120_000);

  it("api: comes up healthy and reports itself healthy on /api/health", async () => {
    const r = start("api", { DATABASE_URL: pgDb.url });
    await waitHealthy(r);
    const res = await fetch(`http://127.0.0.1:${ports.api?.["8080"]}/api/health`);
    expect(res.status).toBe(200);
  }, 120_000);

  it("every long-running service is still up, and each stops cleanly on SIGTERM", async () => {
    const long = running.filter((r) => ["broker", "ingest", "api"].includes(r.name));
    expect(long.map((r) => r.name).sort()).toEqual(["api", "broker", "ingest"]);
    for (const r of long) expect(r.child.exitCode, `${r.name}:\n${r.output.join("")}`).toBeNull();
    // Compose sends SIGTERM and waits stop_grace_period before SIGKILL: a service still running then
    // has not stopped cleanly.
    const grace = Number.parseInt(
      String((services.api as { stop_grace_period?: string }).stop_grace_period),
      10,
    );
    expect(grace).toBeGreaterThan(0);
    const stop = async (r: Running) => {
      r.child.kill("SIGTERM");
      return Promise.race([
        r.exit.then((code) => ({ code })),
        new Promise<"still running">((res) => setTimeout(() => res("still running"), grace * 1000)),
      ]);
    };
    const [broker, ingest, api] = ["broker", "ingest", "api"].map(
      (n) => long.find((r) => r.name === n) as Running,
    );
    expect(await stop(api as Running), `api after SIGTERM:\n${api?.output.join("")}`).toEqual({ code: 0 });
    expect(await stop(ingest as Running), `ingest after SIGTERM:\n${ingest?.output.join("")}`).toEqual({
      code: 0,
    });
    expect(await stop(broker as Running), `broker after SIGTERM:\n${broker?.output.join("")}`).toEqual({
      code: 0,
    });
  }, 180_000);
});
