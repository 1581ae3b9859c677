// The batch writer: one transaction per batch of MQTT messages, on one checked-out client.
// Metadata upserts, availability/write events and dead letters first, then the readings with one
// multi-row INSERT … SELECT FROM unnest(…) ON CONFLICT (point_id, time) DO NOTHING: replays and
// duplicates change nothing. In the portable dialect the same statement folds the rows it really
// inserted (RETURNING) into the hourly and daily rollups, so rollups count every reading once.
// The point-id cache is updated only after COMMIT, so a rolled-back batch never leaves stale ids.
import type pg from "pg";
import type { Logger } from "../common/logger.ts";
import { parsePointId } from "../contract/index.ts";
import { isDataError, withTransaction } from "./db.ts";
import { type IngestOp, type PointTexts, statusFlagBits, storedValue } from "./messages.ts";
import type { Dialect } from "./migrations/index.ts";

export interface Envelope {
  topic: string;
  payload: Buffer;
  op: IngestOp;
  receivedAt: Date;
}

export interface WriteStats {
  readingsReceived: number;
  readingsInserted: number;
  deadLetters: number;
  /** Time of the newest reading in the batch (for the lag metric). */
  newest: number | null;
}

interface CachedPoint extends PointTexts {
  id: string;
}

const key = (gateway: string, device: number, point: string) => `${gateway}\u0000${device}\u0000${point}`;

const rollup = (table: string, width: string) => `
  ${table} AS (
    INSERT INTO ${table}_state AS s (point_id, bucket, sum, count, min, max, first, first_time, last, last_time)
    SELECT point_id, date_bin(INTERVAL '${width}', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b,
           sum(value), count(*), min(value), max(value),
           (array_agg(value ORDER BY time))[1], min(time),
           (array_agg(value ORDER BY time DESC))[1], max(time)
    FROM num GROUP BY point_id, b ORDER BY point_id, b
    ON CONFLICT (point_id, bucket) DO UPDATE SET
      sum = s.sum + excluded.sum,
      count = s.count + excluded.count,
      min = LEAST(s.min, excluded.min),
      max = GREATEST(s.max, excluded.max),
      first = CASE WHEN excluded.first_time < s.first_time THEN excluded.first ELSE s.first END,
      first_time = LEAST(s.first_time, excluded.first_time),
      last = CASE WHEN excluded.last_time > s.last_time THEN excluded.last ELSE s.last END,
      last_time = GREATEST(s.last_time, excluded.last_time)
    RETURNING 1
  )`;

const INPUT = `
  input AS (
    SELECT * FROM unnest($1::timestamptz[], $2::bigint[], $3::float8[], $4::text[], $5::int2[], $6::text[], $7::bool[])
      AS t(time, point_id, value, value_text, status_flags, quality, historical)
  ),
  ins AS (
    INSERT INTO readings (time, point_id, value, value_text, status_flags, quality, historical)
    SELECT * FROM input ORDER BY point_id, time
    ON CONFLICT (point_id, time) DO NOTHING
    RETURNING time, point_id, value
  )`;

export const INSERT_READINGS: Record<Dialect, string> = {
  timescale: `WITH ${INPUT} SELECT count(*)::int AS inserted FROM ins`,
  portable: `WITH ${INPUT},
    num AS (SELECT time, point_id, value FROM ins WHERE value IS NOT NULL),
    ${rollup("readings_hourly", "1 hour")},
    ${rollup("readings_daily", "1 day")}
    SELECT count(*)::int AS inserted FROM ins`,
};

/** Text safe for a PostgreSQL text column (no NUL; invalid UTF-8 kept as base64). */
export function payloadText(payload: Buffer): string {
  const text = payload.toString("utf8");
  if (Buffer.from(text, "utf8").equals(payload) && !text.includes("\u0000")) return text;
  return `base64:${payload.toString("base64")}`;
}

export class BatchWriter {
  private readonly points = new Map<string, CachedPoint>();

  constructor(
    private readonly pool: pg.Pool,
    readonly dialect: Dialect,
    private readonly log: Logger,
  ) {}

