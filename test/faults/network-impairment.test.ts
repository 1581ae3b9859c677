// 10% packet loss and 200 ms delay on the BACnet network: a bridge in its own network namespace,
// the real gateway process in one namespace, three `bacmqtt simulate` processes (3 devices × 10
// analog values each) in three more, a private subnet (10.236.0.0/24) that exists only inside these
// namespaces. Discovery is by broadcast Who-Is only. The impairment is `tc netem` on the veths where
// the kernel has sch_netem (gateway egress: delay 200 ms loss 10%; every device egress: loss 10%);
// where it has not, kernel-level random loss with the iptables-legacy `statistic` match (10% of the
// UDP datagrams in, 10% out, on the gateway namespace's eth0) and the 200 ms delay from the
// simulator's own `--latency` (added to every datagram a device sends). Either way both requests and
// replies are lost and the round trip grows by 200 ms. The FAULT_ROW says which mode ran.
// Then one device namespace's link goes down: its devices go offline, the others do not, and they
// come back when the link is up again, all under the same impairment. Produced = readings seen by a
// subscriber on the broker; stored = rows in a fresh database; lost must be 0.
// The gateway namespace reaches the host's loopback broker through a Unix-domain socket (shared
// across network namespaces by the filesystem): a relay on 127.0.0.1:1883 inside the namespace →
// mqtt.sock → a server in this process → the broker on 127.0.0.1:<port>.
// Needs root and iproute2; everything created is removed in afterAll, also on failure.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, expect, it } from "vitest";
import { stringify } from "yaml";
import { Recorder, tempDir } from "../integration/gateway/helpers.ts";
import { createPortableDatabase, type TestDatabase } from "../support/db-postgres.ts";
import { startBrokerAndIngest } from "./gateway-process.ts";
import { report, sleep } from "./support.ts";

const BIN = fileURLToPath(new URL("../../bin/bacmqtt.mjs", import.meta.url));
const GW = "faults-netimp";
const tag = `${process.pid % 100000}`;
const NS_BR = `bqni-br-${tag}`;
const NS_GW = `bqni-gw-${tag}`;
const NS_DEV = [1, 2, 3].map((i) => `bqni-d${i}-${tag}`);
const SUBNET = "10.236.0";
const DEVICES_PER_NS = 3;
const FIRST_INSTANCE = 2_360_001;
const POLL_S = 2;
const WINDOW_S = 45;
const LOSS = 0.1;
const DELAY_MS = 200;

const instancesOf = (nsIndex: number) =>
  Array.from({ length: DEVICES_PER_NS }, (_, k) => FIRST_INSTANCE + nsIndex * 10 + k);
const ALL = NS_DEV.flatMap((_, i) => instancesOf(i));

const skipReason = (() => {
  if (process.platform !== "linux") return "not Linux";
  if (process.getuid?.() !== 0) return "not root";
  try {
    execFileSync("ip", ["-V"], { stdio: "ignore" });
  } catch {
    return "`ip` (iproute2) missing";
  }
  return undefined;
})();
if (skipReason) process.stderr.write(`network-impairment: skipped (${skipReason})\n`);

const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "pipe", "pipe"] });
const inNs = (ns: string, cmd: string, ...args: string[]) =>
  execFileSync("ip", ["netns", "exec", ns, cmd, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    encoding: "utf8",
    timeout: 20_000,
  });

const tmp = tempDir("bacmqtt-netimp-");
const children: ChildProcess[] = [];
const closers: (() => Promise<unknown>)[] = [];

function removeNamespaces(): void {
  for (const ns of [NS_GW, ...NS_DEV, NS_BR]) {
    try {
      ip("netns", "del", ns);
    } catch {
      // not created
    }
  }
}

function exited(c: ChildProcess, ms: number): Promise<void> {
  return new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve();
    const t = setTimeout(resolve, ms);
    c.once("exit", () => {
      clearTimeout(t);
      resolve();
    });
  });
}

async function stop(c: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  c.kill(signal);
  await exited(c, 10_000);
  if (c.exitCode === null && c.signalCode === null) {
    c.kill("SIGKILL");
    await exited(c, 5000);
  }
}

afterAll(async () => {
  for (const c of children) await stop(c).catch(() => undefined);
  for (const c of closers.reverse()) await c().catch(() => undefined);
  removeNamespaces();
  tmp.remove();
}, 60_000);

