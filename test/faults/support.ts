// Whole-pipeline counting harness for the fault-injection suite: simulator (real UDP on 127.0.x.y)
// → gateway → broker → ingest → a fresh portable PostgreSQL database. "Produced" is every reading
// the gateway published and the broker acknowledged (PUBACK), live or replayed from the disk buffer;
// "stored" is the distinct (device, point, time) rows in `readings`; lost = produced − stored.
// Owns only what it starts; `close()` stops everything in reverse order and drops the database.
import pg from "pg";
import { type RunningBroker, startBroker } from "../../broker/index.ts";
import { type Gateway, loadConfig, startGateway } from "../../gateway/index.ts";
import { IngestService } from "../../ingest/service.ts";
import { type SimDeviceConfig, type Simulator, startSimulator } from "../../simulator/index.ts";
import { tempDir } from "../integration/gateway/helpers.ts";
import { eventually } from "../integration/ingest/helpers.ts";
import { createPortableDatabase, type TestDatabase } from "../support/db-postgres.ts";

export { eventually };

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface PipelineOptions {
  label: string;
  /** Second octet group for the simulated devices' 127.0.x.y addresses (distinct per test file). */
  subnet: number;
  devices?: number;
  pointsPerDevice?: number;
  /** Start the in-process ingest (default true); false when the test runs its own. */
  ingest?: boolean;
  redis?: { url: string; keyPrefix: string };
  /** Merged into every simulated device's configuration (impairments, rpm off, …). */
  device?: Partial<Omit<SimDeviceConfig, "instance" | "address" | "port">>;
}

export interface Tally {
  produced: number;
  stored: number;
  lost: number;
  /** Readings published with an error field (not expected to become rows). */
  errored: number;
  /** Readings still in the gateway's disk buffer when it stopped (never published). */
  leftInBuffer: number;
  lostSample: string[];
}

/** Readings keys as `device/point@iso-time`. */
function key(device: number, point: string, ts: string): string {
  return `${device}/${point}@${new Date(ts).toISOString()}`;
}

export class Pipeline {
  readonly produced = new Set<string>();
  errored = 0;
  ingest: IngestService | undefined;
  ingestPool: pg.Pool | undefined;
  private tmp = tempDir("bacmqtt-faults-");
  private constructor(
    readonly opts: PipelineOptions,
    readonly db: TestDatabase,
    readonly pool: pg.Pool,
    public broker: RunningBroker,
    readonly sim: Simulator,
    public gateway: Gateway | undefined,
  ) {}

  static async start(opts: PipelineOptions): Promise<Pipeline> {
    const db = await createPortableDatabase(`bacmqtt_faults_${opts.label}`);
    const pool = new pg.Pool({ connectionString: db.url, max: 2 });
    pool.on("error", () => undefined); // terminated by the database-outage fault
    const devices = opts.devices ?? 3;
    const sim = await startSimulator({
      devices: Array.from({ length: devices }, (_, i) => ({
        instance: 800_000 + opts.subnet * 100 + i,
        address: `127.0.${opts.subnet}.${i + 1}`,
        port: 0,
        objects: { analog_value: opts.pointsPerDevice ?? 10 },
        cov: false,
        changeIntervalMs: 0,
        ...opts.device,
      })),
    });
    const broker = await startBroker({
      port: 0,
      host: "127.0.0.1",
      allowAnonymous: true,
      sysInterval: 0,
      ...(opts.redis ? { redis: opts.redis } : {}),
    });
    const p = new Pipeline(opts, db, pool, broker, sim, undefined);
    if (opts.ingest !== false) await p.startIngest();
    await p.startGateway();
    return p;
  }

  get gatewayId(): string {
    return `faults-${this.opts.label}`;
  }

  async startIngest(): Promise<void> {
    const ingestPool = new pg.Pool({ connectionString: this.db.url, max: 2 });
    ingestPool.on("error", () => undefined);
    this.ingestPool = ingestPool;
    this.ingest = new IngestService({
      mqttUrl: this.broker.url,
      pool: ingestPool,
      dialect: "portable",
      clientId: `ingest-${this.opts.label}`,
      retryMinMs: 100,
      retryMaxMs: 1000,
      retentionIntervalMs: 0,
    });
    await this.ingest.start();
  }