  /**
   * Writes a batch in one transaction. If the database rejects the batch for a reason in the data
   * (isDataError), each message is written alone and the ones that still fail become dead letters.
   * Every other failure (outage, deadlock, …) is thrown for the caller to retry.
   */
  async write(batch: Envelope[]): Promise<WriteStats> {
    try {
      return await this.writeTransaction(batch);
    } catch (err) {
      if (!isDataError(err)) throw err;
      this.log.warn(
        { err: (err as Error).message, messages: batch.length },
        "batch rejected; writing messages one by one",
      );
    }
    const total: WriteStats = { readingsReceived: 0, readingsInserted: 0, deadLetters: 0, newest: null };
    for (const env of batch) {
      let stats: WriteStats;
      try {
        stats = await this.writeTransaction([env]);
      } catch (err) {
        if (!isDataError(err)) throw err;
        stats = await this.writeTransaction([
          {
            ...env,
            op: { kind: "dead_letter", error: `database rejected the message: ${(err as Error).message}` },
          },
        ]);
      }
      total.readingsReceived += stats.readingsReceived;
      total.readingsInserted += stats.readingsInserted;
      total.deadLetters += stats.deadLetters;
      if (stats.newest !== null) total.newest = Math.max(total.newest ?? stats.newest, stats.newest);
    }
    return total;
  }

  private async writeTransaction(batch: Envelope[]): Promise<WriteStats> {
    const learned = new Map<string, CachedPoint>();
    const stats = await withTransaction(this.pool, (client) => this.writeAll(client, batch, learned));
    for (const [k, v] of learned) this.points.set(k, v);
    return stats;
  }

  private async writeAll(
    client: pg.PoolClient,
    batch: Envelope[],
    learned: Map<string, CachedPoint>,
  ): Promise<WriteStats> {
    const stats: WriteStats = { readingsReceived: 0, readingsInserted: 0, deadLetters: 0, newest: null };
    const gateways = new Set<string>();
    for (const env of batch) if ("gateway" in env.op) gateways.add(env.op.gateway);
    if (gateways.size) {
      await client.query(
        `INSERT INTO gateways (gateway_id, last_seen, updated_at) SELECT g, now(), now() FROM unnest($1::text[]) AS g
         ON CONFLICT (gateway_id) DO UPDATE SET last_seen = now()`,
        [[...gateways].sort()],
      );
    }

    const dead: Envelope[] = [];
    const readings: Envelope[] = [];
    for (const env of batch) {
      const op = env.op;
      switch (op.kind) {
        case "readings":
          readings.push(env);
          break;
        case "meta":
          await this.upsertMeta(client, op.gateway, op.payload, learned);
          break;
        case "availability":
          await client.query(
            `WITH up AS (
               INSERT INTO devices (gateway_id, device_instance, online, last_seen, updated_at)
               VALUES ($1, $2, $3, CASE WHEN $3 THEN $4::timestamptz END, now())
               ON CONFLICT (gateway_id, device_instance) DO UPDATE
                 SET online = excluded.online, last_seen = COALESCE(excluded.last_seen, devices.last_seen), updated_at = now()
                 WHERE devices.online IS DISTINCT FROM excluded.online
               RETURNING 1)
             INSERT INTO availability_events (time, gateway_id, device_instance, state, reason)
             SELECT $4::timestamptz, $1, $2, $5, $6 FROM up`,
            [
              op.gateway,
              op.device,
              op.payload.state === "online",
              op.payload.timestamp ?? env.receivedAt.toISOString(),
              op.payload.state,
              op.payload.reason ?? null,
            ],
          );
          break;
        case "bridge_state":
          await client.query(
            `UPDATE gateways SET base_topic = $2, state = $3, bd_seq = $4, last_seen = now(), updated_at = now()
             WHERE gateway_id = $1`,
            [op.gateway, op.base, op.payload.state, op.payload.bd_seq],
          );
          break;
        case "bridge_info":
          await client.query(
            "UPDATE gateways SET base_topic = $2, info = $3::jsonb, updated_at = now() WHERE gateway_id = $1",
            [op.gateway, op.base, JSON.stringify(op.payload)],
          );
          break;
        case "bridge_devices":
          await client.query(
            `INSERT INTO devices (gateway_id, device_instance, updated_at) SELECT $1, d, now() FROM unnest($2::int[]) AS d
             ON CONFLICT (gateway_id, device_instance) DO NOTHING`,
            [op.gateway, op.payload.device_instances],
          );
          break;
        case "write_event": {
          const d = op.payload.data;
          const str = (v: unknown) => (typeof v === "string" || typeof v === "number" ? String(v) : null);
          const int = (v: unknown) => (typeof v === "number" && Number.isInteger(v) ? v : null);
          await client.query(
            // A write the api relayed is already audited by the api (with who asked for it) under
            // the same transaction; the gateway's event of it must not add a second row.
            `INSERT INTO write_audit (time, gateway_id, device_instance, point, value, priority, source, actor, result,
                                      error_code, error_message, transaction)
             SELECT $1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12::text
             WHERE $12::text IS NULL OR NOT EXISTS (
               SELECT 1 FROM write_audit WHERE gateway_id = $2 AND transaction = $12::text AND source = 'api')`,
            [
              op.payload.timestamp,
              op.gateway,
              int(d.device),
              str(d.point),
              JSON.stringify(d.value ?? null),
              int(d.priority),
              d.source === "api" ? "api" : "mqtt",
              str(d.actor),
              str(d.result),
              str(d.error_code),
              str(d.error_message),
              str(d.transaction),
            ],
          );
          break;
        }
        case "dead_letter":
          dead.push(env);
          break;
        case "ignore":
          break;
      }
    }

    if (dead.length) {
      await client.query(
        `INSERT INTO dead_letters (received_at, topic, payload, error)
         SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[])`,
        [
          dead.map((e) => e.receivedAt.toISOString()),
          dead.map((e) => e.topic),
          dead.map((e) => payloadText(e.payload)),
          dead.map((e) => (e.op.kind === "dead_letter" ? e.op.error : "")),
        ],
      );
      stats.deadLetters = dead.length;
    }

    if (readings.length) await this.insertReadings(client, readings, learned, stats);
    return stats;
  }

