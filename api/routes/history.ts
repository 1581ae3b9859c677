// History and statistics: raw readings, or the hourly/daily aggregates (`readings_hourly`,
// `readings_daily`, identical in both storage dialects), for one point or several; CSV export;
// per-point and per-device stats. Reads only; every statement parameterised.
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import type pg from "pg";
import { ApiError, badRequest, notFound } from "../errors.ts";
import {
  DeviceParams,
  DeviceStats,
  errors,
  History,
  HistoryQuery,
  MultiHistoryQuery,
  PointIdParams,
  PointStats,
  StatsQuery,
} from "../schemas.ts";

type Resolution = "raw" | "hourly" | "daily";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

export interface Range {
  from: Date;
  to: Date;
}

export function parseRange(q: { from?: string; to?: string }, now = new Date()): Range {
  const to = q.to ? new Date(q.to) : now;
  const from = q.from ? new Date(q.from) : new Date(to.getTime() - DAY);
  if (!(from.getTime() < to.getTime())) throw badRequest("`from` must be before `to`");
  return { from, to };
}

/** auto: raw up to 2 days, hourly up to 90 days, daily beyond. */
export function chooseResolution(requested: string | undefined, range: Range): Resolution {
  if (requested === "raw" || requested === "hourly" || requested === "daily") return requested;
  const span = range.to.getTime() - range.from.getTime();
  if (span <= 2 * DAY) return "raw";
  if (span <= 90 * DAY) return "hourly";
  return "daily";
}

/** Start of the UTC bucket containing t, so the bucket that holds `from` is included. */
function bucketStart(t: Date, period: "hourly" | "daily"): Date {
  const size = period === "hourly" ? HOUR : DAY;
  return new Date(Math.floor(t.getTime() / size) * size);
}

const SQL = {
  raw: `SELECT time, value, value_text, quality FROM readings
        WHERE point_id = $1 AND time >= $2 AND time < $3 ORDER BY time LIMIT $4`,
  hourly: `SELECT bucket AS time, avg AS value, min, max, count, last FROM readings_hourly
           WHERE point_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket LIMIT $4`,
  daily: `SELECT bucket AS time, avg AS value, min, max, count, last FROM readings_daily
          WHERE point_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket LIMIT $4`,
} as const;

export const STATS_SQL = {
  hourly: `SELECT bucket, avg, min, max, count, last FROM readings_hourly
           WHERE point_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket LIMIT $4`,
  daily: `SELECT bucket, avg, min, max, count, last FROM readings_daily
          WHERE point_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket LIMIT $4`,
} as const;

const DEVICE_STATS_SQL = {
  hourly: `SELECT point_id, bucket, avg, min, max, count, last FROM readings_hourly
           WHERE point_id = ANY($1::bigint[]) AND bucket >= $2 AND bucket < $3
           ORDER BY point_id, bucket LIMIT $4`,
  daily: `SELECT point_id, bucket, avg, min, max, count, last FROM readings_daily
          WHERE point_id = ANY($1::bigint[]) AND bucket >= $2 AND bucket < $3
          ORDER BY point_id, bucket LIMIT $4`,
} as const;

interface PointInfo {
  point_id: number;
  gateway_id: string;
  device_instance: number;
  point: string;
  name: string | null;
  units: string | null;
}

async function pointInfos(db: pg.Pool, ids: number[]): Promise<PointInfo[]> {
  const { rows } = await db.query<PointInfo>(
    `SELECT point_id, gateway_id, device_instance, point, name, units FROM points
     WHERE point_id = ANY($1::bigint[])`,
    [ids],
  );
  const byId = new Map(rows.map((r) => [Number(r.point_id), { ...r, point_id: Number(r.point_id) }]));
  const missing = ids.filter((id) => !byId.has(id));
  if (missing.length)
    throw new ApiError(404, "API_ERR_NOT_FOUND", `unknown point id(s): ${missing.join(", ")}`);
  return ids.map((id) => byId.get(id) as PointInfo);
}

async function series(db: pg.Pool, info: PointInfo, resolution: Resolution, range: Range, limit: number) {
  const from = resolution === "raw" ? range.from : bucketStart(range.from, resolution);
  const { rows } = await db.query(SQL[resolution], [info.point_id, from, range.to, limit + 1]);
  const truncated = rows.length > limit;
  if (truncated) rows.pop();
  return { ...info, truncated, rows };
}

async function history(
  db: pg.Pool,
  ids: number[],
  q: { from?: string; to?: string; resolution?: string; limit: number },
) {
  const range = parseRange(q);
  const resolution = chooseResolution(q.resolution, range);
  const infos = await pointInfos(db, ids);
  const out = await Promise.all(infos.map((info) => series(db, info, resolution, range, q.limit)));
  return { resolution, from: range.from.toISOString(), to: range.to.toISOString(), series: out };
}

function parseIds(text: string): number[] {
  const ids = [...new Set(text.split(",").map(Number))];
  if (ids.some((id) => !Number.isSafeInteger(id) || id < 1))
    throw badRequest("`points` must be point ids ≥ 1");
  return ids;
}

