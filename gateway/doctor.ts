// `bacmqtt doctor`: checks what a gateway needs on this machine and says what to do about each
// problem — the network interfaces and the one the gateway would choose, UDP 47808 (free, shared, or
// taken and by which process where the OS tells: /proc on Linux), Who-Is on each candidate
// interface (and through the BBMD when configured) with the number of I-Am answers, the broker with
// the gateway's credentials, and the api and the database when given. Exit code 1 when a check
// fails. It reads the gateway's configuration (--config, BACMQTT_GATEWAY__… variables) but changes
// nothing; BACnet traffic goes through the engine (gateway/bacnet/), never the library directly.
import { createSocket } from "node:dgram";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { defineCommand, intOption, stringOption } from "../common/cli.ts";
import { ConfigError, errorMessage } from "../common/errors.ts";
import { listInterfaces, resolveInterface } from "./bacnet/index.ts";
import type { InterfaceInfo, ResolvedInterface } from "./bacnet/interfaces.ts";
import { type GatewayConfig, loadConfig, parseHostPort, redactUrl, resolveConfig } from "./config.ts";

export type CheckStatus = "ok" | "info" | "warn" | "fail" | "skip";

export interface Check {
  id: string;
  status: CheckStatus;
  title: string;
  details: string[];
  /** What to do about it (warn/fail). */
  fix?: string;
}

export interface DoctorOptions {
  config?: string;
  interface?: string;
  port?: number;
  bbmd?: string;
  mqttUrl?: string;
  apiUrl?: string;
  databaseUrl?: string;
  timeoutS?: number;
  /** Skip the Who-Is checks (port and interface checks still run). */
  noWhoIs?: boolean;
  env?: NodeJS.ProcessEnv;
}

export interface DoctorReport {
  checks: Check[];
  ok: boolean;
}

// ---- UDP port ownership -----------------------------------------------------------------------

export interface UdpSocketEntry {
  localAddress: string;
  port: number;
  inode: number;
  family: "udp4" | "udp6";
}

export interface PortOwner {
  pid: number;
  command: string;
}

/** Parses /proc/net/udp or /proc/net/udp6 (addresses are hex, IPv4 in host byte order). */
export function parseProcNetUdp(text: string, family: "udp4" | "udp6"): UdpSocketEntry[] {
  const out: UdpSocketEntry[] = [];
  for (const line of text.split("\n").slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 10) continue;
    const [addrHex, portHex] = (cols[1] as string).split(":") as [string, string];
    const inode = Number(cols[9]);
    let localAddress: string;
    if (family === "udp4") {
      const n = Number.parseInt(addrHex, 16);
      localAddress = [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff].join(".");
    } else {
      // Four 32-bit words, each in host (little-endian) order.
      const words = (addrHex.match(/.{8}/g) ?? []).map((w) => (w.match(/../g) ?? []).reverse().join(""));
      const groups = words.join("").match(/.{4}/g) ?? [];
      localAddress = groups.map((g) => g.replace(/^0{1,3}/, "")).join(":");
      if (/^(0:){7}0$/.test(localAddress)) localAddress = "::";
    }
    out.push({ localAddress, port: Number.parseInt(portHex, 16), inode, family });
  }
  return out;
}