  async stopIngest(): Promise<void> {
    await this.ingest?.stop();
    await this.ingestPool?.end();
    this.ingest = undefined;
    this.ingestPool = undefined;
  }

  private async startGateway(): Promise<void> {
    const targets = this.sim.devices().map((d) => `${d.address}:${d.port}`);
    const gw = await startGateway(
      loadConfig({
        env: {},
        overrides: {
          gateway_id: this.gatewayId,
          data_dir: this.tmp.dir,
          mqtt: { url: this.broker.url, reconnect_period_ms: 200 },
          metrics: { enabled: false },
          bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1 },
          discovery: { targets, timeout_s: 2, interval_s: 0 },
          polling: { interval_s: 1, cov: false },
          buffer: { fsync: "never" },
        },
      }),
    );
    // Count what the broker acknowledged, at the gateway's one MQTT wrapper (live and replay paths).
    const m = gw.mqtt;
    const publish = m.publish.bind(m);
    const publishAcked = m.publishAcked.bind(m);
    const record = (topic: string, body: unknown) => {
      if (!topic.endsWith("/readings")) return;
      const p = (typeof body === "string" ? JSON.parse(body) : body) as {
        device: number;
        readings: { point: string; ts: string; error?: unknown }[];
      };
      for (const r of p.readings) {
        if (r.error !== undefined) this.errored++;
        else this.produced.add(key(p.device, r.point, r.ts));
      }
    };
    m.publish = async (topic, payload, options) => {
      const ok = await publish(topic, payload, options);
      if (ok) record(topic, payload);
      return ok;
    };
    m.publishAcked = async (topic, body) => {
      await publishAcked(topic, body);
      record(topic, body);
    };
    this.gateway = gw;
  }

  async storedKeys(): Promise<Set<string>> {
    const { rows } = await this.pool.query<{ device_instance: number; point: string; time: Date }>(
      `SELECT p.device_instance, p.point, r.time FROM readings r JOIN points p USING (point_id)
       WHERE p.gateway_id = $1`,
      [this.gatewayId],
    );
    return new Set(rows.map((r) => key(Number(r.device_instance), r.point, r.time.toISOString())));
  }

  async storedCount(): Promise<number> {
    return (await this.storedKeys().catch(() => new Set<string>())).size;
  }

  /** Waits until `n` more readings have been produced (bounded). */
  async waitProduced(n: number, what: string): Promise<void> {
    const target = this.produced.size + n;
    await eventually(async () => this.produced.size >= target, what, 1200, 100);
  }

  /**
   * Ends the run: waits for the gateway's buffer to empty, stops the gateway (so production stops),
   * waits (bounded) for every produced reading to be stored, and counts.
   */
  async finish(storeTries = 600): Promise<Tally> {
    const gw = this.gateway;
    if (gw) {
      await eventually(async () => gw.buffer.depth === 0, "gateway buffer empty", 1200, 100).catch(
        () => undefined,
      );
      await gw.bridge.drained();
      await gw.stop();
      this.gateway = undefined;
    }
    const leftInBuffer = gw?.buffer.depth ?? 0;
    let stored = new Set<string>();
    for (let i = 0; i < storeTries; i++) {
      stored = await this.storedKeys();
      if ([...this.produced].every((k) => stored.has(k))) break;
      await sleep(100);
    }
    const lost = [...this.produced].filter((k) => !stored.has(k));
    return {
      produced: this.produced.size,
      stored: stored.size,
      lost: lost.length,
      errored: this.errored,
      leftInBuffer,
      lostSample: lost.slice(0, 5),
    };
  }

  async close(): Promise<void> {
    await this.gateway?.stop().catch(() => undefined);
    await this.stopIngest().catch(() => undefined);
    await this.broker.close().catch(() => undefined);
    await this.sim.close().catch(() => undefined);
    await this.pool.end().catch(() => undefined);
    await this.db.drop().catch(() => undefined);
    this.tmp.remove();
  }
}

/** One line per measured run, copied into docs/reliability.md. */
export function report(fault: string, figures: Record<string, unknown>): void {
  process.stdout.write(`FAULT_ROW ${JSON.stringify({ fault, ...figures })}\n`);
}
