// The batch writer: one transaction per batch of MQTT messages, on one checked-out client.
// Metadata upserts, availability/write events and dead letters first, then the readings with one
// multi-row INSERT … SELECT FROM unnest(…) ON CONFLICT (point_id, time) DO NOTHING: replays and
// duplicates change nothing. In the portable dialect the same statement folds the rows it really
// inserted (RETURNING) into the hourly and daily rollups, so rollups count every reading once.
// The point-id cache is updated only after COMMIT, so a rolled-back batch never leaves stale ids.
//
// Fast path (measured in bench/ingest.bench.ts): most batches hold only new rows, so the readings
// are first sent with COPY, and the rollups are folded from the same rows in memory (one upsert per
// (point, bucket) instead of per reading). A COPY that meets a row already stored fails with
// unique_violation: the transaction is rolled back and written again through the INSERT … ON
// CONFLICT path above, which skips exactly the stored rows, and the next batches skip the COPY
// attempt for a while (replays come in bursts after a reconnect). PGlite (the embedded database and
// the WASM TimescaleDB) cannot take COPY FROM STDIN over the wire: it always uses the INSERT path.
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import type { Logger } from "../common/logger.ts";
import { parsePointId } from "../contract/index.ts";
import { isDataError, withTransaction } from "./db.ts";
import { type IngestOp, type PointTexts, statusFlagBits, storedValue } from "./messages.ts";
import { DEAD_LETTER_FINGERPRINT } from "./migrations/004-dead-letter-fingerprint.ts";
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
  /** Readings written by COPY (the fast path); the rest went through INSERT … ON CONFLICT. */
  readingsCopied?: number;
  /** 1 when a COPY met rows already stored and the batch fell back to INSERT … ON CONFLICT. */
  copyFallbacks?: number;
  deadLetters: number;
  /** Time of the newest reading in the batch (for the lag metric). */
  newest: number | null;
}

interface CachedPoint extends PointTexts {
  id: string;
}

/** Point ids by gateway and device, then by point name (one string hash per reading). */
class PointCache {
  private readonly devices = new Map<string, Map<string, CachedPoint>>();

  device(gateway: string, device: number): Map<string, CachedPoint> | undefined {
    return this.devices.get(`${gateway}\u0000${device}`);
  }

  set(gateway: string, device: number, point: string, value: CachedPoint): void {
    const k = `${gateway}\u0000${device}`;
    let m = this.devices.get(k);
    if (!m) {
      m = new Map();
      this.devices.set(k, m);
    }
    m.set(point, value);
  }

  /** Takes every entry of `other` (after COMMIT). */
  merge(other: PointCache): void {
    for (const [k, points] of other.devices) {
      const m = this.devices.get(k);
      if (!m) this.devices.set(k, new Map(points));
      else for (const [p, v] of points) m.set(p, v);
    }
  }
}

/** How a rollup row folds into the stored one; first/last move only to earlier/later times. */
const MERGE_INTO_STATE = `ON CONFLICT (point_id, bucket) DO UPDATE SET
      sum = s.sum + excluded.sum,
      count = s.count + excluded.count,
      min = LEAST(s.min, excluded.min),
      max = GREATEST(s.max, excluded.max),
      first = CASE WHEN excluded.first_time < s.first_time THEN excluded.first ELSE s.first END,
      first_time = LEAST(s.first_time, excluded.first_time),
      last = CASE WHEN excluded.last_time > s.last_time THEN excluded.last ELSE s.last END,
      last_time = GREATEST(s.last_time, excluded.last_time)
    RETURNING 1`;

