// `bacmqtt all --simulate N` through the real entry point: everything comes up in one process on
// embedded defaults, simulated devices and their readings reach the database behind the API, a
// SIGINT stops it cleanly, and a restart keeps the data and the admin key.
import { type ChildProcess, spawn } from "node:child_process";
import dgram from "node:dgram";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const bin = fileURLToPath(new URL("../../../bin/bacmqtt.mjs", import.meta.url));
const dataDir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-all-"));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Two consecutive free UDP ports on 127.0.0.1 (the simulated devices take one each). */
async function freeUdpPair(): Promise<number> {
  const canBind = (port: number) =>
    new Promise<boolean>((resolve) => {
      const s = dgram.createSocket("udp4");
      s.once("error", () => resolve(false));
      s.bind(port, "127.0.0.1", () => s.close(() => resolve(true)));
    });
  for (let i = 0; i < 50; i++) {
    const base = 40_000 + Math.floor(Math.random() * 20_000);
    if ((await canBind(base)) && (await canBind(base + 1))) return base;
  }
  throw new Error("no free UDP port pair");
}

interface Started {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

async function startAll(ports: { http: number; mqtt: number; ws: number; sim: number }): Promise<Started> {
  const child = spawn(
    process.execPath,
    [
      bin,
      "all",
      "--simulate",
      "2",
      "--simulate-port",
      String(ports.sim),
      "--data-dir",
      dataDir,
      "--http-port",
      String(ports.http),
      "--mqtt-port",
      String(ports.mqtt),
      "--ws-port",
      String(ports.ws),
    ],
    {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, BACMQTT_LOG_LEVEL: "warn", DATABASE_URL: "" },
    },
  );
  let out = "";
  let err = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-20_000);
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const deadline = Date.now() + 240_000;
  while (!out.includes("Press Ctrl+C to stop.")) {
    if (child.exitCode !== null) throw new Error(`bacmqtt all exited ${child.exitCode}: ${err}`);
    if (Date.now() > deadline) throw new Error(`bacmqtt all did not start in time: ${out}\n${err}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return { child, stdout: () => out, stderr: () => err, exited };
}

async function getJson(url: string): Promise<unknown> {
  const res = await fetch(url);
  expect(res.status, url).toBe(200);
  return res.json();
}

/** Polls until `probe` returns a value (bounded by count and time). */
async function eventually<T>(probe: () => Promise<T | undefined>, what: string, seconds = 60): Promise<T> {
  for (let i = 0; i < seconds * 2; i++) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`timed out waiting for ${what}`);
}

afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

describe("bacmqtt all --simulate", () => {
  it("runs the whole stack, stops on SIGINT and keeps its data across a restart", {
    timeout: 400_000,
  }, async () => {
    const ports = {
      http: await freePort(),
      mqtt: await freePort(),
      ws: await freePort(),
      sim: await freeUdpPair(),
    };
    const first = await startAll(ports);
    const base = `http://127.0.0.1:${ports.http}`;
    try {
      expect(first.stdout()).toContain(`Web console    ${base}/`);
      expect(first.stdout()).toContain(`MQTT broker    mqtt://127.0.0.1:${ports.mqtt}`);
      const key = readFileSync(path.join(dataDir, "admin-key"), "utf8").trim();
      expect(first.stdout()).toContain(key);

      const devices = await eventually(
        async () => {
          const body = (await getJson(`${base}/api/devices`)) as {
            total: number;
            items: { device_instance: number; online: boolean }[];
          };
          return body.total === 2 && body.items.every((d) => d.online) ? body : undefined;
        },
        "two simulated devices online",
        180,
      );
      expect(devices.items.map((d) => d.device_instance).sort()).toEqual([1001, 1002]);

      // Readings flow from the simulator through gateway, broker and ingest into the database.
      const readings = await eventually(
        async () => {
          const dev = (await getJson(`${base}/api/gateways/local/devices/1001`)) as {
            points: { point: string; latest: { time: string; value: number | null } | null }[];
          };
          const withValue = dev.points.filter((p) => p.latest !== null && p.latest.value !== null);
          return withValue.length >= 5 ? withValue : undefined;
        },
        "point values of device 1001",
        180,
      );
      expect(readings.length).toBeGreaterThanOrEqual(5);
      const health = (await getJson(`${base}/api/health`)) as {
        status: string;
        gateways: { gateway_id: string; state: string }[];
      };
      expect(health.gateways).toContainEqual(
        expect.objectContaining({ gateway_id: "local", state: "online" }),
      );
    } finally {
      first.child.kill("SIGINT");
    }
    expect(await first.exited).toBe(0);

    const second = await startAll(ports);
    try {
      // The admin key and the devices are still there straight after the restart.
      const key = readFileSync(path.join(dataDir, "admin-key"), "utf8").trim();
      expect(second.stdout()).toContain(key);
      const body = (await getJson(`${base}/api/devices`)) as { total: number };
      expect(body.total).toBe(2);
    } finally {
      second.child.kill("SIGINT");
    }
    expect(await second.exited).toBe(0);
  });
});