/** Spawns a process inside a namespace; resolves once its stdout contains `ready` (bounded). */
async function spawnIn(ns: string, args: string[], ready: string, what: string): Promise<ChildProcess> {
  const child = spawn("ip", ["netns", "exec", ns, process.execPath, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, BACMQTT_LOG_LEVEL: "warn" },
  });
  children.push(child);
  let out = "";
  let err = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-4000);
  });
  child.on("error", () => undefined);
  for (let i = 0; i < 600 && !out.includes(ready); i++) {
    if (child.exitCode !== null) break;
    await sleep(100);
  }
  if (!out.includes(ready)) throw new Error(`${what} did not start: ${out} ${err}`);
  return child;
}

/** Builds the LAN: bridge namespace, one veth per host namespace, addresses, links up. */
function buildNetwork(): void {
  ip("netns", "add", NS_BR);
  ip("-n", NS_BR, "link", "add", "br0", "type", "bridge");
  ip("-n", NS_BR, "link", "set", "br0", "up");
  const hosts: [string, string[]][] = [
    [NS_GW, [`${SUBNET}.1`]],
    ...NS_DEV.map((ns, i): [string, string[]] => [
      ns,
      Array.from({ length: DEVICES_PER_NS }, (_, k) => `${SUBNET}.${10 * (i + 1) + k + 1}`),
    ]),
  ];
  hosts.forEach(([ns, addrs], i) => {
    ip("netns", "add", ns);
    ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", `p${i}`);
    ip("-n", ns, "link", "set", `p${i}`, "netns", NS_BR);
    ip("-n", NS_BR, "link", "set", `p${i}`, "master", "br0");
    ip("-n", NS_BR, "link", "set", `p${i}`, "up");
    for (const a of addrs) ip("-n", ns, "addr", "add", `${a}/24`, "dev", "eth0");
    ip("-n", ns, "link", "set", "eth0", "up");
    ip("-n", ns, "link", "set", "lo", "up");
  });
}

type Mode = "netem" | "iptables-statistic+simulator-latency";

/** netem where the kernel has it; otherwise iptables-legacy random drop (the delay is the simulator's). */
function impair(): { mode: Mode; detail: string; netemError?: string } {
  try {
    inNs(
      NS_GW,
      "tc",
      "qdisc",
      "add",
      "dev",
      "eth0",
      "root",
      "netem",
      "delay",
      `${DELAY_MS}ms`,
      "loss",
      "10%",
    );
    for (const ns of NS_DEV) inNs(ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "loss", "10%");
    return {
      mode: "netem",
      detail: "tc netem: gateway veth egress delay 200ms loss 10%, each device veth egress loss 10%",
    };
  } catch (err) {
    for (const ns of [NS_GW, ...NS_DEV]) {
      try {
        inNs(ns, "tc", "qdisc", "del", "dev", "eth0", "root");
      } catch {
        // none added
      }
    }
    const netemError = ((err as { stderr?: string }).stderr ?? String(err)).trim();
    for (const [chain, dir] of [
      ["INPUT", "-i"],
      ["OUTPUT", "-o"],
    ] as const) {
      // A counting rule (no target) first, so the drop rate can be measured against the total.
      inNs(NS_GW, "iptables-legacy", "-A", chain, dir, "eth0", "-p", "udp");
      inNs(
        NS_GW,
        "iptables-legacy",
        ...["-A", chain, dir, "eth0", "-p", "udp", "-m", "statistic", "--mode", "random"],
        ...["--probability", String(LOSS), "-j", "DROP"],
      );
    }
    return {
      mode: "iptables-statistic+simulator-latency",
      detail:
        "iptables-legacy statistic DROP 10% of UDP on the gateway namespace's eth0, INPUT and OUTPUT; simulator --latency 200 on every datagram a device sends",
      netemError,
    };
  }
}

/** Datagrams the kernel dropped on purpose, and how many it saw, since the impairment started. */
function kernelDrops(mode: Mode): { dropped: number; total: number } {
  if (mode === "netem") {
    let dropped = 0;
    let total = 0;
    for (const ns of [NS_GW, ...NS_DEV]) {
      const text = inNs(ns, "tc", "-s", "qdisc", "show", "dev", "eth0");
      const m = /Sent \d+ bytes (\d+) pkt \(dropped (\d+)/.exec(text);
      if (m) {
        total += Number(m[1]) + Number(m[2]);
        dropped += Number(m[2]);
      }
    }
    return { dropped, total };
  }
  let dropped = 0;
  let total = 0;
  for (const chain of ["INPUT", "OUTPUT"]) {
    const rows = inNs(NS_GW, "iptables-legacy", "-L", chain, "-v", "-x", "-n")
      .split("\n")
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => /^\d+$/.test(f[0] ?? ""));
    for (const f of rows) {
      if (f[2] === "DROP") dropped += Number(f[0]);
      else total += Number(f[0]);
    }
  }
  return { dropped, total };
}

