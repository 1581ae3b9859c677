// Inventory: gateways, devices (filter, search, sort, paging), one device with its points and their
// latest values, one point. Every statement is parameterised; the ORDER BY of the device list is
// picked from a fixed table of clauses by a validated enum, never from client text.
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import { notFound } from "../errors.ts";
import {
  DeviceDetail,
  DevicePage,
  DeviceParams,
  DeviceQuery,
  errors,
  Gateway,
  GatewayParams,
  Point,
  PointIdParams,
  PointParams,
} from "../schemas.ts";

// Byte-order ("C") comparison of lower-cased names: a stable, locale-independent order that sorts
// several times faster than the database's linguistic collation.
const SORT_SQL: Record<string, string> = {
  name: 'lower(d.object_name) COLLATE "C" %s NULLS LAST, d.gateway_id, d.device_instance',
  instance: "d.device_instance %s, d.gateway_id",
  vendor: 'lower(d.vendor_name) COLLATE "C" %s NULLS LAST, d.gateway_id, d.device_instance',
  last_seen: "d.last_seen %s NULLS LAST, d.gateway_id, d.device_instance",
  gateway: "d.gateway_id %s, d.device_instance",
};

const FILTERS = `
    ($1::text IS NULL OR d.gateway_id = $1)
    AND ($2::bool IS NULL OR d.online IS NOT DISTINCT FROM $2)
    AND ($3::text IS NULL OR d.vendor_name ILIKE $3)
    AND ($4::text IS NULL OR d.object_name ILIKE $4 OR d.description ILIKE $4)
    AND ($5::text IS NULL OR d.object_name ILIKE $5 OR d.description ILIKE $5 OR d.location ILIKE $5
         OR d.vendor_name ILIKE $5 OR d.model_name ILIKE $5 OR d.device_instance::text = $6)`;

// The page is chosen on the key columns first (an index on the sort key serves it without sorting
// every device), then only its rows are fetched and their points counted. The total is a separate
// count run at the same time on another connection: a window count would make every request read
// and sort all devices.
const DEVICE_LIST = (orderBy: string) => `
  WITH page AS (
    SELECT d.gateway_id, d.device_instance
    FROM devices d
    WHERE ${FILTERS}
    ORDER BY ${orderBy}
    LIMIT $7 OFFSET $8
  )
  SELECT d.gateway_id, d.device_instance, d.object_name, d.description, d.location, d.vendor_id,
         d.vendor_name, d.model_name, d.address, d.online, d.last_seen, d.updated_at,
         (SELECT count(*) FROM points p
           WHERE p.gateway_id = d.gateway_id AND p.device_instance = d.device_instance)::int AS points
  FROM page JOIN devices d USING (gateway_id, device_instance)
  ORDER BY ${orderBy}`;

export const DEVICE_COUNT = `SELECT count(*)::int AS total FROM devices d WHERE ${FILTERS}`;

/** Every (sort, order) statement, built once from the constants above. */
export const DEVICE_LIST_SQL: Record<string, string> = {};
for (const [key, clause] of Object.entries(SORT_SQL)) {
  DEVICE_LIST_SQL[`${key}:asc`] = DEVICE_LIST(clause.replace("%s", "ASC"));
  DEVICE_LIST_SQL[`${key}:desc`] = DEVICE_LIST(clause.replace("%s", "DESC"));
}

