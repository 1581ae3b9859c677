// The broker as users run it (`bacmqtt broker`) SIGKILLed mid-stream and started again on the same
// port, with the real gateway process polling and the ingest running. A graceful close
// (broker-restart) lets aedes finish what it started; a SIGKILL does not, so this asks the harder
// question: is anything the broker acknowledged (PUBACK) lost?
//
// Produced here = readings in PUBLISH packets the broker answered with a PUBACK, read off the wire
// by a relay between gateway and broker that parses MQTT both ways (the gateway is another process,
// and a subscriber would share the broker's fate). The gateway publishes about 3 messages a second,
// so the window between a PUBACK and the broker's write to its persistence is rarely open at the
// kill; a second publisher ("burst", MQTT.js in this process, QoS 1, valid readings for another
// gateway id) keeps a few hundred messages a second in flight so that window is measured too.
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import mqttPacket, { type Packet } from "mqtt-packet";
import pg from "pg";
import { afterEach, expect, it } from "vitest";
import { IngestService } from "../../ingest/service.ts";
import { startSimulator } from "../../simulator/index.ts";
import { tempDir } from "../integration/gateway/helpers.ts";
import { createPortableDatabase } from "../support/db-postgres.ts";
import { dropRedisKeys, REDIS_URL, redisUp } from "./broker-redis.ts";
import { GatewayProcess, readingKey, writeGatewayConfig } from "./gateway-process.ts";
import { eventually, report, sleep } from "./support.ts";

const BIN = fileURLToPath(new URL("../../bin/bacmqtt.mjs", import.meta.url));
const DOWN_S = 3;

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

const exited = (c: ChildProcess) =>
  new Promise<void>((resolve) =>
    c.exitCode !== null || c.signalCode !== null ? resolve() : c.once("exit", () => resolve()),
  );

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", () => resolve()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** `bacmqtt broker` on a fixed port; `start()` resolves once it accepts TCP connections. */
class BrokerProcess {
  child: ChildProcess | undefined;
  stderr = "";
  constructor(
    readonly port: number,
    readonly redis?: { url: string; prefix: string },
  ) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const args = [BIN, "broker", "--port", String(this.port), "--host", "127.0.0.1", "--allow-anonymous"];
    args.push("--ws-port", "off", "--metrics-port", "off", "--sys-interval", "0", "--rate-limit", "0");
    if (this.redis) args.push("--redis-url", this.redis.url, "--redis-prefix", this.redis.prefix);
    const c = spawn(process.execPath, args, {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, BACMQTT_LOG_LEVEL: "warn" },
    });
    c.stderr?.on("data", (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-4000);
    });
    this.child = c;
    await eventually(
      async () => {
        if (c.exitCode !== null) throw new Error(`broker exited ${c.exitCode}: ${this.stderr}`);
        return new Promise<boolean>((resolve) => {
          const s = net.connect(this.port, "127.0.0.1");
          s.once("connect", () => s.end(() => resolve(true)));
          s.once("error", () => resolve(false));
        });
      },
      "broker process listening",
      300,
    );
  }

  async kill(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill("SIGKILL");
    await exited(c);
  }
}

/**
 * A TCP relay to Redis that holds every chunk `delayMs` in each direction (order kept): Redis on
 * another host, or a busy one. It widens the time between the broker's PUBACK and the end of its
 * persistence writes without touching the broker.
 */
class SlowLink {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  port = 0;
  constructor(
    private readonly target: { host: string; port: number },
    readonly delayMs: number,
  ) {}