/** Scrapes the gateway's Prometheus metrics inside its namespace. */
function gatewayMetrics(): Record<string, number> {
  const text = inNs(
    NS_GW,
    process.execPath,
    "-e",
    "fetch('http://127.0.0.1:9464/metrics').then(r=>r.text()).then(t=>process.stdout.write(t))",
  );
  const out: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const m = /^(bacmqtt_gateway_[a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m) out[m[1] as string] = Number(m[2]);
  }
  return out;
}

/** Unix socket → broker, in this process: the gateway namespace's only way to the host loopback. */
async function unixBridge(sock: string, brokerPort: number): Promise<() => Promise<void>> {
  const conns = new Set<net.Socket>();
  const server = net.createServer((c) => {
    const u = net.connect(brokerPort, "127.0.0.1");
    conns.add(c).add(u);
    const end = () => {
      c.destroy();
      u.destroy();
      conns.delete(c);
      conns.delete(u);
    };
    c.on("error", end).on("close", end);
    u.on("error", end).on("close", end);
    c.pipe(u).pipe(c);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(sock, () => resolve());
  });
  return async () => {
    for (const s of conns) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  };
}

const RELAY = `
const net = require("node:net");
const sock = process.argv[1];
net.createServer((c) => {
  const u = net.connect(sock);
  c.on("error", () => u.destroy()); u.on("error", () => c.destroy());
  c.on("close", () => u.destroy()); u.on("close", () => c.destroy());
  c.pipe(u).pipe(c);
}).listen(1883, "127.0.0.1", () => console.log("relay ready"));
`;

interface Readings {
  device: number;
  readings: { point: string; ts: string; error?: unknown }[];
}