/** `%text%` for ILIKE with the client's own wildcards escaped. */
export function contains(text: string | undefined): string | null {
  if (text === undefined || text === "") return null;
  return `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}

export const POINT_COLUMNS = `
  p.point_id, p.gateway_id, p.device_instance, p.point, p.object_type, p.object_instance, p.name,
  p.description, p.units, p.units_code, p.writable, p.state_texts, p.active_text, p.inactive_text,
  p.cov_increment, p.updated_at,
  l.time AS l_time, l.value AS l_value, l.value_text AS l_value_text, l.status_flags AS l_status_flags,
  l.quality AS l_quality`;

export const LATEST_JOIN = `
  LEFT JOIN LATERAL (
    SELECT r.time, r.value, r.value_text, r.status_flags, r.quality FROM readings r
    WHERE r.point_id = p.point_id ORDER BY r.time DESC LIMIT 1
  ) l ON true`;

// biome-ignore lint/suspicious/noExplicitAny: a pg row
export function pointFromRow(r: any) {
  const { l_time, l_value, l_value_text, l_status_flags, l_quality, ...point } = r;
  return {
    ...point,
    latest:
      l_time == null
        ? null
        : {
            time: l_time,
            value: l_value,
            value_text: l_value_text,
            status_flags: l_status_flags,
            quality: l_quality,
          },
  };
}

export const inventoryRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get(
    "/api/gateways",
    {
      config: { access: "read" },
      schema: {
        tags: ["inventory"],
        summary: "Every gateway with its state and device counts",
        response: { 200: Type.Object({ items: Type.Array(Gateway) }), ...errors(401, 403) },
      },
    },
    async () => {
      const { rows } = await app.db.query(
        `SELECT g.gateway_id, g.base_topic, g.state, g.bd_seq, g.info, g.last_seen, g.updated_at,
                (SELECT count(*) FROM devices d WHERE d.gateway_id = g.gateway_id)::int AS devices,
                (SELECT count(*) FROM devices d WHERE d.gateway_id = g.gateway_id AND d.online)::int AS devices_online
         FROM gateways g ORDER BY g.gateway_id`,
      );
      const seen = new Set(rows.map((r) => r.gateway_id as string));
      // A gateway the broker knows of before ingest has stored it still shows, with its live state.
      for (const [gateway_id, s] of app.relay.gatewayStates) {
        if (!seen.has(gateway_id))
          rows.push({
            gateway_id,
            base_topic: app.relay.baseTopic,
            state: s.state,
            bd_seq: s.bd_seq,
            last_seen: s.timestamp,
            updated_at: s.timestamp,
            devices: 0,
            devices_online: 0,
          });
      }
      return { items: rows };
    },
  );

  app.get(
    "/api/gateways/:gateway",
    {
      config: { access: "read" },
      schema: {
        tags: ["inventory"],
        summary: "One gateway",
        params: GatewayParams,
        response: { 200: Gateway, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const { rows } = await app.db.query(
        `SELECT g.gateway_id, g.base_topic, g.state, g.bd_seq, g.info, g.last_seen, g.updated_at,
                (SELECT count(*) FROM devices d WHERE d.gateway_id = g.gateway_id)::int AS devices,
                (SELECT count(*) FROM devices d WHERE d.gateway_id = g.gateway_id AND d.online)::int AS devices_online
         FROM gateways g WHERE g.gateway_id = $1`,
        [request.params.gateway],
      );
      if (!rows[0]) throw notFound(`gateway "${request.params.gateway}"`);
      return rows[0];
    },
  );

  app.get(
    "/api/devices",
    {
      config: { access: "read" },
      schema: {
        tags: ["inventory"],
        summary: "Devices, filtered, searched, sorted and paged",
        querystring: DeviceQuery,
        response: { 200: DevicePage, ...errors(400, 401, 403) },
      },
    },
    async (request) => {
      const q = request.query;
      const sort = q.sort ?? "name";
      const order = q.order ?? "asc";
      const filters = [
        q.gateway ?? null,
        q.status === undefined ? null : q.status === "online",
        contains(q.vendor),
        contains(q.name),
        contains(q.q),
        q.q ?? null,
      ];
      const sql = DEVICE_LIST_SQL[`${sort}:${order}`] as string;
      const [page, count] = await Promise.all([
        app.db.query(sql, [...filters, q.limit, q.offset]),
        app.db.query<{ total: number }>(DEVICE_COUNT, filters),
      ]);
      return { total: count.rows[0]?.total ?? 0, limit: q.limit, offset: q.offset, items: page.rows };
    },
  );

  app.get(
    "/api/gateways/:gateway/devices/:device",
    {
      config: { access: "read" },
      schema: {
        tags: ["inventory"],
        summary: "One device with its points and their latest values",
        params: DeviceParams,
        response: { 200: DeviceDetail, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const { gateway, device } = request.params;
      const [dev, pts] = await Promise.all([
        app.db.query("SELECT * FROM devices WHERE gateway_id = $1 AND device_instance = $2", [
          gateway,
          device,
        ]),
        app.db.query(
          `SELECT ${POINT_COLUMNS} FROM points p ${LATEST_JOIN}
           WHERE p.gateway_id = $1 AND p.device_instance = $2
           ORDER BY p.object_type, p.object_instance, p.point`,
          [gateway, device],
        ),
      ]);
      if (!dev.rows[0]) throw notFound(`device ${device} of gateway "${gateway}"`);
      return { ...dev.rows[0], points: pts.rows.map(pointFromRow) };
    },
  );

  app.get(
    "/api/gateways/:gateway/devices/:device/points/:point",
    {
      config: { access: "read" },
      schema: {
        tags: ["inventory"],
        summary: "One point with its latest value",
        params: PointParams,
        response: { 200: Point, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const { gateway, device, point } = request.params;
      const { rows } = await app.db.query(
        `SELECT ${POINT_COLUMNS} FROM points p ${LATEST_JOIN}
         WHERE p.gateway_id = $1 AND p.device_instance = $2 AND p.point = $3`,
        [gateway, device, point],
      );
      if (!rows[0]) throw notFound(`point ${point} of device ${device} on gateway "${gateway}"`);
      return pointFromRow(rows[0]);
    },
  );

  app.get(
    "/api/points/:point_id",
    {
      config: { access: "read" },
      schema: {
        tags: ["inventory"],
        summary: "One point by its id, with its latest value",
        params: PointIdParams,
        response: { 200: Point, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const { rows } = await app.db.query(
        `SELECT ${POINT_COLUMNS} FROM points p ${LATEST_JOIN} WHERE p.point_id = $1`,
        [request.params.point_id],
      );
      if (!rows[0]) throw notFound(`point ${request.params.point_id}`);
      return pointFromRow(rows[0]);
    },
  );
};
