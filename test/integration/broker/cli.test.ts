// The real CLI, spawned: `bacmqtt broker --help`, one-line startup errors with exit 1,
// `bacmqtt broker-user`, and a broker started from a users file and from environment variables.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connackCode, connect, subscribe } from "./helpers.ts";

const BIN = new URL("../../../bin/bacmqtt.mjs", import.meta.url).pathname;
let dir: string;
const children = new Set<ChildProcess>();

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-broker-cli-"));
});

afterAll(() => {
  for (const child of children) child.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(
  args: string[],
  options: { input?: string; env?: Record<string, string> } = {},
): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, BACMQTT_LOG_LEVEL: "info", ...options.env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    children.add(child);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d;
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(options.input ?? "");
  });
}

/** Starts `bacmqtt broker` and resolves with its MQTT URL once it logs that it listens. */
function serve(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ url: string; child: ChildProcess }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, "broker", ...args], {
      env: { ...process.env, BACMQTT_LOG_LEVEL: "info", ...env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    children.add(child);
    let stderr = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`broker did not start: ${stderr}`));
    }, 20_000);
    child.stderr.on("data", (d: Buffer) => {
      stderr += d;
      for (const line of stderr.split("\n")) {
        if (!line.includes('"broker listening"')) continue;
        clearTimeout(timer);
        resolve({ url: JSON.parse(line).tcp as string, child });
      }
    });
    child.on("close", (code) => {
      children.delete(child);
      clearTimeout(timer);
      reject(new Error(`broker exited with ${code}: ${stderr}`));
    });
  });
}

function stopped(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    child.once("exit", (code) => resolve(code));
    child.kill("SIGTERM");
  });
}

const off = ["--ws-port", "off", "--metrics-port", "off", "--host", "127.0.0.1"];

// Each spawn starts tsx, which takes seconds on a busy two-core machine.
describe("bacmqtt broker", { timeout: 60_000 }, () => {
  it("--help lists every option with its environment variable", async () => {
    const res = await cli(["broker", "--help"]);
    expect(res.code).toBe(0);
    for (const opt of [
      "--port",
      "--ws-port",
      "--host",
      "--allow-anonymous",
      "--users",
      "--redis-url",
      "--metrics-port",
      "--base-topic",
      "--tls-cert",
      "--tls-key",
    ])
      expect(res.stdout).toContain(opt);
    expect(res.stdout).toContain("BACMQTT_REDIS_URL");
    expect(res.stdout).toMatch(/gateway +publish: \{base\}\/\{gw\}\/#/);
  });

  it("reports a port in use on one line and exits 1", async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", () => resolve()));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const res = await cli(["broker", "--port", String(port), "--allow-anonymous", ...off]);
      expect(res.code).toBe(1);
      expect(res.stderr.trim().split("\n")).toEqual([
        `bacmqtt broker: BROKER_ERR_PORT_IN_USE: MQTT port ${port} on 127.0.0.1 is already in use`,
      ]);
    } finally {
      blocker.close();
    }
  });

  it("reports a bad users file on one line and exits 1", async () => {
    const file = path.join(dir, "bad-users.json");
    writeFileSync(file, JSON.stringify({ users: [{ username: "x", role: "boss", password_hash: "nope" }] }));
    const res = await cli(["broker", "--port", "0", "--users", file, ...off]);
    expect(res.code).toBe(1);
    const lines = res.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^bacmqtt broker: BROKER_ERR_USERS_FILE: users file .*user "x": role "boss".*password_hash/,
    );
    const missing = await cli(["broker", "--port", "0", "--users", path.join(dir, "none.json"), ...off]);
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim().split("\n")).toHaveLength(1);
    expect(missing.stderr).toMatch(/BROKER_ERR_USERS_FILE: cannot read users file/);
  });

  it("reports an unreachable Redis on one line and exits 1", async () => {
    const res = await cli([
      "broker",
      "--port",
      "0",
      "--allow-anonymous",
      "--redis-url",
      "redis://127.0.0.1:1/0",
      ...off,
    ]);
    expect(res.code).toBe(1);
    expect(res.stderr.trim().split("\n")).toEqual([
      "bacmqtt broker: BROKER_ERR_REDIS: cannot reach Redis at redis://127.0.0.1:1/0: connect ECONNREFUSED 127.0.0.1:1",
    ]);
  });

  it("reports an unreadable or unusable TLS certificate on one line and exits 1", async () => {
    const missing = await cli([
      "broker",
      "--port",
      "0",
      "--allow-anonymous",
      ...off,
      "--tls-cert",
      path.join(dir, "no.pem"),
      "--tls-key",
      path.join(dir, "no.key"),
    ]);
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim().split("\n")).toHaveLength(1);
    expect(missing.stderr).toMatch(/BROKER_ERR_TLS: cannot read TLS certificate .*no\.pem/);
    const junk = path.join(dir, "junk.pem");
    writeFileSync(junk, "not a certificate\n");
    const bad = await cli([
      "broker",
      "--port",
      "0",
      "--allow-anonymous",
      ...off,
      "--tls-cert",
      junk,
      "--tls-key",
      junk,
    ]);
    expect(bad.code).toBe(1);
    expect(bad.stderr.trim().split("\n")).toHaveLength(1);
    expect(bad.stderr).toMatch(/BROKER_ERR_TLS: TLS certificate or key not usable/);
  });

  it("lists every bad option at once", async () => {
    const res = await cli(["broker", "--port", "abc", "--max-topic-depth", "0", "--tls-cert", "x.pem"]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('--port: "abc" is not an integer');
    expect(res.stderr).toContain("--max-topic-depth");
    expect(res.stderr).toContain("--tls-cert and --tls-key go together");
  });

  it("runs from environment variables alone and stops on SIGTERM", async () => {
    const { url, child } = await serve([], {
      BACMQTT_PORT: "0",
      BACMQTT_HOST: "127.0.0.1",
      BACMQTT_WS_PORT: "off",
      BACMQTT_METRICS_PORT: "off",
      BACMQTT_ALLOW_ANONYMOUS: "true",
    });
    const client = await connect(url);
    expect(await subscribe(client, "#")).toBe(1);
    await client.endAsync();
    expect(await stopped(child)).toBe(0);
  });
});