/** One CSV cell; text that a spreadsheet would run as a formula is prefixed with a quote. */
export function csvCell(v: unknown): string {
  if (v === null || v === undefined) return "";
  if (v instanceof Date) return v.toISOString();
  let s = String(v);
  if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export const historyRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get(
    "/api/points/:point_id/history",
    {
      config: { access: "read" },
      schema: {
        tags: ["history"],
        summary: "A point's values between two times (raw, hourly, daily or auto)",
        params: PointIdParams,
        querystring: HistoryQuery,
        response: { 200: History, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => history(app.db, [request.params.point_id], request.query),
  );

  app.get(
    "/api/history",
    {
      config: { access: "read" },
      schema: {
        tags: ["history"],
        summary: "Several points' values at once",
        querystring: MultiHistoryQuery,
        response: { 200: History, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => history(app.db, parseIds(request.query.points), request.query),
  );

  app.get(
    "/api/history.csv",
    {
      config: { access: "read" },
      schema: {
        tags: ["history"],
        summary: "Several points' values as CSV (one row per point and time)",
        querystring: MultiHistoryQuery,
        response: {
          // CSV for the answer, JSON (the default) for the errors: per status, not `produces`.
          200: {
            description: "CSV: point_id,gateway_id,device_instance,point,name,units,time,value,…",
            content: { "text/csv": { schema: Type.String() } },
          },
          ...errors(400, 401, 403, 404),
        },
      },
    },
    async (request, reply) => {
      const h = await history(app.db, parseIds(request.query.points), request.query);
      const lines = [
        "point_id,gateway_id,device_instance,point,name,units,time,value,value_text,min,max,count",
      ];
      for (const s of h.series) {
        const head = [s.point_id, s.gateway_id, s.device_instance, s.point, s.name, s.units]
          .map(csvCell)
          .join(",");
        for (const r of s.rows)
          lines.push(
            `${head},${[r.time, r.value, r.value_text, r.min, r.max, r.count].map(csvCell).join(",")}`,
          );
      }
      void reply
        .type("text/csv; charset=utf-8")
        .header("content-disposition", `attachment; filename="bacmqtt-history-${h.resolution}.csv"`);
      return `${lines.join("\r\n")}\r\n`;
    },
  );

  app.get(
    "/api/points/:point_id/stats",
    {
      config: { access: "read" },
      schema: {
        tags: ["stats"],
        summary: "Hourly or daily avg/min/max/count/last of one point",
        params: PointIdParams,
        querystring: StatsQuery,
        response: { 200: PointStats, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const q = request.query;
      const range = parseRange(q);
      const period = q.period ?? "hourly";
      const { rows } = await app.db.query(STATS_SQL[period], [
        request.params.point_id,
        bucketStart(range.from, period),
        range.to,
        q.limit,
      ]);
      // Only an empty answer needs the second look: an unknown point is a 404, not an empty list.
      if (rows.length === 0) await pointInfos(app.db, [request.params.point_id]);
      return {
        point_id: request.params.point_id,
        period,
        from: range.from.toISOString(),
        to: range.to.toISOString(),
        rows,
      };
    },
  );

  app.get(
    "/api/gateways/:gateway/devices/:device/stats",
    {
      config: { access: "read" },
      schema: {
        tags: ["stats"],
        summary: "Hourly or daily stats of every point of a device, with a summary per point",
        params: DeviceParams,
        querystring: StatsQuery,
        response: { 200: DeviceStats, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const { gateway, device } = request.params;
      const q = request.query;
      const range = parseRange(q);
      const period = q.period ?? "hourly";
      const pts = await app.db.query<PointInfo>(
        `SELECT point_id, point, name, units FROM points WHERE gateway_id = $1 AND device_instance = $2
         ORDER BY object_type, object_instance, point`,
        [gateway, device],
      );
      if (pts.rows.length === 0) {
        const dev = await app.db.query(
          "SELECT 1 FROM devices WHERE gateway_id = $1 AND device_instance = $2",
          [gateway, device],
        );
        if (!dev.rows[0]) throw notFound(`device ${device} of gateway "${gateway}"`);
      }
      const ids = pts.rows.map((p) => p.point_id);
      const { rows } = await app.db.query(DEVICE_STATS_SQL[period], [
        ids,
        bucketStart(range.from, period),
        range.to,
        q.limit,
      ]);
      const byPoint = new Map<string, typeof rows>();
      for (const r of rows) {
        const key = String(r.point_id);
        const list = byPoint.get(key) ?? [];
        list.push(r);
        byPoint.set(key, list);
      }
      return {
        gateway_id: gateway,
        device_instance: device,
        period,
        from: range.from.toISOString(),
        to: range.to.toISOString(),
        points: pts.rows.map((p) => {
          const buckets = byPoint.get(String(p.point_id)) ?? [];
          let sum = 0;
          let count = 0;
          let min: number | null = null;
          let max: number | null = null;
          for (const b of buckets) {
            const n = Number(b.count);
            sum += Number(b.avg) * n;
            count += n;
            min = min === null ? b.min : Math.min(min, b.min);
            max = max === null ? b.max : Math.max(max, b.max);
          }
          return {
            point_id: p.point_id,
            point: p.point,
            name: p.name,
            units: p.units,
            avg: count ? sum / count : null,
            min,
            max,
            count,
            last: buckets.length ? buckets[buckets.length - 1]?.last : null,
            buckets,
          };
        }),
      };
    },
  );
};
