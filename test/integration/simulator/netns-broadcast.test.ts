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
const sims: ChildProcess[] = [];

// The client runs inside its namespace as a plain node script: bind, send both Who-Is, and print
// every datagram received during each phase as a JSON line.
const CLIENT = `
const dgram = require("node:dgram");
const s = dgram.createSocket("udp4");
// A second socket hears broadcasts (a socket bound to the unicast address never does on Linux).
const b = dgram.createSocket({ type: "udp4", reuseAddr: true });
let phase = "local";
const print = (via) => (m, r) => console.log(JSON.stringify({ phase, via, address: r.address, port: r.port, hex: m.toString("hex") }));
s.on("message", print("unicast"));
b.on("message", print("broadcast"));
b.bind(47808, "10.231.0.255");
s.bind(47808, "10.231.0.2", () => {
  s.setBroadcast(true);
  // Who-Is as a local broadcast (Original-Broadcast-NPDU, no DNET) to the subnet broadcast address.
  s.send(Buffer.from("810b000801001008", "hex"), 47808, "10.231.0.255");
  setTimeout(() => {
    phase = "global";
    // Who-Is as a global broadcast (DNET 0xFFFF, hop count 255) to the limited broadcast address.
    s.send(Buffer.from("810b000c0120ffff00ff1008", "hex"), 47808, "255.255.255.255");
    setTimeout(() => { s.close(); b.close(); process.exit(0); }, 2500);
  }, 2500);
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
  for (const a of [
    "10.231.0.11/24",
    "10.231.0.12/24",
    "10.231.0.13/24",
    "10.231.0.14/24",
    "10.231.0.15/24",
    "10.231.0.16/24",
  ])
    ip("-n", NS_SIM, "addr", "add", a, "dev", VETH_SIM);
  ip("-n", NS_CLI, "addr", "add", "10.231.0.2/24", "dev", VETH_CLI);
  for (const [ns, dev] of [
    [NS_SIM, VETH_SIM],
    [NS_CLI, VETH_CLI],
  ] as const) {
    ip("-n", ns, "link", "set", dev, "up");
    ip("-n", ns, "link", "set", "lo", "up");
  }
  // One simulator answers I-Am by unicast (the default), the other broadcasts its I-Ams.
  await startSim([
    "--devices",
    "3",
    "--first-instance",
    "8001",
    "--address",
    "10.231.0.11",
    "--router",
    "50:2",
  ]);
  await startSim([
    "--devices",
    "1",
    "--first-instance",
    "8101",
    "--address",
    "10.231.0.15",
    "--router",
    "60:1",
    "--i-am-broadcast",
  ]);
});

async function startSim(args: string[]): Promise<void> {
  const child = spawn(
    "ip",
    [
      "netns",
      "exec",
      NS_SIM,
      process.execPath,
      bin,
      "simulate",
      ...args,
      "--broadcast-address",
      "10.231.0.255",
      "--json",
    ],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, BACMQTT_LOG_LEVEL: "warn" } },
  );
  sims.push(child);
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
}

afterAll(async () => {
  if (!canRun) return;
  for (const sim of sims) {
    if (sim.exitCode !== null) continue;
    const exited = new Promise((r) => sim.once("exit", r));
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
  it("is answered by every device on the subnet, by routed devices for a global broadcast, and by broadcast I-Ams where configured", () => {
    const output = execFileSync("ip", ["netns", "exec", NS_CLI, process.execPath, "-e", CLIENT], {
      encoding: "utf8",
      timeout: 20_000,
    });
    const frames = output
      .split("\n")
      .filter(Boolean)
      .map(
        (line) =>
          JSON.parse(line) as { phase: string; via: string; address: string; port: number; hex: string },
      )
      .map((l) => ({ phase: l.phase, via: l.via, frame: parseFrame(Buffer.from(l.hex, "hex"), l) }));
    const iAms = (phase: string, via: string) =>
      frames
        .filter(
          (f) => f.phase === phase && f.via === via && f.frame.body[0] === 0x10 && f.frame.body[1] === 0x00,
        )
        .map(({ frame }: { frame: Frame }) => ({
          instance: (appValue(decodeItems(frame.body, 2)[0] as never) as { instance: number }).instance,
          from: frame.from.address,
          bvlc: frame.bvlc,
          dnet: frame.npdu.dnet ?? null,
          snet: frame.npdu.snet ?? null,
          sadr: frame.npdu.sadr ?? null,
        }))
        .sort((a, b) => a.instance - b.instance);
    const plain = (instance: number, from: string) => ({
      instance,
      from,
      bvlc: 0x0a,
      dnet: null,
      snet: null,
      sadr: null,
    });
    expect(iAms("local", "unicast")).toEqual([
      plain(8001, "10.231.0.11"),
      plain(8002, "10.231.0.12"),
      plain(8003, "10.231.0.13"),
    ]);
    expect(iAms("global", "unicast")).toEqual([
      plain(8001, "10.231.0.11"),
      plain(8002, "10.231.0.12"),
      plain(8003, "10.231.0.13"),
      { instance: 8004, from: "10.231.0.14", bvlc: 0x0a, dnet: null, snet: 50, sadr: [1] },
      { instance: 8005, from: "10.231.0.14", bvlc: 0x0a, dnet: null, snet: 50, sadr: [2] },
    ]);
    // The broadcasting simulator's I-Ams arrive as Original-Broadcast-NPDUs; the routed one as a
    // global broadcast from its router, with SNET/SADR.
    expect(iAms("local", "broadcast")).toEqual([{ ...plain(8101, "10.231.0.15"), bvlc: 0x0b }]);
    expect(iAms("global", "broadcast")).toEqual([
      { ...plain(8101, "10.231.0.15"), bvlc: 0x0b },
      { instance: 8102, from: "10.231.0.16", bvlc: 0x0b, dnet: 0xffff, snet: 60, sadr: [1] },
    ]);
  });
});
