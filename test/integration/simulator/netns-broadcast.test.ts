// Broadcast Who-Is on a real (virtual) LAN: two network namespaces joined by a veth pair, the
// simulator (`bacmqtt simulate`) in one, a raw client in the other. Needs root and iproute2; the
// namespaces are created here and removed afterwards, and no traffic leaves them.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appValue, decodeItems, type Frame, parseFrame } from "./raw-client.ts";

const canRun = process.platform === "linux" && process.getuid?.() === 0 && canMakeNamespaces();

/** Root is not enough inside a container without CAP_SYS_ADMIN: try one namespace first. */
function canMakeNamespaces(): boolean {
  const probe = `bmsimprobe${process.pid % 100000}`;
  try {
    execFileSync("ip", ["netns", "add", probe], { stdio: "ignore" });
    execFileSync("ip", ["netns", "del", probe], { stdio: "ignore" });
    return true;
  } catch {
    process.stderr.write("netns-broadcast: cannot create network namespaces here; test skipped\n");
    return false;
  }
}

const tag = `${process.pid % 100000}`;
const NS_SIM = `bmsim${tag}s`;
const NS_CLI = `bmsim${tag}c`;
const VETH_SIM = `bms${tag}s`;
const VETH_CLI = `bms${tag}c`;
const bin = fileURLToPath(new URL("../../../bin/bacmqtt.mjs", import.meta.url));
const ip = (...args: string[]) => execFileSync("ip", args, { stdio: "pipe" });
let sim: ChildProcess | undefined;

// The client runs inside its namespace as a plain node script: bind, send both Who-Is, and print
// every datagram received during each phase as a JSON line.
const CLIENT = `
const dgram = require("node:dgram");
const s = dgram.createSocket("udp4");
let phase = "local";
s.on("message", (m, r) => console.log(JSON.stringify({ phase, address: r.address, port: r.port, hex: m.toString("hex") })));
s.bind(47808, "10.231.0.2", () => {
  s.setBroadcast(true);
  // Who-Is as a local broadcast (Original-Broadcast-NPDU, no DNET) to the subnet broadcast address.
  s.send(Buffer.from("810b000801001008", "hex"), 47808, "10.231.0.255");
  setTimeout(() => {
    phase = "global";
    // Who-Is as a global broadcast (DNET 0xFFFF, hop count 255) to the limited broadcast address.
    s.send(Buffer.from("810b000c0120ffff00ff1008", "hex"), 47808, "255.255.255.255");
    setTimeout(() => { s.close(); process.exit(0); }, 1500);
  }, 1500);
});
`;

beforeAll(async () => {
  if (!canRun) return;
  cleanup();
  ip("netns", "add", NS_SIM);
  ip("netns", "add", NS_CLI);
  ip("link", "add", VETH_SIM, "type", "veth", "peer", "name", VETH_CLI);
  ip("link", "set", VETH_SIM, "netns", NS_SIM);
  ip("link", "set", VETH_CLI, "netns", NS_CLI);
  for (const a of ["10.231.0.11/24", "10.231.0.12/24", "10.231.0.13/24", "10.231.0.14/24"])
    ip("-n", NS_SIM, "addr", "add", a, "dev", VETH_SIM);
  ip("-n", NS_CLI, "addr", "add", "10.231.0.2/24", "dev", VETH_CLI);
  for (const [ns, dev] of [
    [NS_SIM, VETH_SIM],
    [NS_CLI, VETH_CLI],
  ] as const) {
    ip("-n", ns, "link", "set", dev, "up");
    ip("-n", ns, "link", "set", "lo", "up");
  }
  const child = spawn(
    "ip",
    [
      "netns",
      "exec",
      NS_SIM,
      process.execPath,
      bin,
      "simulate",
      "--devices",
      "3",
      "--first-instance",
      "8001",
      "--address",
      "10.231.0.11",
      "--router",
      "50:2",
      "--broadcast-address",
      "10.231.0.255",
      "--json",
    ],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, BACMQTT_LOG_LEVEL: "warn" } },
  );
  sim = child;
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on("data", () => {});
  child.on("error", () => {});
  // Ready once the JSON device list is printed; bounded by the hook timeout and 300 polls.
  for (let i = 0; i < 300 && !out.includes("]"); i++) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!out.includes("]")) throw new Error(`simulator did not start: ${out}`);
});

afterAll(async () => {
  if (!canRun) return;
  if (sim && sim.exitCode === null) {
    const exited = new Promise((r) => sim?.once("exit", r));
    sim.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    if (sim.exitCode === null) sim.kill("SIGKILL");
  }
  cleanup();
});

function cleanup(): void {
  for (const ns of [NS_SIM, NS_CLI]) {
    try {
      ip("netns", "del", ns);
    } catch {
      // not there
    }
  }
}

describe.skipIf(!canRun)("broadcast Who-Is inside network namespaces", () => {
  it("is answered by every device on the subnet, and by routed devices for a global broadcast", () => {
    const output = execFileSync("ip", ["netns", "exec", NS_CLI, process.execPath, "-e", CLIENT], {
      encoding: "utf8",
      timeout: 20_000,
    });
    const frames = output
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line) as { phase: string; address: string; port: number; hex: string })
      .map((l) => ({ phase: l.phase, frame: parseFrame(Buffer.from(l.hex, "hex"), l) }));
    const iAms = (phase: string) =>
      frames
        .filter((f) => f.phase === phase && f.frame.body[0] === 0x10 && f.frame.body[1] === 0x00)
        .map(({ frame }: { frame: Frame }) => ({
          instance: (appValue(decodeItems(frame.body, 2)[0] as never) as { instance: number }).instance,
          from: frame.from.address,
          snet: frame.npdu.snet ?? null,
          sadr: frame.npdu.sadr ?? null,
        }))
        .sort((a, b) => a.instance - b.instance);
    expect(iAms("local")).toEqual([
      { instance: 8001, from: "10.231.0.11", snet: null, sadr: null },
      { instance: 8002, from: "10.231.0.12", snet: null, sadr: null },
      { instance: 8003, from: "10.231.0.13", snet: null, sadr: null },
    ]);
    expect(iAms("global")).toEqual([
      { instance: 8001, from: "10.231.0.11", snet: null, sadr: null },
      { instance: 8002, from: "10.231.0.12", snet: null, sadr: null },
      { instance: 8003, from: "10.231.0.13", snet: null, sadr: null },
      { instance: 8004, from: "10.231.0.14", snet: 50, sadr: [1] },
      { instance: 8005, from: "10.231.0.14", snet: 50, sadr: [2] },
    ]);
  });
});