  async start(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => {
          this.sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
        s.on("error", () => undefined);
      }
      client.on("data", (d: Buffer) => setTimeout(() => upstream.write(d), this.delayMs));
      upstream.on("data", (d: Buffer) => setTimeout(() => client.write(d), this.delayMs));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/**
 * A TCP relay gateway → broker that parses MQTT both ways and records the readings of every
 * PUBLISH the broker acknowledged. Packet ids are per connection, so the pending map is too.
 */
class AckTap {
  readonly acked = new Set<string>();
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  port = 0;
  constructor(private readonly brokerPort: number) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.brokerPort, "127.0.0.1");
      const pending = new Map<number, string[]>();
      const up = mqttPacket.parser({ protocolVersion: 4 });
      const down = mqttPacket.parser({ protocolVersion: 4 });
      up.on("packet", (p: Packet) => {
        if (p.cmd !== "publish" || p.qos !== 1 || !p.topic.endsWith("/readings")) return;
        const body = JSON.parse(String(p.payload)) as {
          device: number;
          readings: { point: string; ts: string; error?: unknown }[];
        };
        const keys = body.readings
          .filter((r) => r.error === undefined)
          .map((r) => readingKey({ device: body.device, ...r }));
        pending.set(p.messageId as number, keys);
      });
      down.on("packet", (p: Packet) => {
        if (p.cmd !== "puback") return;
        for (const k of pending.get(p.messageId as number) ?? []) this.acked.add(k);
        pending.delete(p.messageId as number);
      });
      for (const parser of [up, down]) parser.on("error", () => client.destroy());
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => {
          this.sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
        s.on("error", () => undefined);
      }
      client.on("data", (d: Buffer) => {
        up.parse(d);
        upstream.write(d);
      });
      upstream.on("data", (d: Buffer) => {
        down.parse(d);
        client.write(d);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/**
 * QoS 1 readings for gateway `gw`, device 1, one reading per message with its own millisecond
 * timestamp, at most `inFlight` unacknowledged at once. A message counts once its PUBACK is in.
 */
class Burst {
  readonly acked = new Set<string>();
  sent = 0;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private readonly client: mqtt.MqttClient;
  constructor(
    url: string,
    readonly gw: string,
    readonly inFlight = 50,
  ) {
    // clean: true and no resend of what was in flight at the kill: a publish that got no PUBACK is
    // simply not counted, which is what the question (acknowledged then lost?) needs.
    this.client = mqtt.connect(url, {
      clientId: `burst-${randomBytes(3).toString("hex")}`,
      clean: true,
      reconnectPeriod: 200,
      queueQoSZero: false,
    });
    this.client.on("error", () => undefined);
  }

  start(): void {
    const t0 = Date.parse("2026-01-01T00:00:00Z");
    const topic = `bacmqtt/${this.gw}/1/readings`;
    let i = 0;
    const worker = async () => {
      while (!this.stopped) {
        if (!this.client.connected) {
          await sleep(50);
          continue;
        }
        const n = i++;
        const r = { point: `analog_value_${n % 10}`, value: n % 1000, ts: new Date(t0 + n).toISOString() };
        this.sent++;
        const ok = await Promise.race([
          this.client
            .publishAsync(topic, JSON.stringify({ device: 1, source: "poll", readings: [r] }), { qos: 1 })
            .then(
              () => true,
              () => false,
            ),
          sleep(5000).then(() => false),
        ]);
        if (ok) this.acked.add(readingKey({ device: 1, ...r }));
      }
    };
    this.loop = Promise.all(Array.from({ length: this.inFlight }, worker)).then(() => undefined);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    await this.client.endAsync(true);
  }
}

async function storedKeys(pool: pg.Pool, gw: string): Promise<Set<string>> {
  const { rows } = await pool.query<{ device_instance: number; point: string; time: Date }>(
    `SELECT p.device_instance, p.point, r.time FROM readings r JOIN points p USING (point_id)
     WHERE p.gateway_id = $1`,
    [gw],
  );
  return new Set(rows.map((r) => `${Number(r.device_instance)}/${r.point}@${r.time.toISOString()}`));
}

async function killRun(
  label: string,
  subnet: number,
  redis?: { url: string; prefix: string },
  redisDelayMs = 0,
) {
  const started = Date.now();
  if (redis && redisDelayMs > 0) {
    const u = new URL(redis.url);
    const link = new SlowLink({ host: u.hostname, port: Number(u.port || 6379) }, redisDelayMs);
    await link.start();
    cleanups.push(() => link.close());
    u.host = `127.0.0.1:${link.port}`;
    redis = { ...redis, url: u.toString() };
  }
  const gw = `faults-${label}`;
  const burstGw = `faults-${label}-burst`;
  const tmp = tempDir(`bacmqtt-faults-${label}-`);
  cleanups.push(async () => tmp.remove());
  const db = await createPortableDatabase(`bacmqtt_faults_${label}`);
  cleanups.push(() => db.drop());
  const pool = new pg.Pool({ connectionString: db.url, max: 2 });
  pool.on("error", () => undefined); // an idle client cut by the database's drop at the end
  cleanups.push(() => pool.end());
  const sim = await startSimulator({
    devices: [1, 2, 3].map((i) => ({
      instance: 800_000 + subnet * 100 + i,
      address: `127.0.${subnet}.${i}`,
      port: 0,
      objects: { analog_value: 10 },
      cov: false,
      changeIntervalMs: 0,
    })),
  });
  cleanups.push(() => sim.close());
  const broker = new BrokerProcess(await freePort(), redis);
  cleanups.push(() => broker.kill());
  await broker.start();

  const ingestPool = new pg.Pool({ connectionString: db.url, max: 2 });
  ingestPool.on("error", () => undefined);
  const ingest = new IngestService({
    mqttUrl: broker.url,
    pool: ingestPool,
    dialect: "portable",
    clientId: `ingest-faults-${label}`,
    retryMinMs: 100,
    retryMaxMs: 1000,
    retentionIntervalMs: 0,
  });
  await ingest.start();
  cleanups.push(() => ingestPool.end());
  cleanups.push(() => ingest.stop());

  const tap = new AckTap(broker.port);
  await tap.start();
  cleanups.push(() => tap.close());
  const gateway = new GatewayProcess(
    writeGatewayConfig(tmp.dir, {
      gateway_id: gw,
      data_dir: path.join(tmp.dir, "data"),
      mqtt: { url: tap.url, reconnect_period_ms: 200 },
      bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1 },
      discovery: { targets: sim.devices().map((d) => `${d.address}:${d.port}`), timeout_s: 2, interval_s: 0 },
      polling: { interval_s: 1, cov: false },
      buffer: { fsync: "never" },
      metrics: { enabled: false },
    }),
  );
  gateway.start();
  cleanups.push(() => gateway.stop("SIGKILL"));
  await eventually(async () => (await storedKeys(pool, gw)).size >= 90, "gateway rows stored", 900);

  const burst = new Burst(broker.url, burstGw);
  burst.start();
  cleanups.push(() => burst.stop());
  await eventually(async () => burst.acked.size >= 2000, "burst acknowledged", 600);
  const storedAtKill = (await storedKeys(pool, burstGw)).size;
  const ackedAtKill = { gateway: new Set(tap.acked), burst: new Set(burst.acked) };
  const unackedAtKill = burst.sent - burst.acked.size;
  await broker.kill();
  await sleep(DOWN_S * 1000);
  await broker.start();
  const gwAtRestart = tap.acked.size;
  const gwAckedBeforeRestart = new Set(tap.acked);
  await eventually(async () => tap.acked.size >= gwAtRestart + 90, "gateway acknowledged after restart", 900);
  const burstAtRestart = burst.acked.size;
  await eventually(async () => burst.acked.size >= burstAtRestart + 1000, "burst after restart", 600);
  await burst.stop();
  await gateway.stop("SIGTERM");

  // Bounded wait until everything acknowledged is stored (or nothing more arrives for 5 s).
  const lostOf = async () => {
    const [sg, sb] = await Promise.all([storedKeys(pool, gw), storedKeys(pool, burstGw)]);
    return {
      stored: { gateway: sg.size, burst: sb.size },
      lostGateway: [...tap.acked].filter((k) => !sg.has(k)),
      lostBurst: [...burst.acked].filter((k) => !sb.has(k)),
    };
  };
  let tally = await lostOf();
  let lastStored = -1;
  let still = 0;
  for (let i = 0; i < 600 && tally.lostGateway.length + tally.lostBurst.length > 0; i++) {
    await sleep(100);
    tally = await lostOf();
    const n = tally.stored.gateway + tally.stored.burst;
    still = n === lastStored ? still + 1 : 0;
    lastStored = n;
    if (still >= 50) break;
  }
  const figures = {
    down_s: DOWN_S,
    gateway_acked_at_kill: ackedAtKill.gateway.size,
    burst_acked_at_kill: ackedAtKill.burst.size,
    burst_stored_at_kill: storedAtKill,
    burst_in_flight_at_kill: unackedAtKill,
    produced: tap.acked.size,
    stored: tally.stored.gateway,
    lost: tally.lostGateway.length,
    burst_produced: burst.acked.size,
    burst_stored: tally.stored.burst,
    burst_lost: tally.lostBurst.length,
    // Lost split by when the broker acknowledged them: before the kill, or after the restart.
    lost_acked_before_kill: [...tally.lostGateway, ...tally.lostBurst].filter(
      (k) => ackedAtKill.gateway.has(k) || ackedAtKill.burst.has(k),
    ).length,
    lostSample: [...tally.lostGateway, ...tally.lostBurst].slice(0, 5),
    // Readings the gateway had acknowledged by the restarted broker, and how many of them were stored.
    gateway_acked_after_restart: tap.acked.size - gwAckedBeforeRestart.size,
    gateway_stored_after_restart: [...tap.acked].filter(
      (k) => !gwAckedBeforeRestart.has(k) && !tally.lostGateway.includes(k),
    ).length,
    // The restarted broker still running at the end (a crash would have ended it).
    broker_crashes: broker.child?.exitCode === null && broker.child.signalCode === null ? 0 : 1,
    duration_s: Math.round((Date.now() - started) / 1000),
  };
  const what = redis
    ? `Redis persistence${redisDelayMs ? `, ${redisDelayMs} ms to Redis` : ""}`
    : "in-memory persistence";
  report(`broker SIGKILL (${what})`, figures);
  return { figures, stderr: broker.stderr + gateway.stderr };
}

it.skipIf(!redisUp)(
  "Redis persistence: nothing the broker acknowledged is lost",
  { timeout: 150_000 },
  async () => {
    const prefix = `bacmqtt-faults-kill-${process.pid}-${randomBytes(4).toString("hex")}:`;
    cleanups.push(() => dropRedisKeys(prefix));
    const { figures: f, stderr } = await killRun("brokerkillredis", 94, { url: REDIS_URL, prefix });
    expect(f.produced).toBeGreaterThan(0);
    expect(f.broker_crashes).toBe(0);
    expect(f.lostSample, stderr).toEqual([]);
    expect(f.lost + f.burst_lost).toBe(0);
  },
);

it.skipIf(!redisUp)(
  "Redis persistence over a slow link to Redis: nothing acknowledged is lost",
  {
    timeout: 150_000,
  },
  async () => {
    const prefix = `bacmqtt-faults-kill-${process.pid}-${randomBytes(4).toString("hex")}:`;
    cleanups.push(() => dropRedisKeys(prefix));
    const { figures: f, stderr } = await killRun("brokerkillslow", 96, { url: REDIS_URL, prefix }, 10);
    expect(f.produced).toBeGreaterThan(0);
    expect(f.broker_crashes).toBe(0);
    expect(f.lostSample, stderr).toEqual([]);
    expect(f.lost + f.burst_lost).toBe(0);
  },
);

it("in-memory persistence: recovers; the loss is measured and reported", { timeout: 150_000 }, async () => {
  const { figures: f } = await killRun("brokerkillmem", 95);
  // The pipeline resumed after the restart; what died with the broker's memory is reported, not
  // asserted away.
  expect(f.broker_crashes).toBe(0);
  expect(f.gateway_acked_after_restart).toBeGreaterThan(0);
  expect(f.gateway_stored_after_restart).toBeGreaterThan(0);
});
