// `bacmqtt api-key` and `bacmqtt api` through the real entry point (bin/bacmqtt.mjs) against a real
// database: a key is printed once and works; the api starts, serves health, and stops on SIGTERM.
// Each spawn pays tsx's start-up (seconds on a busy machine), hence the generous per-file timeout.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { startBroker } from "../../../broker/index.ts";
import {
  createPortableDatabase,
  createPostgresDatabase,
  type TestDatabase,
} from "../../support/db-postgres.ts";

const bin = fileURLToPath(new URL("../../../bin/bacmqtt.mjs", import.meta.url));

let db: TestDatabase;
let broker: Awaited<ReturnType<typeof startBroker>>;
let child: ChildProcess | undefined;

const env = () => ({ ...process.env, DATABASE_URL: db.url, BACMQTT_LOG_LEVEL: "warn" });
const run = (...args: string[]) =>
  spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 60_000, env: env() });

vi.setConfig({ testTimeout: 180_000 });

beforeAll(async () => {
  db = await createPortableDatabase("bacmqtt_api_cli");
  broker = await startBroker({ port: 0, host: "127.0.0.1", allowAnonymous: true, sysInterval: 0 });
});
afterAll(async () => {
  if (child && child.exitCode === null) child.kill("SIGKILL");
  await broker?.close();
  await db?.drop();
});

describe("bacmqtt api-key", () => {
  it("creates a key, prints it once on stdout, lists and revokes it", async () => {
    const created = run("api-key", "create", "ops", "--role", "operator");
    expect(created.status).toBe(0);
    const key = created.stdout.trim();
    expect(key).toMatch(/^bmq_[A-Za-z0-9_-]{32}$/);
    expect(created.stderr).toMatch(/shown only this once/);
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    try {
      const { rows } = await pool.query("SELECT role, key_hash FROM api_keys WHERE name = 'ops'");
      expect(rows[0].role).toBe("operator");
      expect(rows[0].key_hash).not.toContain(key);
    } finally {
      await pool.end();
    }
    const list = run("api-key", "list");
    expect(list.stdout).toMatch(/^ops\toperator\tactive/m);
    expect(list.stdout).not.toContain(key);
    expect(run("api-key", "create", "ops", "--role", "viewer").status).toBe(1);
    expect(run("api-key", "revoke", "ops").status).toBe(0);
    expect(run("api-key", "list").stdout).toMatch(/^ops\toperator\trevoked/m);
    expect(run("api-key", "revoke", "ops").status).toBe(1);
  });

  it("refuses a bad role or action with every problem listed", () => {
    const bad = run("api-key", "create", "x", "--role", "root");
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--role: "root" is not one of viewer, operator, admin/);
    expect(run("api-key", "destroy").stderr).toMatch(/unknown action "destroy"/);
  });
});

describe("bacmqtt api", () => {
  it("refuses bad options at once", () => {
    const r = run("api", "--port", "http", "--read-access", "maybe", "--mqtt-url", "localhost");
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--port: "http" is not an integer/);
    expect(r.stderr).toMatch(/--read-access: "maybe"/);
    expect(r.stderr).toMatch(/--mqtt-url: "localhost" is not an MQTT URL/);
  });

  it("refuses to start on a database that was never migrated", async () => {
    const empty = await createPostgresDatabase("bacmqtt_api_cli_empty");
    try {
      const r = spawnSync(
        process.execPath,
        [bin, "api", "--port", "0", "--host", "127.0.0.1", "--mqtt-url", broker.url],
        {
          encoding: "utf8",
          timeout: 60_000,
          env: { ...env(), DATABASE_URL: empty.url },
        },
      );
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/API_ERR_NOT_MIGRATED: .*bacmqtt migrate/);
    } finally {
      await empty.drop();
    }
  });

  it("starts, reports healthy, serves the console and stops on SIGTERM", async () => {
    const port = 20000 + (process.pid % 20000);
    child = spawn(
      process.execPath,
      [
        bin,
        "api",
        "--port",
        String(port),
        "--host",
        "127.0.0.1",
        "--mqtt-url",
        broker.url,
        "--read-access",
        "open",
      ],
      { env: env(), stdio: ["ignore", "pipe", "pipe"] },
    );
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    let health: { status: string } | undefined;
    for (let i = 0; i < 150 && !health; i++) {
      await new Promise((r) => setTimeout(r, 100));
      try {
        const res = await fetch(`http://127.0.0.1:${port}/api/health`);
        if (res.status === 200) health = (await res.json()) as { status: string };
      } catch {
        // not listening yet
      }
    }
    expect(health, stderr).toMatchObject({ status: "ok" });
    expect((await fetch(`http://127.0.0.1:${port}/api/devices`)).status).toBe(200);
    expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toContain("bacmqtt console");
    const exited = new Promise<number | null>((resolve) => child?.once("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
  });
});