  private lookup(learned: Map<string, CachedPoint>, k: string): CachedPoint | undefined {
    return learned.get(k) ?? this.points.get(k);
  }

  private async upsertMeta(
    client: pg.PoolClient,
    gateway: string,
    m: import("../contract/index.ts").DeviceMetaPayload,
    learned: Map<string, CachedPoint>,
  ): Promise<void> {
    await client.query(
      `INSERT INTO devices (gateway_id, device_instance, object_name, description, location, vendor_id, vendor_name,
                            model_name, firmware_revision, application_software_version, address, network, mac,
                            max_apdu, segmentation, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, now())
       ON CONFLICT (gateway_id, device_instance) DO UPDATE SET
         object_name = excluded.object_name, description = excluded.description, location = excluded.location,
         vendor_id = excluded.vendor_id, vendor_name = excluded.vendor_name, model_name = excluded.model_name,
         firmware_revision = excluded.firmware_revision,
         application_software_version = excluded.application_software_version, address = excluded.address,
         network = excluded.network, mac = excluded.mac, max_apdu = excluded.max_apdu,
         segmentation = excluded.segmentation, updated_at = now()`,
      [
        gateway,
        m.device_instance,
        m.object_name,
        m.description,
        m.location,
        m.vendor_id,
        m.vendor_name,
        m.model_name,
        m.firmware_revision,
        m.application_software_version,
        m.address,
        m.network,
        m.mac,
        m.max_apdu,
        m.segmentation,
      ],
    );
    if (m.points.length === 0) return;
    const p = m.points;
    const { rows } = await client.query<{
      point_id: string;
      point: string;
      object_type: string | null;
      state_texts: string[] | null;
      active_text: string | null;
      inactive_text: string | null;
    }>(
      `INSERT INTO points (gateway_id, device_instance, point, object_type, object_instance, name, description, units,
                           units_code, writable, state_texts, active_text, inactive_text, cov_increment, updated_at)
       SELECT $1, $2, t.*, now() FROM unnest($3::text[], $4::text[], $5::int[], $6::text[], $7::text[], $8::text[],
                                            $9::int[], $10::bool[], $11::jsonb[], $12::text[], $13::text[], $14::float8[])
         AS t(point, object_type, object_instance, name, description, units, units_code, writable, state_texts,
              active_text, inactive_text, cov_increment)
       ON CONFLICT (gateway_id, device_instance, point) DO UPDATE SET
         object_type = excluded.object_type, object_instance = excluded.object_instance, name = excluded.name,
         description = excluded.description, units = excluded.units, units_code = excluded.units_code,
         writable = excluded.writable, state_texts = excluded.state_texts, active_text = excluded.active_text,
         inactive_text = excluded.inactive_text, cov_increment = excluded.cov_increment, updated_at = now()
       RETURNING point_id, point, object_type, state_texts, active_text, inactive_text`,
      [
        gateway,
        m.device_instance,
        p.map((x) => x.point),
        p.map((x) => x.object_type),
        p.map((x) => x.object_instance),
        p.map((x) => x.name),
        p.map((x) => x.description),
        p.map((x) => x.units),
        p.map((x) => x.units_code),
        p.map((x) => x.writable),
        p.map((x) => (x.state_texts ? JSON.stringify(x.state_texts) : null)),
        p.map((x) => x.active_text),
        p.map((x) => x.inactive_text),
        p.map((x) => x.cov_increment),
      ],
    );
    for (const r of rows) {
      learned.set(key(gateway, m.device_instance, r.point), {
        id: String(r.point_id),
        object_type: r.object_type,
        state_texts: r.state_texts,
        active_text: r.active_text,
        inactive_text: r.inactive_text,
      });
    }
  }