describe("bacmqtt broker-user", { timeout: 90_000 }, () => {
  it("adds, updates, lists and removes users; the broker accepts exactly those passwords", async () => {
    const file = path.join(dir, "users.json");
    const add = await cli(
      [
        "broker-user",
        "add",
        "--users",
        file,
        "gw1",
        "--role",
        "gateway",
        "--gateway",
        "gw1",
        "--password-stdin",
      ],
      {
        input: "first-pass\n",
      },
    );
    expect(add).toMatchObject({ code: 0, stdout: "added gw1 (gateway gw1)\n" });
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const gen = await cli(["broker-user", "add", "--users", file, "dash", "--role", "reader"]);
    expect(gen.code).toBe(0);
    const generated = /password: (\S+)/.exec(gen.stdout)?.[1] as string;
    expect(generated.length).toBeGreaterThanOrEqual(20);
    const update = await cli(["broker-user", "add", "--users", file, "gw1", "--password-stdin"], {
      input: "second-pass",
    });
    expect(update).toMatchObject({ code: 0, stdout: "updated gw1 (gateway gw1)\n" });
    const list = await cli(["broker-user", "list", "--users", file]);
    expect(list.stdout).toBe("dash\treader\ngw1\tgateway\tgw1\n");
    expect(readFileSync(file, "utf8")).not.toContain("second-pass");

    const { url, child } = await serve(["--port", "0", "--users", file, ...off]);
    expect(await connackCode(url, { username: "gw1", password: "second-pass" })).toBe(0);
    expect(await connackCode(url, { username: "gw1", password: "first-pass" })).toBe(4);
    expect(await connackCode(url, { username: "dash", password: generated })).toBe(0);
    expect(await connackCode(url)).toBe(5);

    const remove = await cli(["broker-user", "remove", "--users", file, "dash"]);
    expect(remove).toMatchObject({ code: 0, stdout: "removed dash\n" });
    // SIGHUP makes the running broker re-read the file.
    child.kill("SIGHUP");
    let code = 0;
    for (let i = 0; i < 100 && code !== 4; i++) {
      code = await connackCode(url, { username: "dash", password: generated });
      if (code !== 4) await new Promise((r) => setTimeout(r, 50));
    }
    expect(code).toBe(4);
    expect(await stopped(child)).toBe(0);
  });

  it("refuses bad input with a clear message", async () => {
    const file = path.join(dir, "users2.json");
    const noRole = await cli(["broker-user", "add", "--users", file, "x"]);
    expect(noRole.code).toBe(1);
    expect(noRole.stderr).toContain("--role is required");
    const noGw = await cli(["broker-user", "add", "--users", file, "x", "--role", "gateway"]);
    expect(noGw.stderr).toContain("role gateway needs --gateway");
    const badRole = await cli(["broker-user", "add", "--users", file, "x", "--role", "root"]);
    expect(badRole.stderr).toContain('--role: "root" is not one of');
    const missing = await cli(["broker-user", "remove", "--users", file, "ghost"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('no user "ghost"');
    const emptyPw = await cli([
      "broker-user",
      "add",
      "--users",
      file,
      "x",
      "--role",
      "api",
      "--password-stdin",
    ]);
    expect(emptyPw.stderr).toContain("held no password");
  });
});
