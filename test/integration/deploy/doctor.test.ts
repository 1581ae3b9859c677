// `bacmqtt doctor` end to end, through bin/bacmqtt.mjs, in two network namespaces this test creates
// (as root) and deletes: "sim" runs the BACnet simulator on 198.51.100.11-13 (TEST-NET-2), "doc"
// runs the broker on its loopback and the doctor on 198.51.100.2, joined by a veth pair. Nothing
// leaves the namespaces. A second part checks the api and database checks on this host's loopback
// with Who-Is switched off.
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DoctorReport } from "../../../gateway/doctor.ts";
import { createPortableDatabase, type TestDatabase } from "../../support/db-postgres.ts";

const bin = fileURLToPath(new URL("../../../bin/bacmqtt.mjs", import.meta.url));
const isRoot = process.getuid?.() === 0;
const hasIp = spawnSync("ip", ["-V"]).status === 0;
const canNetns = isRoot && hasIp && process.platform === "linux";

const tag = randomBytes(3).toString("hex");
const NS_SIM = `bmq-sim-${tag}`;
const NS_DOC = `bmq-doc-${tag}`;
const VETH_DOC = `vd${tag}`;
const VETH_SIM = `vs${tag}`;
const DOC_IP = "198.51.100.2";
const SIM_IPS = ["198.51.100.11", "198.51.100.12", "198.51.100.13"];

const children: ChildProcess[] = [];
let dir: string;