it.skipIf(skipReason !== undefined)(
  "10% loss and 200 ms delay: every device found, polled with retries, never offline; a cut link goes offline and back; nothing lost",
  { timeout: 480_000 },
  async () => {
    const started = Date.now();
    removeNamespaces();
    buildNetwork();
    const imp = impair();
    process.stdout.write(
      `network-impairment: mode ${imp.mode}${imp.netemError ? ` (netem: ${imp.netemError})` : ""}\n`,
    );

    for (const [i, ns] of NS_DEV.entries()) {
      await spawnIn(
        ns,
        [
          BIN,
          "simulate",
          ...["--devices", String(DEVICES_PER_NS), "--first-instance", String(instancesOf(i)[0])],
          ...["--address", `${SUBNET}.${10 * (i + 1) + 1}`, "--port", "47808"],
          ...["--objects", "analog_value=10", "--no-cov", "--change-interval", "0"],
          ...["--broadcast-address", `${SUBNET}.255`, "--json"],
          ...(imp.mode === "netem" ? [] : ["--latency", String(DELAY_MS)]),
        ],
        "]",
        `simulator in ${ns}`,
      );
    }

    const db: TestDatabase = await createPortableDatabase("bacmqtt_faults_netimp");
    closers.push(() => db.drop());
    const pool = new pg.Pool({ connectionString: db.url, max: 2 });
    closers.push(() => pool.end());
    const { broker } = await startBrokerAndIngest(db.url, "ingest-faults-netimp", closers);
    const rec = await Recorder.connect(broker.url, `bacmqtt/${GW}/#`);
    closers.push(() => rec.close());

    const sock = path.join(tmp.dir, "mqtt.sock");
    closers.push(await unixBridge(sock, Number(new URL(broker.url).port)));
    await spawnIn(NS_GW, ["-e", RELAY, sock], "relay ready", "MQTT relay in the gateway namespace");

    const config = path.join(tmp.dir, "gateway.yaml");
    writeFileSync(
      config,
      stringify({
        gateway_id: GW,
        data_dir: path.join(tmp.dir, "data"),
        mqtt: { url: "mqtt://127.0.0.1:1883", reconnect_period_ms: 200 },
        bacnet: { interface: "eth0", port: 47808, apdu_timeout_ms: 1500, retries: 2 },
        discovery: { timeout_s: 3, interval_s: 20 },
        polling: { interval_s: POLL_S, cov: false },
        buffer: { fsync: "never" },
        metrics: { enabled: true, host: "127.0.0.1", port: 9464 },
      }),
    );
    const gateway = spawn(
      "ip",
      ["netns", "exec", NS_GW, process.execPath, BIN, "gateway", "--config", config],
      {
        stdio: ["ignore", "ignore", "pipe"],
        env: { ...process.env, BACMQTT_LOG_LEVEL: "warn" },
      },
    );
    children.push(gateway);
    let gwLog = "";
    gateway.stderr?.on("data", (d: Buffer) => {
      gwLog = (gwLog + d.toString()).slice(-20_000);
    });
    gateway.on("error", () => undefined);

    const topicOf = (device: number, name: string) => `bacmqtt/${GW}/${device}/${name}`;
    const states = (device: number) =>
      rec.json(topicOf(device, "availability")).map((x) => (x as { state: string }).state);
    const readingsMsgs = (device: number) => rec.json(topicOf(device, "readings")) as Readings[];
    const events = () =>
      rec.json(`bacmqtt/${GW}/bridge/event`) as {
        type: string;
        timestamp: string;
        data: Record<string, unknown>;
      }[];

    // Discovery by broadcast under loss: every device, found by one scan or a later one.
    try {
      await rec.waitFor(() => ALL.every((d) => readingsMsgs(d).length > 0), "every device polled", 150_000);
    } catch (err) {
      const seen = ALL.filter((d) => readingsMsgs(d).length > 0);
      throw new Error(
        `${(err as Error).message}; polled: ${seen.join(",")}; gateway log: ${gwLog.slice(-3000)}`,
      );
    }
    const discoveredAfterS = Math.round((Date.now() - started) / 1000);
    // Scans started up to the last device's first discovery (a later scan found the stragglers).
    const firstSeen = new Map<number, number>();
    for (const e of events())
      if (e.type === "device_discovered" && !firstSeen.has(Number(e.data.device)))
        firstSeen.set(Number(e.data.device), Date.parse(e.timestamp));
    const lastFound = Math.max(...ALL.map((d) => firstSeen.get(d) ?? Number.NaN));
    const scansUntilAllFound = events().filter(
      (e) => e.type === "scan_started" && Date.parse(e.timestamp) <= lastFound,
    ).length;

    // Steady window: count poll cycles (readings messages) per device, watch availability.
    const m0 = gatewayMetrics();
    const d0 = kernelDrops(imp.mode);
    const cycles0 = new Map(ALL.map((d) => [d, readingsMsgs(d).length]));
    const states0 = new Map(ALL.map((d) => [d, states(d).length]));
    const windowStart = Date.now();
    await sleep(WINDOW_S * 1000);
    const windowS = (Date.now() - windowStart) / 1000;
    const m1 = gatewayMetrics();
    const d1 = kernelDrops(imp.mode);
    const cyclesPerDevice = ALL.map((d) => readingsMsgs(d).length - (cycles0.get(d) ?? 0));
    const availabilityChangesInWindow = ALL.map((d) => states(d).slice(states0.get(d) ?? 0));
    const metric = (m: Record<string, number>, name: string) => m[name] ?? 0;
    const retries =
      metric(m1, "bacmqtt_gateway_bacnet_retries_total") - metric(m0, "bacmqtt_gateway_bacnet_retries_total");
    const timeouts =
      metric(m1, "bacmqtt_gateway_bacnet_timeouts_total") -
      metric(m0, "bacmqtt_gateway_bacnet_timeouts_total");
    const overruns =
      metric(m1, "bacmqtt_gateway_poll_overruns_total") - metric(m0, "bacmqtt_gateway_poll_overruns_total");

    // Link down on the third device namespace, under the same impairment.
    const cutNs = NS_DEV[2] as string;
    const cut = instancesOf(2);
    const kept = ALL.filter((d) => !cut.includes(d));
    const keptStates0 = new Map(kept.map((d) => [d, states(d).length]));
    const cutAt = Date.now();
    ip("-n", cutNs, "link", "set", "eth0", "down");
    await rec.waitFor(() => cut.every((d) => states(d).at(-1) === "offline"), "cut devices offline", 120_000);
    const offlineAfterS = Math.round((Date.now() - cutAt) / 1000);
    const keptCycles0 = new Map(kept.map((d) => [d, readingsMsgs(d).length]));
    await sleep(5000);
    ip("-n", cutNs, "link", "set", "eth0", "up");
    const upAt = Date.now();
    await rec.waitFor(
      () => cut.every((d) => states(d).at(-1) === "online"),
      "cut devices online again",
      180_000,
    );
    const onlineAfterS = Math.round((Date.now() - upAt) / 1000);
    const cutCycles0 = new Map(cut.map((d) => [d, readingsMsgs(d).length]));
    await rec.waitFor(
      () => cut.every((d) => readingsMsgs(d).length > (cutCycles0.get(d) ?? 0)),
      "cut devices polled again",
      60_000,
    );
    const keptPolledDuringCut = kept.map((d) => readingsMsgs(d).length - (keptCycles0.get(d) ?? 0));
    const keptChangesDuringCut = kept.map((d) => states(d).slice(keptStates0.get(d) ?? 0));
    const mEnd = gatewayMetrics();
    const dEnd = kernelDrops(imp.mode);
    // Before the stop: a stopping gateway may announce its devices offline.
    const availabilityCut = cut.map(states);
    const availabilityKept = kept.map(states);
    const gatewayExitedEarly = gateway.exitCode !== null || gateway.signalCode !== null;

    await stop(gateway);
    await sleep(500); // the subscriber's last deliveries
    const produced = new Set<string>();
    let errored = 0;
    for (const d of ALL)
      for (const p of readingsMsgs(d))
        for (const r of p.readings) {
          if (r.error !== undefined) errored++;
          else produced.add(`${p.device}/${r.point}@${new Date(r.ts).toISOString()}`);
        }
    let stored = new Set<string>();
    for (let i = 0; i < 600; i++) {
      const { rows } = await pool.query<{ device_instance: number; point: string; time: Date }>(
        "SELECT p.device_instance, p.point, r.time FROM readings r JOIN points p USING (point_id) WHERE p.gateway_id = $1",
        [GW],
      );
      stored = new Set(rows.map((r) => `${Number(r.device_instance)}/${r.point}@${r.time.toISOString()}`));
      if ([...produced].every((k) => stored.has(k))) break;
      await sleep(100);
    }
    const lost = [...produced].filter((k) => !stored.has(k));
    const expectedCycles = windowS / POLL_S;
    report("10% loss + 200 ms delay on the BACnet network", {
      impairment_mode: imp.mode,
      impairment: imp.detail,
      ...(imp.netemError ? { netem_unavailable: imp.netemError } : {}),
      devices: ALL.length,
      all_devices_polled_after_s: discoveredAfterS,
      scans_until_all_found: scansUntilAllFound,
      window_s: Math.round(windowS),
      poll_cycles_per_device: cyclesPerDevice,
      poll_cycles_expected_per_device: Math.round(expectedCycles * 10) / 10,
      poll_cycles_completed_ratio: Math.round((Math.min(...cyclesPerDevice) / expectedCycles) * 100) / 100,
      window_retries: retries,
      window_timeouts_after_all_retries: timeouts,
      window_poll_overruns: overruns,
      window_kernel_dropped: d1.dropped - d0.dropped,
      window_kernel_datagrams: d1.total - d0.total,
      availability_changes_in_window: availabilityChangesInWindow.flat().length,
      link_down_offline_after_s: offlineAfterS,
      link_up_online_after_s: onlineAfterS,
      kept_devices_polls_during_cut: keptPolledDuringCut,
      availability_cut: availabilityCut,
      availability_kept: availabilityKept,
      total_retries: metric(mEnd, "bacmqtt_gateway_bacnet_retries_total"),
      total_timeouts: metric(mEnd, "bacmqtt_gateway_bacnet_timeouts_total"),
      total_kernel_dropped: dEnd.dropped,
      total_kernel_datagrams: dEnd.total,
      produced: produced.size,
      stored: stored.size,
      lost: lost.length,
      errored,
      gateway_exited_early: gatewayExitedEarly,
      lostSample: lost.slice(0, 5),
      duration_s: Math.round((Date.now() - started) / 1000),
    });

    expect(gatewayExitedEarly, gwLog.slice(-3000)).toBe(false);
    // The impairment really happened and was recovered from by retries.
    expect(d1.dropped - d0.dropped).toBeGreaterThan(0);
    expect(retries).toBeGreaterThan(0);
    // Polling completed on every device through the window, and no device was declared offline.
    for (const n of cyclesPerDevice) expect(n).toBeGreaterThan(0);
    expect(availabilityChangesInWindow).toEqual(ALL.map(() => []));
    // The cut namespace's devices went offline and came back; the others never flapped.
    expect(availabilityCut).toEqual(cut.map(() => ["online", "offline", "online"]));
    expect(availabilityKept).toEqual(kept.map(() => ["online"]));
    expect(keptChangesDuringCut).toEqual(kept.map(() => []));
    for (const n of keptPolledDuringCut) expect(n).toBeGreaterThan(0);
    expect(lost).toEqual([]);
  },
);