const rollup = (table: string, width: string) => `
  ${table} AS (
    INSERT INTO ${table}_state AS s (point_id, bucket, sum, count, min, max, first, first_time, last, last_time)
    SELECT point_id, date_bin(INTERVAL '${width}', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b,
           sum(value), count(*), min(value), max(value),
           (array_agg(value ORDER BY time))[1], min(time),
           (array_agg(value ORDER BY time DESC))[1], max(time)
    FROM num GROUP BY point_id, b ORDER BY point_id, b
    ${MERGE_INTO_STATE}
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

/** Upsert of rollup rows already aggregated in memory (the COPY path); same merge rules as rollup(). */
const mergeRollup = (table: string, p: number) => `
  ${table} AS (
    INSERT INTO ${table}_state AS s (point_id, bucket, sum, count, min, max, first, first_time, last, last_time)
    SELECT * FROM unnest($${p}::bigint[], $${p + 1}::timestamptz[], $${p + 2}::float8[], $${p + 3}::bigint[],
                         $${p + 4}::float8[], $${p + 5}::float8[], $${p + 6}::float8[], $${p + 7}::timestamptz[],
                         $${p + 8}::float8[], $${p + 9}::timestamptz[])
    ${MERGE_INTO_STATE}
  )`;

/** Both rollups in one round trip: $1–$10 hourly rows, $11–$20 daily rows. */
const MERGE_ROLLUPS = `WITH ${mergeRollup("readings_hourly", 1)}, ${mergeRollup("readings_daily", 11)}
  SELECT (SELECT count(*) FROM readings_hourly)::int AS hourly, (SELECT count(*) FROM readings_daily)::int AS daily`;

const COPY_READINGS =
  "COPY readings (time, point_id, value, value_text, status_flags, quality, historical) FROM STDIN";
const COPY_READINGS_BINARY = `${COPY_READINGS} (FORMAT binary)`;

/** A COPY met a row already stored: the transaction is aborted and written again without COPY. */
class CopyConflict extends Error {
  constructor(override readonly cause: Error) {
    super(`COPY met stored rows: ${cause.message}`);
  }
}

/** The server refused the binary format: the transaction is written again with text COPY. */
class BinaryCopyRefused extends Error {
  constructor(override readonly cause: Error) {
    super(`binary COPY refused: ${cause.message}`);
  }
}

/** Microseconds between the Unix epoch and PostgreSQL's (2000-01-01), for binary timestamps. */
const PG_EPOCH_MICROS = 946_684_800_000_000;
const TWO_32 = 4_294_967_296;
const BINARY_SIGNATURE = Buffer.from("PGCOPY\n\xff\r\n\0", "latin1");

/**
 * Rows in COPY's binary format (a growing buffer). PostgreSQL then parses no text: no timestamp or
 * float input functions, which are most of its work for a text COPY of readings.
 */
class BinaryRows {
  private buf = Buffer.allocUnsafe(128 * 1024);
  private at = 0;

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.at + n));
    this.buf.copy(next, 0, 0, this.at);
    this.buf = next;
  }

  header(): void {
    this.room(19);
    BINARY_SIGNATURE.copy(this.buf, this.at);
    this.buf.writeInt32BE(0, this.at + 11); // flags: no OIDs
    this.buf.writeInt32BE(0, this.at + 15); // no header extension
    this.at += 19;
  }

  fields(n: number): void {
    this.room(2);
    this.buf.writeInt16BE(n, this.at);
    this.at += 2;
  }

  null(): void {
    this.room(4);
    this.buf.writeInt32BE(-1, this.at);
    this.at += 4;
  }

  /** A signed 64-bit integer given as a double (exact below 2^53: ids and microseconds are). */
  int64(v: number): void {
    this.room(12);
    this.buf.writeInt32BE(8, this.at);
    const hi = Math.floor(v / TWO_32);
    this.buf.writeInt32BE(hi, this.at + 4);
    this.buf.writeUInt32BE(v - hi * TWO_32, this.at + 8);
    this.at += 12;
  }

  float8(v: number): void {
    this.room(12);
    this.buf.writeInt32BE(8, this.at);
    this.buf.writeDoubleBE(v, this.at + 4);
    this.at += 12;
  }

  int2(v: number): void {
    this.room(6);
    this.buf.writeInt32BE(2, this.at);
    this.buf.writeInt16BE(v, this.at + 4);
    this.at += 6;
  }

  bool(v: boolean): void {
    this.room(5);
    this.buf.writeInt32BE(1, this.at);
    this.buf[this.at + 4] = v ? 1 : 0;
    this.at += 5;
  }

  text(v: string): void {
    const n = Buffer.byteLength(v);
    this.room(4 + n);
    this.buf.writeInt32BE(n, this.at);
    this.buf.write(v, this.at + 4, "utf8");
    this.at += 4 + n;
  }

  trailer(): void {
    this.fields(-1);
  }

  /** What was written since the last take(), as its own buffer. */
  take(): Buffer {
    const out = Buffer.from(this.buf.subarray(0, this.at));
    this.at = 0;
    return out;
  }
}

/** readings-only batches refresh gateways.last_seen at most this often. */
const GATEWAY_TOUCH_MS = 5_000;

/** Rows per chunk of the COPY stream. */
const COPY_CHUNK_ROWS = 2_000;

/** After a COPY met stored rows, this many batches go straight to INSERT … ON CONFLICT. */
export const COPY_COOLDOWN_BATCHES = 16;

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
const BIN_ORIGIN = Date.UTC(2000, 0, 1);

/** A reading's time in microseconds since the epoch (PostgreSQL's precision), or NaN. */
export function epochMicros(ts: string): number {
  const ms = Date.parse(ts);
  if (Number.isNaN(ms)) return Number.NaN;
  const frac = /[T ]\d\d:\d\d:\d\d\.(\d+)/.exec(ts)?.[1];
  return ms * 1000 + (frac && frac.length > 3 ? Number(`${frac.slice(3, 6)}000`.slice(0, 3)) : 0);
}

/** A value in COPY's text format (tab-separated, \\N for null). */
function copyField(v: string | number | boolean | null): string {
  if (v === null) return "\\N";
  if (typeof v === "boolean") return v ? "t" : "f";
  if (typeof v === "number") return String(v);
  if (!/[\\\t\n\r]/.test(v)) return v;
  return v.replace(/[\\\t\n\r]/g, (c) =>
    c === "\\" ? "\\\\" : c === "\t" ? "\\t" : c === "\n" ? "\\n" : "\\r",
  );
}

interface Bucket {
  point: string;
  bucket: number;
  sum: number;
  count: number;
  min: number;
  max: number;
  first: number;
  firstTime: number;
  firstTs: string;
  last: number;
  lastTime: number;
  lastTs: string;
}

/** Adds one value at time t (µs) to the bucket map. */
function add(
  out: Map<string, Map<number, Bucket>>,
  id: string,
  width: number,
  v: number,
  t: number,
  ts: string,
) {
  const bucket = Math.floor((Math.floor(t / 1000) - BIN_ORIGIN) / width) * width + BIN_ORIGIN;
  let per = out.get(id);
  if (!per) {
    per = new Map();
    out.set(id, per);
  }
  const b = per.get(bucket);
  if (!b) {
    per.set(bucket, {
      point: id,
      bucket,
      sum: v,
      count: 1,
      min: v,
      max: v,
      first: v,
      firstTime: t,
      firstTs: ts,
      last: v,
      lastTime: t,
      lastTs: ts,
    });
    return;
  }
  b.sum += v;
  b.count++;
  if (v < b.min) b.min = v;
  if (v > b.max) b.max = v;
  if (t < b.firstTime) {
    b.first = v;
    b.firstTime = t;
    b.firstTs = ts;
  }
  if (t > b.lastTime) {
    b.last = v;
    b.lastTime = t;
    b.lastTs = ts;
  }
}

const byPointBucket = (a: Bucket, b: Bucket) =>
  a.point === b.point ? a.bucket - b.bucket : a.point.length - b.point.length || (a.point < b.point ? -1 : 1);

/**
 * The hourly and daily rollup rows of a set of new readings (numeric values only), per (point,
 * bucket) with buckets from 2000-01-01 UTC like date_bin(); sorted by (point, bucket) so that
 * concurrent writers take row locks in one order.
 */
export function foldRollups(
  ids: readonly string[],
  values: readonly (number | null)[],
  micros: readonly number[],
  times: readonly string[],
): [Bucket[], Bucket[]] {
  const hourly = new Map<string, Map<number, Bucket>>();
  const daily = new Map<string, Map<number, Bucket>>();
  for (let i = 0; i < ids.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) continue;
    const id = ids[i] as string;
    const t = micros[i] as number;
    const ts = times[i] as string;
    add(hourly, id, HOUR_MS, v, t, ts);
    add(daily, id, DAY_MS, v, t, ts);
  }
  const flat = (m: Map<string, Map<number, Bucket>>) => {
    const out: Bucket[] = [];
    for (const per of m.values()) for (const b of per.values()) out.push(b);
    return out.sort(byPointBucket);
  };
  return [flat(hourly), flat(daily)];
}

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

/** Whether readings may be sent with COPY: "auto" = unless the server is PGlite. */
export type CopyMode = "auto" | "on" | "off";

export class BatchWriter {
  private readonly points = new PointCache();
  private copyAllowed: boolean | undefined;
  private copyCooldown = 0;
  /** COPY's binary format (cleared if the server refuses it). */
  private binaryCopy = true;
  /** Gateways whose row a transaction of this writer is updating now (until it ends). */
  private readonly touching = new Set<string>();
  /** When each gateway's row was last touched (committed): last_seen is kept to GATEWAY_TOUCH_MS. */
  private readonly gatewaysSeen = new Map<string, number>();

  constructor(
    private readonly pool: pg.Pool,
    readonly dialect: Dialect,
    private readonly log: Logger,
    copy: CopyMode = "auto",
  ) {
    if (copy !== "auto") this.copyAllowed = copy === "on";
  }

  /** PGlite (WASM, "compiled by emcc") aborts on COPY FROM STDIN through pglite-socket 0.0.22. */
  private async canCopy(client: pg.PoolClient): Promise<boolean> {
    if (this.copyAllowed === undefined) {
      const { rows } = await client.query<{ v: string }>("SELECT version() AS v");
      this.copyAllowed = !/emscripten|emcc/i.test(rows[0]?.v ?? "");
      this.log.debug({ copy: this.copyAllowed }, "readings COPY path");
    }
    return this.copyAllowed;
  }

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
    // At most three tries: binary refused → text; text meets stored rows → INSERT … ON CONFLICT.
    let conflicted = false;
    for (let attempt = 0; ; attempt++) {
      const learned = new PointCache();
      const touched = new Set<string>();
      try {
        const stats = await withTransaction(this.pool, (client) =>
          this.writeAll(client, batch, learned, touched),
        );
        this.points.merge(learned);
        const now = Date.now();
        for (const g of touched) {
          this.gatewaysSeen.set(g, now);
          this.touching.delete(g);
        }
        if (conflicted) stats.copyFallbacks = (stats.copyFallbacks ?? 0) + 1;
        return stats;
      } catch (err) {
        for (const g of touched) this.touching.delete(g);
        if (err instanceof BinaryCopyRefused && this.binaryCopy && attempt < 2) {
          this.log.warn({ err: err.cause.message }, "binary COPY refused; using text COPY");
          this.binaryCopy = false;
          continue;
        }
        if (!(err instanceof CopyConflict) || conflicted) throw err;
        // Rows of this batch are already stored (a replay): the whole transaction is rolled back
        // and written again through INSERT … ON CONFLICT, and so are the next batches for a while.
        conflicted = true;
        this.copyCooldown = COPY_COOLDOWN_BATCHES + 1;
      }
    }
  }

  private async writeAll(
    client: pg.PoolClient,
    batch: Envelope[],
    learned: PointCache,
    touched: Set<string>,
  ): Promise<WriteStats> {
    const stats: WriteStats = { readingsReceived: 0, readingsInserted: 0, deadLetters: 0, newest: null };
    const gateways = new Set<string>();
    const now = Date.now();
    for (const env of batch) {
      if (!("gateway" in env.op)) continue;
      const g = env.op.gateway;
      // Readings-only batches of a known gateway skip the row update for a few seconds, and while
      // another batch of this writer is touching it: that UPDATE holds the row until its commit,
      // so a second lane touching it too waited for the first lane's whole batch (measured: the
      // second batch's COPY started only after the first one committed).
      if (
        env.op.kind === "readings" &&
        (now - (this.gatewaysSeen.get(g) ?? -Infinity) < GATEWAY_TOUCH_MS || this.touching.has(g))
      )
        continue;
      gateways.add(g);
    }
    for (const g of gateways) {
      touched.add(g);
      this.touching.add(g);
    }
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
      // One row per distinct message (migration 004): repeats in this batch are folded here, since
      // one INSERT … ON CONFLICT DO UPDATE may not touch a row twice; repeats of a stored one there.
      const rows = new Map<
        string,
        { first: Date; last: Date; topic: string; payload: string; error: string; n: number }
      >();
      for (const e of dead) {
        const payload = payloadText(e.payload);
        // An error text may quote the payload (JSON.parse does), NUL included, which a PostgreSQL
        // text column refuses: the whole batch then failed and was written message by message.
        const error = (e.op.kind === "dead_letter" ? e.op.error : "").replaceAll("\u0000", "\\u0000");
        const k = `${e.topic}\u0000${payload}\u0000${error}`;
        const row = rows.get(k);
        if (!row)
          rows.set(k, { first: e.receivedAt, last: e.receivedAt, topic: e.topic, payload, error, n: 1 });
        else {
          row.n++;
          if (e.receivedAt < row.first) row.first = e.receivedAt;
          if (e.receivedAt > row.last) row.last = e.receivedAt;
        }
      }
      const list = [...rows.values()];
      await client.query(
        `INSERT INTO dead_letters AS d (received_at, last_received_at, topic, payload, error, deliveries, fingerprint)
         SELECT received_at, last_received_at, topic, payload, error, deliveries, ${DEAD_LETTER_FINGERPRINT}
         FROM unnest($1::timestamptz[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int[])
           AS t(received_at, last_received_at, topic, payload, error, deliveries)
         ON CONFLICT (fingerprint) DO UPDATE SET
           deliveries = d.deliveries + excluded.deliveries,
           last_received_at = GREATEST(coalesce(d.last_received_at, d.received_at), excluded.last_received_at)`,
        [
          list.map((r) => r.first.toISOString()),
          list.map((r) => r.last.toISOString()),
          list.map((r) => r.topic),
          list.map((r) => r.payload),
          list.map((r) => r.error),
          list.map((r) => r.n),
        ],
      );
      stats.deadLetters = dead.length;
    }

    if (readings.length) await this.insertReadings(client, readings, learned, stats);
    return stats;
  }

  /** Finder of a device's points: this batch's new ids first, then the committed cache. */
  private finder(
    learned: PointCache,
    gateway: string,
    device: number,
  ): (point: string) => CachedPoint | undefined {
    const mine = learned.device(gateway, device);
    const known = this.points.device(gateway, device);
    return (point) => mine?.get(point) ?? known?.get(point);
  }

  private async upsertMeta(
    client: pg.PoolClient,
    gateway: string,
    m: import("../contract/index.ts").DeviceMetaPayload,
    learned: PointCache,
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
      learned.set(gateway, m.device_instance, r.point, {
        id: String(r.point_id),
        object_type: r.object_type,
        state_texts: r.state_texts,
        active_text: r.active_text,
        inactive_text: r.inactive_text,
      });
    }
  }

  /** Ids for points seen in readings before (or without) their meta: created bare, filled by meta later. */
  private async resolvePoints(client: pg.PoolClient, batch: Envelope[], learned: PointCache) {
    const missing = new Map<string, { gateway: string; device: number; point: string }>();
    for (const env of batch) {
      if (env.op.kind !== "readings") continue;
      const { gateway, device } = env.op;
      const find = this.finder(learned, gateway, device);
      for (const r of env.op.payload.readings) {
        if (find(r.point)) continue;
        const k = `${gateway}\u0000${device}\u0000${r.point}`;
        if (!missing.has(k)) missing.set(k, { gateway, device, point: r.point });
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
      learned.set(r.gateway_id, r.device_instance, r.point, {
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
    learned: PointCache,
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
    const micros: number[] = [];
    // Readings of one message usually share one time: parse each distinct string once.
    let lastTs = "";
    let lastMicros = Number.NaN;
    let newest = -Infinity;
    for (const env of batch) {
      if (env.op.kind !== "readings") continue;
      const { gateway, device, payload } = env.op;
      const hist = payload.historical === true;
      const find = this.finder(learned, gateway, device);
      for (const r of payload.readings) {
        const point = find(r.point);
        if (!point) throw new Error(`point ${gateway}/${device}/${r.point} was not resolved`);
        const v = storedValue(r.value, point);
        times.push(r.ts);
        ids.push(point.id);
        values.push(v.value);
        texts.push(v.text);
        flags.push(r.status_flags ? statusFlagBits(r.status_flags) : null);
        quality.push(r.quality ?? (r.error ? "bad" : null));
        historical.push(hist);
        if (r.ts !== lastTs) {
          lastTs = r.ts;
          lastMicros = epochMicros(r.ts);
          if (lastMicros > newest) newest = lastMicros;
        }
        micros.push(lastMicros);
      }
    }
    stats.readingsReceived += times.length;
    stats.newest = Number.isFinite(newest) ? Math.floor(newest / 1000) : null;
    const cols = { times, ids, values, texts, flags, quality, historical, micros };
    if (this.copyCooldown > 0) this.copyCooldown--;
    else if (await this.canCopy(client)) {
      if (await this.copyReadings(client, cols)) {
        stats.readingsInserted += times.length;
        stats.readingsCopied = (stats.readingsCopied ?? 0) + times.length;
        return;
      }
      stats.copyFallbacks = (stats.copyFallbacks ?? 0) + 1;
      this.copyCooldown = COPY_COOLDOWN_BATCHES;
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
    stats.readingsInserted += rows[0]?.inserted ?? 0;
  }

  /**
   * COPY of the batch, then (portable) the rollups folded in memory. False (nothing sent) when the
   * batch holds one (point, time) twice or a time JavaScript cannot read; CopyConflict when a row is
   * already stored (the transaction is then aborted); every other error is thrown as it is (data
   * errors make the caller write message by message).
   */
  private async copyReadings(
    client: pg.PoolClient,
    c: {
      times: string[];
      ids: string[];
      values: (number | null)[];
      texts: (string | null)[];
      flags: (number | null)[];
      quality: (string | null)[];
      historical: boolean[];
      micros: number[];
    },
  ): Promise<boolean> {
    const n = c.times.length;
    const seen = new Map<string, Set<number>>();
    // Binary timestamps are the microseconds computed here; PostgreSQL rounds a finer fraction,
    // so a batch holding one (rare: JavaScript gives milliseconds) goes as text, where it rounds
    // exactly as on the INSERT path: a replay must meet the very same stored time.
    let binary = this.binaryCopy;
    let lastTs = "";
    for (let i = 0; i < n; i++) {
      const id = c.ids[i] as string;
      const t = c.micros[i] as number;
      if (Number.isNaN(t)) return false; // let PostgreSQL judge the odd timestamp
      let times = seen.get(id);
      if (!times) {
        times = new Set();
        seen.set(id, times);
      } else if (times.has(t)) return false; // the same (point, time) twice in one batch
      times.add(t);
      if (binary && c.times[i] !== lastTs) {
        lastTs = c.times[i] as string;
        if (/\.\d{7}/.test(lastTs)) binary = false;
      }
    }
    // Streamed in chunks: PostgreSQL parses one chunk while the next is being written.
    function* text(): Generator<string> {
      for (let start = 0; start < n; start += COPY_CHUNK_ROWS) {
        let chunk = "";
        for (let i = start; i < n && i < start + COPY_CHUNK_ROWS; i++) {
          const v = c.values[i];
          const f = c.flags[i];
          chunk += `${copyField(c.times[i] as string)}\t${c.ids[i]}\t${v === null || v === undefined ? "\\N" : v}\t${copyField(
            c.texts[i] ?? null,
          )}\t${f === null || f === undefined ? "\\N" : f}\t${copyField(c.quality[i] ?? null)}\t${c.historical[i] ? "t" : "f"}\n`;
        }
        yield chunk;
      }
    }
    function* rows(): Generator<Buffer> {
      const w = new BinaryRows();
      w.header();
      let lastId = "";
      let idNumber = 0;
      for (let start = 0; start < n; start += COPY_CHUNK_ROWS) {
        for (let i = start; i < n && i < start + COPY_CHUNK_ROWS; i++) {
          w.fields(7);
          w.int64((c.micros[i] as number) - PG_EPOCH_MICROS);
          if (c.ids[i] !== lastId) {
            lastId = c.ids[i] as string;
            idNumber = Number(lastId);
          }
          w.int64(idNumber);
          const v = c.values[i];
          if (v === null || v === undefined) w.null();
          else w.float8(v);
          const text = c.texts[i];
          if (text === null || text === undefined) w.null();
          else w.text(text);
          const f = c.flags[i];
          if (f === null || f === undefined) w.null();
          else w.int2(f);
          const q = c.quality[i];
          if (q === null || q === undefined) w.null();
          else w.text(q);
          w.bool(c.historical[i] === true);
        }
        if (start + COPY_CHUNK_ROWS >= n) w.trailer();
        yield w.take();
      }
      if (n === 0) {
        w.trailer();
        yield w.take();
      }
    }
    try {
      if (binary)
        await pipeline(
          Readable.from(rows(), { objectMode: false }),
          client.query(copyFrom(COPY_READINGS_BINARY)),
        );
      else
        await pipeline(Readable.from(text(), { objectMode: false }), client.query(copyFrom(COPY_READINGS)));
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === "23505") throw new CopyConflict(err as Error);
      // A server (or a proxy in front of it) without the binary format: text from now on.
      if (binary && (code === "0A000" || code === "22P04")) throw new BinaryCopyRefused(err as Error);
      throw err;
    }
    if (this.dialect === "portable") {
      const [hourly, daily] = foldRollups(c.ids, c.values, c.micros, c.times);
      const params = (rows: Bucket[]) => [
        rows.map((r) => r.point),
        rows.map((r) => new Date(r.bucket).toISOString()),
        rows.map((r) => r.sum),
        rows.map((r) => r.count),
        rows.map((r) => r.min),
        rows.map((r) => r.max),
        rows.map((r) => r.first),
        rows.map((r) => r.firstTs),
        rows.map((r) => r.last),
        rows.map((r) => r.lastTs),
      ];
      if (hourly.length) await client.query(MERGE_ROLLUPS, [...params(hourly), ...params(daily)]);
    }
    return true;
  }
}