/** Linux: the sockets bound to `port`, each with the processes holding it (where /proc lets us see). */
export function udpPortUsers(
  port: number,
  proc = "/proc",
): { socket: UdpSocketEntry; owners: PortOwner[] }[] {
  const sockets: UdpSocketEntry[] = [];
  for (const [file, family] of [
    ["net/udp", "udp4"],
    ["net/udp6", "udp6"],
  ] as const) {
    try {
      sockets.push(
        ...parseProcNetUdp(readFileSync(`${proc}/${file}`, "utf8"), family).filter((s) => s.port === port),
      );
    } catch {
      // no IPv6, or not Linux
    }
  }
  if (sockets.length === 0) return [];
  const wanted = new Map(sockets.map((s) => [s.inode, [] as PortOwner[]]));
  let pids: string[] = [];
  try {
    pids = readdirSync(proc).filter((d) => /^\d+$/.test(d));
  } catch {
    pids = [];
  }
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = readdirSync(`${proc}/${pid}/fd`);
    } catch {
      continue; // gone, or another user's process without privileges
    }
    for (const fd of fds) {
      let link: string;
      try {
        link = readlinkSync(`${proc}/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      const m = /^socket:\[(\d+)\]$/.exec(link);
      const owners = m ? wanted.get(Number(m[1])) : undefined;
      if (!owners || owners.some((o) => o.pid === Number(pid))) continue;
      let command = "?";
      try {
        command = readFileSync(`${proc}/${pid}/cmdline`, "utf8")
          .split("\0")
          .filter(Boolean)
          .join(" ")
          .slice(0, 160);
        if (!command) command = readFileSync(`${proc}/${pid}/comm`, "utf8").trim();
      } catch {
        // raced with exit
      }
      owners.push({ pid: Number(pid), command });
    }
  }
  return sockets.map((socket) => ({ socket, owners: wanted.get(socket.inode) ?? [] }));
}

/** Tries to bind address:port, exclusively or with SO_REUSEADDR; resolves to the error code or "ok". */
function tryBind(address: string, port: number, reuseAddr: boolean): Promise<string> {
  return new Promise((resolve) => {
    const s = createSocket({ type: "udp4", reuseAddr });
    s.once("error", (err: NodeJS.ErrnoException) => {
      s.close();
      resolve(err.code ?? err.message);
    });
    s.bind({ address, port, exclusive: !reuseAddr }, () => {
      s.close();
      resolve("ok");
    });
  });
}

export type PortState = "free" | "shared" | "taken" | "unavailable";

async function checkPort(address: string, port: number): Promise<{ check: Check; state: PortState }> {
  const exclusive = await tryBind(address, port, false);
  const shared = exclusive === "ok" ? "ok" : await tryBind(address, port, true);
  const users = process.platform === "linux" ? udpPortUsers(port) : [];
  const details = users.map(({ socket, owners }) => {
    const who = owners.length
      ? owners.map((o) => `pid ${o.pid} ${o.command}`).join("; ")
      : "owner not visible (run as root/Administrator to see it)";
    return `bound ${socket.localAddress}:${socket.port} (${socket.family}) by ${who}`;
  });
  const where = `UDP ${address}:${port}`;
  const lookup =
    process.platform === "win32"
      ? `netstat -ano -p udp | findstr :${port}  (the last column is the PID; see it in Task Manager)`
      : process.platform === "linux"
        ? `run doctor as root to see the owning process`
        : `lsof -nP -iUDP:${port}`;
  if (exclusive === "ok" && users.length === 0)
    return { state: "free", check: { id: "port", status: "ok", title: `${where} is free`, details } };
  if (exclusive === "ok")
    return {
      state: "shared",
      check: {
        id: "port",
        status: "warn",
        title: `${where} is free on this address, but other sockets use port ${port}`,
        details,
        fix: "Another BACnet program on this machine may receive some broadcasts instead of the gateway; stop it if devices go missing.",
      },
    };
  if (exclusive === "EADDRINUSE" && shared === "ok")
    return {
      state: "shared",
      check: {
        id: "port",
        status: "warn",
        title: `${where} is shared: another program holds it with SO_REUSEADDR`,
        details: details.length ? details : [`find it with: ${lookup}`],
        fix: "Two BACnet programs on one port split the answers between them: stop the other one (a BACnet browser, another gateway) before starting the gateway.",
      },
    };
  if (exclusive === "EADDRINUSE")
    return {
      state: "taken",
      check: {
        id: "port",
        status: "fail",
        title: `${where} is taken by another program`,
        details: details.length ? details : [`find it with: ${lookup}`],
        fix: `Stop that program (if it is the bacmqtt gateway service, that is expected: stop the service to run these checks), or give the gateway another port with --port / bacnet.port and reach devices by --target or a BBMD.`,
      },
    };
  return {
    state: "unavailable",
    check: {
      id: "port",
      status: "fail",
      title: `${where} cannot be bound: ${exclusive}`,
      details,
      fix:
        exclusive === "EADDRNOTAVAIL"
          ? "The configured interface address is not on this machine: fix --interface / bacnet.interface (see the interface list)."
          : exclusive === "EACCES"
            ? "Ports below 1024 need privileges: use 47808."
            : "See the error; check the interface setting.",
    },
  };
}

// ---- checks -----------------------------------------------------------------------------------

function interfaceCheck(
  cfg: GatewayConfig | undefined,
  spec: string | undefined,
): {
  check: Check;
  chosen?: ResolvedInterface;
  all: InterfaceInfo[];
} {
  const all = listInterfaces();
  const details = all.map(
    (i) =>
      `${i.name.padEnd(16)} ${`${i.address}/${i.cidr}`.padEnd(20)} broadcast ${i.broadcast}${i.internal ? "  (loopback)" : ""}`,
  );
  try {
    const chosen = resolveInterface(spec, cfg?.bacnet.broadcast);
    details.push(
      `chosen: ${chosen.name ?? "(all)"} ${chosen.address}, Who-Is broadcast to ${chosen.broadcast ?? "none"}${spec ? ` (from "${spec}")` : " (the first non-loopback interface: set bacnet.interface to be sure)"}`,
    );
    const onlyLoopback = all.every((i) => i.internal);
    return {
      all,
      chosen,
      check: onlyLoopback
        ? {
            id: "interfaces",
            status: "warn",
            title: "Only loopback interfaces have an IPv4 address",
            details,
            fix: "Connect this machine to the BACnet network (or give its adapter an IPv4 address).",
          }
        : { id: "interfaces", status: "ok", title: `${all.length} IPv4 interface(s)`, details },
    };
  } catch (err) {
    return {
      all,
      check: {
        id: "interfaces",
        status: "fail",
        title: `The configured interface cannot be used: ${errorMessage(err)}`,
        details,
        fix: "Set bacnet.interface (or --interface) to one of the names or addresses listed.",
      },
    };
  }
}

async function whoIsCheck(
  label: string,
  engineOptions: Parameters<typeof import("./bacnet/index.ts").createEngine>[0],
  targets: string[],
  timeoutS: number,
): Promise<{ check: Check; found: number }> {
  const { createEngine } = await import("./bacnet/index.ts");
  const errors: string[] = [];
  let engine: Awaited<ReturnType<typeof createEngine>> | undefined;
  try {
    engine = await createEngine({ ...engineOptions, apduTimeoutMs: 1000, retries: 0 });
    engine.on("error", (err: Error) => errors.push(errorMessage(err)));
    const devices = await engine.discover({ timeoutS, targets, repeats: 2 });
    const ep = engine.endpoint();
    const details = [
      `sent from ${ep.address}:${ep.port} to ${ep.broadcast ?? "no broadcast"}${targets.length ? ` and ${targets.join(", ")}` : ""}`,
      ...devices
        .slice(0, 20)
        .map(
          (d) =>
            `device ${d.deviceInstance} at ${d.address}${d.network !== null ? ` (network ${d.network})` : ""}`,
        ),
      ...(devices.length > 20 ? [`… and ${devices.length - 20} more`] : []),
      ...errors.map((e) => `error: ${e}`),
    ];
    return {
      found: devices.length,
      check: {
        id: `whois:${label}`,
        status: devices.length ? "ok" : errors.length ? "fail" : "info",
        title: `Who-Is on ${label}: ${devices.length} I-Am answer(s)`,
        details,
        ...(errors.length
          ? { fix: "See the errors: for a BBMD check its address and that it accepts foreign devices." }
          : {}),
      },
    };
  } catch (err) {
    return {
      found: 0,
      check: {
        id: `whois:${label}`,
        status: "fail",
        title: `Who-Is on ${label} could not be sent: ${errorMessage(err)}`,
        details: errors,
        fix: "Free the port (see the port check) or fix the interface setting.",
      },
    };
  } finally {
    await engine?.stop().catch(() => undefined);
  }
}

async function brokerCheck(cfg: GatewayConfig, timeoutS: number): Promise<Check> {
  const mqtt = await import("mqtt");
  const url = cfg.mqtt.url;
  const shown = redactUrl(url);
  const tls: Record<string, unknown> = {};
  try {
    if (cfg.mqtt.ca) tls.ca = readFileSync(cfg.mqtt.ca);
    if (cfg.mqtt.cert) tls.cert = readFileSync(cfg.mqtt.cert);
    if (cfg.mqtt.key) tls.key = readFileSync(cfg.mqtt.key);
  } catch (err) {
    return {
      id: "broker",
      status: "fail",
      title: `Broker ${shown}: cannot read a TLS file: ${errorMessage(err)}`,
      details: [],
      fix: "Fix mqtt.ca / mqtt.cert / mqtt.key in the configuration.",
    };
  }
  const client = mqtt.connect(url, {
    clientId: `bacmqtt-doctor-${process.pid}`,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: timeoutS * 1000,
    protocolVersion: 4,
    rejectUnauthorized: cfg.mqtt.reject_unauthorized,
    ...(cfg.mqtt.username !== undefined ? { username: cfg.mqtt.username } : {}),
    ...(cfg.mqtt.password !== undefined ? { password: cfg.mqtt.password } : {}),
    ...tls,
  });
  const result = await new Promise<{ ok: true } | { ok: false; error: string; code?: string | number }>(
    (resolve) => {
      const timer = setTimeout(
        () => resolve({ ok: false, error: `no answer within ${timeoutS} s` }),
        timeoutS * 1000 + 500,
      );
      client.once("connect", () => {
        clearTimeout(timer);
        resolve({ ok: true });
      });
      client.once("error", (err: Error & { code?: string | number }) => {
        clearTimeout(timer);
        resolve({ ok: false, error: err.message, code: err.code });
      });
      client.once("close", () => {
        clearTimeout(timer);
        resolve({ ok: false, error: "connection closed" });
      });
    },
  );
  await client.endAsync(true).catch(() => undefined);
  const who = cfg.mqtt.username ? `as ${cfg.mqtt.username}` : "without a user name";
  if (result.ok)
    return { id: "broker", status: "ok", title: `Broker ${shown} accepts the gateway (${who})`, details: [] };
  const notAuthorized =
    result.code === 4 || result.code === 5 || /not authori[sz]ed|bad user/i.test(result.error);
  return {
    id: "broker",
    status: "fail",
    title: `Broker ${shown} (${who}): ${result.error}`,
    details: [],
    fix: notAuthorized
      ? "Wrong or missing MQTT user/password: set mqtt.username/mqtt.password (docker-compose: user GATEWAY_ID, password MQTT_GATEWAY_PASSWORD)."
      : /ECONNREFUSED|ETIMEDOUT|EHOSTUNREACH|ENOTFOUND|no answer/.test(result.error)
        ? "The broker is not reachable: check mqtt.url (host and port), that the broker runs (docker compose ps), and firewalls between here and it (TCP 1883)."
        : "Check mqtt.url and the broker's logs.",
  };
}

async function apiCheck(apiUrl: string, timeoutS: number): Promise<Check> {
  const url = new URL("/api/health", apiUrl).toString();
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutS * 1000) });
    const body = (await res.text()).slice(0, 300);
    if (res.ok)
      return {
        id: "api",
        status: "ok",
        title: `API ${url}: HTTP ${res.status}`,
        details: body ? [body] : [],
      };
    return {
      id: "api",
      status: "fail",
      title: `API ${url}: HTTP ${res.status}`,
      details: body ? [body] : [],
      fix: "The api answers but is unhealthy: see its logs (docker compose logs api).",
    };
  } catch (err) {
    return {
      id: "api",
      status: "fail",
      title: `API ${url}: ${errorMessage(err)}`,
      details: [],
      fix: "Check the URL, that the api runs (docker compose ps) and that API_PORT is reachable from here.",
    };
  }
}

async function databaseCheck(databaseUrl: string, timeoutS: number): Promise<Check> {
  const pg = (await import("pg")).default;
  let shown = "(database)";
  try {
    const u = new URL(databaseUrl);
    shown = `${u.hostname}:${u.port || 5432}${u.pathname}`;
  } catch {
    // keep the placeholder: never print the URL, it may hold a password
  }
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: timeoutS * 1000 });
  client.on("error", () => undefined);
  try {
    await client.connect();
    const { rows } = await client.query<{ migrated: boolean }>(
      "SELECT to_regclass('schema_migrations') IS NOT NULL AS migrated",
    );
    if (!rows[0]?.migrated)
      return {
        id: "database",
        status: "fail",
        title: `Database ${shown}: reachable but not migrated`,
        details: [],
        fix: "Run `bacmqtt migrate` (docker-compose runs it as the migrate service).",
      };
    const m = await client.query<{ version: number; dialect: string }>(
      "SELECT max(version) AS version, min(dialect) AS dialect FROM schema_migrations",
    );
    return {
      id: "database",
      status: "ok",
      title: `Database ${shown}: schema version ${m.rows[0]?.version}, ${m.rows[0]?.dialect} dialect`,
      details: [],
    };
  } catch (err) {
    return {
      id: "database",
      status: "fail",
      title: `Database ${shown}: ${errorMessage(err)}`,
      details: [],
      fix: "Check the URL (host, port, user, password, database) and that PostgreSQL accepts connections from here.",
    };
  } finally {
    await client.end().catch(() => undefined);
  }
}

// ---- the run ----------------------------------------------------------------------------------

export async function runDoctor(opts: DoctorOptions = {}): Promise<DoctorReport> {
  const checks: Check[] = [];
  const timeoutS = opts.timeoutS ?? 3;
  const env = opts.env ?? process.env;

  // Configuration: the gateway's own loader, with the flags given here on top.
  let cfg: GatewayConfig | undefined;
  const overrides = {
    ...(opts.mqttUrl ? { mqtt: { url: opts.mqttUrl } } : {}),
    bacnet: {
      ...(opts.interface ? { interface: opts.interface } : {}),
      ...(opts.port !== undefined ? { port: opts.port } : {}),
      ...(opts.bbmd ? { bbmd: opts.bbmd } : {}),
    },
  };
  try {
    cfg = loadConfig({ file: opts.config, env, overrides });
    checks.push({
      id: "config",
      status: "ok",
      title: opts.config ? `Configuration ${opts.config} is valid` : "No --config: defaults and environment",
      details: [`gateway_id ${cfg.gateway_id}, broker ${redactUrl(cfg.mqtt.url)}`],
    });
  } catch (err) {
    const problems = err instanceof ConfigError ? err.problems : [errorMessage(err)];
    checks.push({
      id: "config",
      status: "fail",
      title: "The gateway configuration is invalid",
      details: problems,
      fix: "Fix each problem listed; the gateway refuses to start until then. The rest uses the defaults.",
    });
    cfg = resolveConfig({});
  }

  const ifaces = interfaceCheck(cfg, cfg.bacnet.interface);
  checks.push(ifaces.check);
  const port = cfg.bacnet.port;

  let portState: PortState = "unavailable";
  if (ifaces.chosen) {
    const p = await checkPort(ifaces.chosen.address, port);
    portState = p.state;
    checks.push(p.check);
  }

  if (!opts.noWhoIs) {
    // Candidates: the chosen interface, then every other non-loopback one (devices may be there).
    const candidates: { label: string; address: string; broadcast?: string }[] = [];
    if (ifaces.chosen)
      candidates.push({
        label: `${ifaces.chosen.name ?? ifaces.chosen.address} (${ifaces.chosen.address}, chosen)`,
        address: ifaces.chosen.address,
        ...(ifaces.chosen.broadcast ? { broadcast: ifaces.chosen.broadcast } : {}),
      });
    for (const i of ifaces.all)
      if (!i.internal && i.address !== ifaces.chosen?.address)
        candidates.push({ label: `${i.name} (${i.address})`, address: i.address, broadcast: i.broadcast });
    // The real port when it is free: many devices broadcast their I-Am to 47808. Otherwise a spare
    // port, which still hears unicast answers.
    const bindPort = portState === "free" ? port : 0;
    if (bindPort === 0 && candidates.length)
      checks.push({
        id: "whois-port",
        status: "info",
        title: `Who-Is is sent from a spare port because ${port} is not free: devices that answer by broadcast to ${port} are not counted`,
        details: [],
      });
    let total = 0;
    for (const c of candidates) {
      const r = await whoIsCheck(
        c.label,
        {
          interface: c.address,
          port: bindPort,
          broadcastPort: port,
          ...(c.broadcast ? { broadcast: c.broadcast } : {}),
        },
        cfg.discovery.targets,
        timeoutS,
      );
      total += r.found;
      checks.push(r.check);
    }
    if (cfg.bacnet.bbmd && ifaces.chosen) {
      const b = parseHostPort(cfg.bacnet.bbmd);
      if (b) {
        const r = await whoIsCheck(
          `BBMD ${cfg.bacnet.bbmd}`,
          {
            interface: ifaces.chosen.address,
            port: 0,
            broadcastPort: port,
            broadcast: "",
            bbmd: { address: b.host, port: b.port, ttlSeconds: cfg.bacnet.bbmd_ttl_s },
          },
          [],
          timeoutS,
        );
        total += r.found;
        checks.push(r.check);
      }
    }
    if (candidates.length)
      checks.push(
        total > 0
          ? { id: "devices", status: "ok", title: `${total} device answer(s) in all`, details: [] }
          : {
              id: "devices",
              status: "fail",
              title: "No BACnet device answered on any interface",
              details: [],
              fix: "Check that this machine is on the BACnet network (same subnet as the devices or their router), that the firewall lets UDP 47808 in (Windows: install.ps1 adds the rule), and for other subnets add discovery.targets or a BBMD.",
            },
      );
    else checks.push({ id: "devices", status: "skip", title: "No interface to send Who-Is on", details: [] });
  }

  checks.push(await brokerCheck(cfg, timeoutS));
  const apiUrl = opts.apiUrl;
  if (apiUrl) checks.push(await apiCheck(apiUrl, timeoutS));
  else checks.push({ id: "api", status: "skip", title: "API not checked (give --api-url)", details: [] });
  const dbUrl = opts.databaseUrl;
  if (dbUrl) checks.push(await databaseCheck(dbUrl, timeoutS));
  else
    checks.push({
      id: "database",
      status: "skip",
      title: "Database not checked (give --database-url)",
      details: [],
    });

  return { checks, ok: !checks.some((c) => c.status === "fail") };
}

const MARK: Record<CheckStatus, string> = {
  ok: "[ ok ]",
  info: "[info]",
  warn: "[warn]",
  fail: "[FAIL]",
  skip: "[skip]",
};

export function formatReport(report: DoctorReport): string {
  const lines: string[] = [];
  for (const c of report.checks) {
    lines.push(`${MARK[c.status]} ${c.title}`);
    for (const d of c.details) lines.push(`       ${d}`);
    if (c.fix && (c.status === "fail" || c.status === "warn")) lines.push(`       → ${c.fix}`);
  }
  const failed = report.checks.filter((c) => c.status === "fail").length;
  const warned = report.checks.filter((c) => c.status === "warn").length;
  lines.push(
    "",
    failed
      ? `${failed} problem(s), ${warned} warning(s).`
      : `No problems${warned ? `, ${warned} warning(s)` : ""}.`,
  );
  return `${lines.join("\n")}\n`;
}

export const doctorCommand = defineCommand({
  name: "doctor",
  summary: "Check the network, UDP 47808, BACnet devices, the broker, the api and the database",
  description: `
Lists the network interfaces and the one the gateway would use, checks UDP 47808 (free, shared
with another program, or taken — naming the process where the OS tells), sends Who-Is on each
candidate interface (and through the BBMD when configured) and counts the I-Am answers, connects to
the broker as the gateway would, and checks the api and the database when their URLs are given.
Prints what to do for each problem; exits 1 when a check fails. Reads the gateway's configuration
(--config and BACMQTT_GATEWAY__… variables); changes nothing. Stop a running gateway first: it
holds UDP 47808.`,
  options: {
    config: { type: "string", description: "Gateway YAML configuration file", value: "FILE" },
    interface: {
      type: "string",
      description: "Interface name or local IPv4 (overrides the config)",
      value: "NAME|IP",
    },
    port: { type: "string", description: "BACnet UDP port (default: the config's, 47808)", value: "N" },
    bbmd: {
      type: "string",
      description: "Also discover through this BBMD (overrides the config)",
      value: "IP:PORT",
    },
    "mqtt-url": { type: "string", description: "Broker URL (overrides the config)", value: "URL" },
    "api-url": { type: "string", description: "Check this api too, e.g. http://server:8080", value: "URL" },
    "database-url": {
      type: "string",
      env: "DATABASE_URL",
      description: "Check this database too (reachable, migrated)",
      value: "URL",
    },
    timeout: {
      type: "string",
      description: "Seconds to wait for I-Am answers and connections",
      default: "3",
      value: "S",
    },
    "no-whois": { type: "boolean", description: "Skip sending Who-Is" },
    json: { type: "boolean", description: "Print the report as JSON" },
  },
  examples: [
    "bacmqtt doctor --config /etc/bacmqtt/gateway.yaml",
    "bacmqtt doctor --interface eth0 --mqtt-url mqtt://192.0.2.20:1883 --api-url http://192.0.2.20:8080",
  ],
  async run({ values }) {
    const problems: string[] = [];
    const port = intOption(values, "port", problems, { min: 0, max: 65535 });
    const timeout = intOption(values, "timeout", problems, { min: 1, max: 600 });
    if (problems.length) throw new ConfigError(problems);
    // The engine logs through the process's root logger; the report is the output here.
    if (!process.env.BACMQTT_LOG_LEVEL) process.env.BACMQTT_LOG_LEVEL = "error";
    const report = await runDoctor({
      config: stringOption(values, "config"),
      interface: stringOption(values, "interface"),
      port,
      bbmd: stringOption(values, "bbmd"),
      mqttUrl: stringOption(values, "mqtt-url"),
      apiUrl: stringOption(values, "api-url"),
      databaseUrl: stringOption(values, "database-url"),
      timeoutS: timeout ?? 3,
      noWhoIs: values["no-whois"] === true,
    });
    process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
    return report.ok ? 0 : 1;
  },
});