function ip(...args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** Starts a bacmqtt command inside a namespace and resolves once `ready` matches its output. */
function startIn(
  ns: string,
  args: string[],
  ready: RegExp,
  env: NodeJS.ProcessEnv = {},
): Promise<ChildProcess> {
  const child = spawn("ip", ["netns", "exec", ns, process.execPath, bin, ...args], {
    env: { ...process.env, BACMQTT_LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = "";
    const onData = (d: Buffer) => {
      out += d.toString();
      if (ready.test(out)) resolve(child);
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.once("exit", (code) => reject(new Error(`${args[0]} exited ${code} before it was ready:\n${out}`)));
  });
}

/** Runs the doctor (asynchronously: the test's own HTTP server must keep answering meanwhile). */
async function doctor(
  ns: string | null,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; report: DoctorReport; stdout: string }> {
  const cmd = ns ? "ip" : process.execPath;
  const argv = ns
    ? ["netns", "exec", ns, process.execPath, bin, "doctor", ...args]
    : [bin, "doctor", ...args];
  const child = spawn(cmd, argv, {
    env: { ...process.env, BACMQTT_LOG_LEVEL: "silent", DATABASE_URL: "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  if (!args.includes("--json")) return { code, report: { checks: [], ok: code === 0 }, stdout };
  try {
    return { code, report: JSON.parse(stdout) as DoctorReport, stdout };
  } catch {
    throw new Error(`doctor printed no JSON (exit ${code}):\n${stdout}\n${stderr}`);
  }
}

const check = (report: DoctorReport, id: string) => report.checks.find((c) => c.id === id);
const whois = (report: DoctorReport) => report.checks.filter((c) => c.id.startsWith("whois:"));

describe.skipIf(!canNetns)("bacmqtt doctor in network namespaces (root, iproute2)", () => {
  let config: string;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-doctor-"));
    ip("netns", "add", NS_SIM);
    ip("netns", "add", NS_DOC);
    ip("link", "add", VETH_DOC, "netns", NS_DOC, "type", "veth", "peer", "name", VETH_SIM, "netns", NS_SIM);
    ip("-n", NS_DOC, "addr", "add", `${DOC_IP}/24`, "dev", VETH_DOC);
    for (const a of SIM_IPS) ip("-n", NS_SIM, "addr", "add", `${a}/24`, "dev", VETH_SIM);
    for (const [ns, dev] of [
      [NS_DOC, VETH_DOC],
      [NS_SIM, VETH_SIM],
    ] as const) {
      ip("-n", ns, "link", "set", "lo", "up");
      ip("-n", ns, "link", "set", dev, "up");
    }
    const users = path.join(dir, "users.json");
    execFileSync(
      process.execPath,
      [
        bin,
        "broker-user",
        "add",
        "--users",
        users,
        "gw1",
        "--role",
        "gateway",
        "--gateway",
        "gw1",
        "--password-stdin",
      ],
      {
        input: "gw-secret",
        env: { ...process.env, BACMQTT_LOG_LEVEL: "silent" },
      },
    );
    config = path.join(dir, "gateway.yaml");
    writeFileSync(
      config,
      [
        "gateway_id: gw1",
        "mqtt:",
        "  url: mqtt://127.0.0.1:1883",
        "  username: gw1",
        "  password: gw-secret",
        "bacnet:",
        `  interface: ${VETH_DOC}`,
        "",
      ].join("\n"),
    );
    await Promise.all([
      startIn(
        NS_SIM,
        [
          "simulate",
          "--devices",
          "3",
          "--first-instance",
          "7001",
          "--address",
          SIM_IPS[0] as string,
          "--port",
          "47808",
          "--broadcast-address",
          "198.51.100.255",
          "--json",
        ],
        /"instance": 7003/,
      ),
      startIn(
        NS_DOC,
        [
          "broker",
          "--host",
          "127.0.0.1",
          "--port",
          "1883",
          "--ws-port",
          "off",
          "--metrics-port",
          "off",
          "--users",
          users,
          "--sys-interval",
          "0",
        ],
        /listening|started|ready/i,
      ),
    ]);
  }, 120_000);

  afterAll(async () => {
    for (const c of children) c.kill("SIGTERM");
    await Promise.all(
      children.map((c) =>
        c.exitCode !== null || c.signalCode !== null ? undefined : new Promise((r) => c.once("exit", r)),
      ),
    );
    for (const ns of [NS_DOC, NS_SIM]) spawnSync("ip", ["netns", "del", ns]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("reports the interfaces, a free port, the devices that answered and the broker, and exits 0", async () => {
    const { code, report } = await doctor(NS_DOC, ["--json", "--config", config, "--timeout", "2"]);
    const ifaces = check(report, "interfaces");
    expect(ifaces?.status).toBe("ok");
    expect(ifaces?.details.join("\n")).toContain(`${VETH_DOC}`);
    expect(ifaces?.details.join("\n")).toContain(
      `chosen: ${VETH_DOC} ${DOC_IP}, Who-Is broadcast to 198.51.100.255`,
    );
    expect(check(report, "port")).toMatchObject({ status: "ok", title: `UDP ${DOC_IP}:47808 is free` });
    const sent = whois(report);
    expect(sent).toHaveLength(1);
    expect(sent[0]?.title).toContain("3 I-Am answer(s)");
    for (const instance of [7001, 7002, 7003])
      expect(sent[0]?.details.join("\n")).toContain(`device ${instance} at`);
    expect(check(report, "broker")).toMatchObject({ status: "ok" });
    expect(check(report, "broker")?.title).toContain("as gw1");
    expect(report.ok).toBe(true);
    expect(code).toBe(0);
  });

  it("names the process holding UDP 47808, still counts unicast answers, flags a wrong password, exits 1", async () => {
    const hold = spawn(
      "ip",
      [
        "netns",
        "exec",
        NS_DOC,
        process.execPath,
        "-e",
        `const s=require("dgram").createSocket("udp4");s.bind({address:"${DOC_IP}",port:47808,exclusive:true},()=>console.log("bound"));setInterval(()=>{},1000)`,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    children.push(hold);
    await new Promise<void>((resolve, reject) => {
      hold.stdout?.on("data", (d: Buffer) => d.toString().includes("bound") && resolve());
      hold.once("exit", (c) => reject(new Error(`holder exited ${c}`)));
    });
    try {
      const { code, report } = await doctor(NS_DOC, ["--json", "--config", config, "--timeout", "2"], {
        BACMQTT_GATEWAY__MQTT__PASSWORD: "wrong",
      });
      const port = check(report, "port");
      expect(port?.status).toBe("fail");
      expect(port?.title).toBe(`UDP ${DOC_IP}:47808 is taken by another program`);
      // The holder's pid as seen by /proc inside the namespace's mount of the host's /proc.
      expect(port?.details.join("\n")).toMatch(
        new RegExp(`bound ${DOC_IP.replace(/\./g, "\\.")}:47808 \\(udp4\\) by pid ${hold.pid} .*node -e`),
      );
      expect(port?.fix).toMatch(/Stop that program/);
      expect(check(report, "whois-port")?.status).toBe("info");
      // The simulator answers Who-Is by unicast too, so the spare port still hears the devices.
      expect(whois(report)[0]?.title).toContain("3 I-Am answer(s)");
      const broker = check(report, "broker");
      expect(broker?.status).toBe("fail");
      expect(broker?.fix).toMatch(/user\/password/);
      expect(report.ok).toBe(false);
      expect(code).toBe(1);
    } finally {
      hold.kill("SIGTERM");
    }
  });

  it("says when no device answers and when the broker is unreachable", async () => {
    const { code, report } = await doctor(NS_DOC, [
      "--json",
      "--config",
      config,
      "--timeout",
      "1",
      "--port",
      "47999",
      "--mqtt-url",
      "mqtt://127.0.0.1:1999",
    ]);
    expect(whois(report)[0]?.title).toContain("0 I-Am answer(s)");
    expect(check(report, "devices")).toMatchObject({
      status: "fail",
      title: "No BACnet device answered on any interface",
    });
    expect(check(report, "broker")?.status).toBe("fail");
    expect(check(report, "broker")?.fix).toMatch(/not reachable/);
    expect(code).toBe(1);
  });

  it("refuses an interface that does not exist, listing the candidates", async () => {
    const { code, report } = await doctor(NS_DOC, [
      "--json",
      "--config",
      config,
      "--interface",
      "nosuch0",
      "--no-whois",
    ]);
    const ifaces = check(report, "interfaces");
    expect(ifaces?.status).toBe("fail");
    expect(ifaces?.title).toContain('no IPv4 interface named "nosuch0"');
    expect(ifaces?.title).toContain(VETH_DOC);
    expect(code).toBe(1);
  });
});

describe("bacmqtt doctor: api and database checks (loopback, no Who-Is)", () => {
  let db: TestDatabase;
  let server: Server;
  let apiUrl: string;

  beforeAll(async () => {
    db = await createPortableDatabase("bacmqtt_doctor");
    server = createServer((req, res) => {
      res.writeHead(req.url === "/api/health" ? 200 : 404, { "content-type": "application/json" });
      res.end(JSON.stringify({ status: "ok" }));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    apiUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((r) => server?.close(r));
    await db?.drop();
  });

  const base = [
    "--no-whois",
    "--interface",
    "127.0.0.1",
    "--port",
    "0",
    "--mqtt-url",
    "mqtt://127.0.0.1:1",
    "--timeout",
    "2",
  ];

  it("reports a healthy api and a migrated database", async () => {
    const { report } = await doctor(null, ["--json", ...base, "--api-url", apiUrl, "--database-url", db.url]);
    expect(check(report, "api")).toMatchObject({ status: "ok", title: `API ${apiUrl}/api/health: HTTP 200` });
    expect(check(report, "database")?.status).toBe("ok");
    expect(check(report, "database")?.title).toMatch(/schema version \d+, portable dialect/);
    // The database check never prints the URL's credentials.
    expect(JSON.stringify(report)).not.toContain("postgres://");
  });

  it("reports an api that is down and a database that is not migrated", async () => {
    const { createPostgresDatabase } = await import("../../support/db-postgres.ts");
    const empty = await createPostgresDatabase("bacmqtt_doctor_empty");
    try {
      const { code, report } = await doctor(null, [
        "--json",
        ...base,
        "--api-url",
        "http://127.0.0.1:1",
        "--database-url",
        empty.url,
      ]);
      expect(check(report, "api")?.status).toBe("fail");
      expect(check(report, "database")).toMatchObject({ status: "fail" });
      expect(check(report, "database")?.fix).toMatch(/bacmqtt migrate/);
      expect(code).toBe(1);
    } finally {
      await empty.drop();
    }
  });

  it("prints a readable report with what to do", async () => {
    const r = await doctor(null, base);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^\[FAIL\] Broker mqtt:\/\/127\.0\.0\.1:1 /m);
    expect(r.stdout).toMatch(/→ The broker is not reachable/);
    expect(r.stdout).toMatch(/problem\(s\)/);
  });
});