  /** Ids for points seen in readings before (or without) their meta: created bare, filled by meta later. */
  private async resolvePoints(client: pg.PoolClient, batch: Envelope[], learned: Map<string, CachedPoint>) {
    const missing = new Map<string, { gateway: string; device: number; point: string }>();
    for (const env of batch) {
      if (env.op.kind !== "readings") continue;
      const { gateway, device } = env.op;
      for (const r of env.op.payload.readings) {
        const k = key(gateway, device, r.point);
        if (!this.lookup(learned, k) && !missing.has(k)) missing.set(k, { gateway, device, point: r.point });
      }
    }
    if (missing.size === 0) return;
    const list = [...missing.values()].sort((a, b) =>
      a.gateway === b.gateway
        ? a.device === b.device
          ? a.point < b.point
            ? -1
            : 1
          : a.device - b.device
        : a.gateway < b.gateway
          ? -1
          : 1,
    );
    const types = list.map((x) => {
      const parsed = parsePointId(x.point);
      return parsed ? { type: parsed.objectTypeName.replace(/_/g, "-"), instance: parsed.instance } : null;
    });
    const { rows } = await client.query<{
      point_id: string;
      gateway_id: string;
      device_instance: number;
      point: string;
      object_type: string | null;
      state_texts: string[] | null;
      active_text: string | null;
      inactive_text: string | null;
    }>(
      `WITH input AS (
         SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::int[])
           AS t(gateway_id, device_instance, point, object_type, object_instance)
       ),
       dev AS (
         INSERT INTO devices (gateway_id, device_instance, updated_at)
         SELECT DISTINCT gateway_id, device_instance, now() FROM input
         ON CONFLICT (gateway_id, device_instance) DO NOTHING
       ),
       ins AS (
         INSERT INTO points (gateway_id, device_instance, point, object_type, object_instance, updated_at)
         SELECT gateway_id, device_instance, point, object_type, object_instance, now() FROM input
         ON CONFLICT (gateway_id, device_instance, point) DO NOTHING
         RETURNING point_id, gateway_id, device_instance, point, object_type, state_texts, active_text, inactive_text
       )
       SELECT * FROM ins
       UNION ALL
       SELECT p.point_id, p.gateway_id, p.device_instance, p.point, p.object_type, p.state_texts, p.active_text, p.inactive_text
       FROM points p JOIN input i USING (gateway_id, device_instance, point)`,
      [
        list.map((x) => x.gateway),
        list.map((x) => x.device),
        list.map((x) => x.point),
        types.map((t) => t?.type ?? null),
        types.map((t) => t?.instance ?? null),
      ],
    );
    for (const r of rows) {
      learned.set(key(r.gateway_id, r.device_instance, r.point), {
        id: String(r.point_id),
        object_type: r.object_type,
        state_texts: r.state_texts,
        active_text: r.active_text,
        inactive_text: r.inactive_text,
      });
    }
  }

  private async insertReadings(
    client: pg.PoolClient,
    batch: Envelope[],
    learned: Map<string, CachedPoint>,
    stats: WriteStats,
  ): Promise<void> {
    await this.resolvePoints(client, batch, learned);
    const times: string[] = [];
    const ids: string[] = [];
    const values: (number | null)[] = [];
    const texts: (string | null)[] = [];
    const flags: (number | null)[] = [];
    const quality: (string | null)[] = [];
    const historical: boolean[] = [];
    let newest = -Infinity;
    for (const env of batch) {
      if (env.op.kind !== "readings") continue;
      const { gateway, device, payload } = env.op;
      const hist = payload.historical === true;
      for (const r of payload.readings) {
        const point = this.lookup(learned, key(gateway, device, r.point));
        if (!point) throw new Error(`point ${gateway}/${device}/${r.point} was not resolved`);
        const v = storedValue(r.value, point);
        times.push(r.ts);
        ids.push(point.id);
        values.push(v.value);
        texts.push(v.text);
        flags.push(statusFlagBits(r.status_flags));
        quality.push(r.quality ?? (r.error ? "bad" : null));
        historical.push(hist);
        const t = Date.parse(r.ts);
        if (t > newest) newest = t;
      }
    }
    const { rows } = await client.query<{ inserted: number }>(INSERT_READINGS[this.dialect], [
      times,
      ids,
      values,
      texts,
      flags,
      quality,
      historical,
    ]);
    stats.readingsReceived += times.length;
    stats.readingsInserted += rows[0]?.inserted ?? 0;
    stats.newest = Number.isFinite(newest) ? newest : null;
  }
}
