// Inventory: gateways, devices (filter, search, sort, paging), one device with its points and their
// latest values, one point. Every statement is parameterised; the ORDER BY of the device list is
// picked from a fixed table of clauses by a validated enum, never from client text.
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import { badRequest, notFound } from "../errors.ts";
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

// Every sort is a tuple of non-null key expressions ending in the primary key, so that the order is
// total and a page can start right after the previous page's last row: keyset ("cursor") paging, a
// row comparison the index walk starts from, instead of OFFSET, which reads and discards every row
// before the page (at 10,000 devices the planner then sorts the whole table). Nullable columns sort
// as (IS NULL, coalesce(…)): nulls last in ascending order. `desc` is the exact reverse of `asc`
// (nulls first) so that one index serves both directions. Names and vendors compare lower-cased in
// byte order ("C"): locale-independent and several times faster than linguistic collation. The name
// and vendor expressions are those of the indexes of migration 3; keep them identical.
interface SortKeys {
  /** Key expressions over `devices d`, in order. */
  keys: string[];
  /** The SQL type of each key, for the cursor's parameters. */
  types: string[];
}

const nullableText = (col: string) => [`(d.${col} IS NULL)`, `(coalesce(lower(d.${col}), '') COLLATE "C")`];

const SORTS: Record<DeviceSortKey, SortKeys> = {
  name: {
    keys: [...nullableText("object_name"), "d.gateway_id", "d.device_instance"],
    types: ["bool", "text", "text", "int"],
  },
  vendor: {
    keys: [...nullableText("vendor_name"), "d.gateway_id", "d.device_instance"],
    types: ["bool", "text", "text", "int"],
  },
  // A timestamp travels in the cursor as whole microseconds since the epoch: exact, and a number
  // that is simple to check (a Date would lose the microseconds, text would need parsing).
  last_seen: {
    keys: ["(d.last_seen IS NULL)", "coalesce(d.last_seen, 'epoch')", "d.gateway_id", "d.device_instance"],
    types: ["bool", "usec", "text", "int"],
  },
  instance: { keys: ["d.device_instance", "d.gateway_id"], types: ["int", "text"] },
  gateway: { keys: ["d.gateway_id", "d.device_instance"], types: ["text", "int"] },
};

export type DeviceSortKey = "name" | "instance" | "vendor" | "last_seen" | "gateway";
export type KeyValue = boolean | string | number;

export interface DeviceFilters {
  gateway?: string | undefined;
  /** online / offline; unknown (null) matches neither. */
  online?: boolean | undefined;
  vendor?: string | undefined;
  name?: string | undefined;
  q?: string | undefined;
}

export interface DeviceListRequest extends DeviceFilters {
  sort: DeviceSortKey;
  order: "asc" | "desc";
  limit: number;
  /** Keys of the last row of the previous page (from a cursor). */
  after?: KeyValue[] | undefined;
  /** Legacy paging: rows to skip. Only without `after`. */
  offset?: number | undefined;
}

// Unnamed statements on purpose: a named (server-side prepared) statement is per session, and on
// the embedded database (PGlite behind pglite-socket) every connection shares one session, so two
// connections preparing the same name collide.
export interface Statement {
  text: string;
  values: unknown[];
}

const COLUMNS = `d.gateway_id, d.device_instance, d.object_name, d.description, d.location, d.vendor_id,
         d.vendor_name, d.model_name, d.address, d.online, d.last_seen, d.updated_at`;

/** Only the filters given become SQL (fixed fragments, values as parameters): plans stay simple. */
function whereClause(f: DeviceFilters, values: unknown[]): string[] {
  const param = (v: unknown) => {
    values.push(v);
    return `$${values.length}`;
  };
  const where: string[] = [];
  if (f.gateway !== undefined) where.push(`d.gateway_id = ${param(f.gateway)}`);
  if (f.online !== undefined) where.push(`d.online IS NOT DISTINCT FROM ${param(f.online)}::bool`);
  const vendor = contains(f.vendor);
  if (vendor !== null) where.push(`d.vendor_name ILIKE ${param(vendor)}`);
  const name = contains(f.name);
  if (name !== null) {
    const p = param(name);
    where.push(`(d.object_name ILIKE ${p} OR d.description ILIKE ${p})`);
  }
  const q = contains(f.q);
  if (q !== null) {
    const p = param(q);
    where.push(
      `(d.object_name ILIKE ${p} OR d.description ILIKE ${p} OR d.location ILIKE ${p}
        OR d.vendor_name ILIKE ${p} OR d.model_name ILIKE ${p} OR d.device_instance::text = ${param(f.q)})`,
    );
  }
  return where;
}

/**
 * The page statement of `GET /api/devices`. One row more than `limit` is read: whether it exists
 * says if there is a next page. The last columns, `_k0`…, are the row's sort keys.
 * By cursor (or on a first page) it is one level: the planner walks the sort's index from the
 * cursor (or, for an unindexed sort, keeps the top rows of one pass) and counts the points of the
 * returned rows only, after the LIMIT. With an OFFSET the skipped rows would be projected too, so
 * there the page is chosen on the key columns first and only its rows are fetched and counted.
 */
export function deviceListStatement(r: DeviceListRequest): Statement {
  const values: unknown[] = [];
  const where = whereClause(r, values);
  const { keys, types } = SORTS[r.sort];
  const dir = r.order === "desc" ? "DESC" : "ASC";
  if (r.after) {
    const after = r.after.map((v, i) => {
      values.push(v);
      const p = `$${values.length}`;
      return types[i] === "usec"
        ? `('epoch'::timestamptz + ${p}::bigint * interval '1 microsecond')`
        : `${p}::${types[i]}`;
    });
    where.push(`(${keys.join(", ")}) ${r.order === "desc" ? "<" : ">"} (${after.join(", ")})`);
  }
  values.push(r.limit + 1);
  let paging = `LIMIT $${values.length}`;
  const offset = !r.after && r.offset ? r.offset : 0;
  if (offset) {
    values.push(offset);
    paging += ` OFFSET $${values.length}`;
  }
  const whereSql = where.length ? `WHERE ${where.join("\n      AND ")}` : "";
  const orderBy = keys.map((k) => `${k} ${dir}`).join(", ");
  const keyColumns = keys
    .map(
      (k, i) => `${types[i] === "usec" ? `(extract(epoch FROM ${k}) * 1000000)::bigint::text` : k} AS _k${i}`,
    )
    .join(", ");
  const select = `SELECT ${COLUMNS},
         (SELECT count(*) FROM points p
           WHERE p.gateway_id = d.gateway_id AND p.device_instance = d.device_instance)::int AS points,
         ${keyColumns}`;
  const text = offset
    ? `
  WITH page AS (
    SELECT d.gateway_id, d.device_instance
    FROM devices d
    ${whereSql}
    ORDER BY ${orderBy}
    ${paging}
  )
  ${select}
  FROM page JOIN devices d USING (gateway_id, device_instance)
  ORDER BY ${orderBy}`
    : `
  ${select}
  FROM devices d
  ${whereSql}
  ORDER BY ${orderBy}
  ${paging}`;
  return { text, values };
}

/** The matching devices' count (`total`), with the same filters as the page. */
export function deviceCountStatement(f: DeviceFilters): Statement {
  const values: unknown[] = [];
  const where = whereClause(f, values);
  const text = `SELECT count(*)::int AS total FROM devices d${where.length ? ` WHERE ${where.join(" AND ")}` : ""}`;
  return { text, values };
}

// The cursor is opaque to clients: base64url of JSON {s: "sort:order", k: [keys of the last row]}.
// It carries no filters; a cursor used with other filters simply continues from that position.
export function encodeCursor(sort: DeviceSortKey, order: "asc" | "desc", keys: KeyValue[]): string {
  return Buffer.from(JSON.stringify({ s: `${sort}:${order}`, k: keys })).toString("base64url");
}

/** The keys of a cursor made for this sort and order; a 400 for anything else. */
export function decodeCursor(cursor: string, sort: DeviceSortKey, order: "asc" | "desc"): KeyValue[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8"));
  } catch {
    throw badRequest("`cursor` is not a cursor returned by this route");
  }
  const c = parsed as { s?: unknown; k?: unknown };
  if (typeof c !== "object" || c === null || !Array.isArray(c.k))
    throw badRequest("`cursor` is not a cursor returned by this route");
  if (c.s !== `${sort}:${order}`)
    throw badRequest(
      `\`cursor\` belongs to sort ${String(c.s)}, not ${sort}:${order}; start again without it`,
    );
  const { types } = SORTS[sort];
  const keys = c.k as unknown[];
  const ok =
    keys.length === types.length &&
    keys.every((v, i) => {
      const t = types[i];
      // Every value must be one the database accepts, so that a forged cursor is a 400, not a 500:
      // int4 range, timestamps within ±3,000 years of 1970, text without NUL.
      if (t === "bool") return typeof v === "boolean";
      if (t === "int") return Number.isInteger(v) && (v as number) >= -(2 ** 31) && (v as number) < 2 ** 31;
      if (t === "usec") return typeof v === "string" && /^-?[0-9]{1,17}$/.test(v);
      return typeof v === "string" && v.length <= 1024 && !v.includes("\u0000");
    });
  if (!ok) throw badRequest("`cursor` is not a cursor returned by this route");
  return keys as KeyValue[];
}

/** The sort keys of a page row (the `_k…` columns), for the next cursor. */
// biome-ignore lint/suspicious/noExplicitAny: a pg row
function rowKeys(sort: DeviceSortKey, row: any): KeyValue[] {
  return SORTS[sort].keys.map((_, i) => row[`_k${i}`] as KeyValue);
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
      if (q.cursor !== undefined && q.offset)
        throw badRequest("`cursor` and `offset` cannot be combined; use `cursor` alone");
      const filters: DeviceFilters = {
        gateway: q.gateway,
        online: q.status === undefined ? undefined : q.status === "online",
        vendor: q.vendor,
        name: q.name,
        q: q.q,
      };
      const after = q.cursor === undefined ? undefined : decodeCursor(q.cursor, sort, order);
      // Counting reads every matching device: done for a first page (and legacy offset paging),
      // where a client learns the total once, not for every following page unless asked.
      const count = q.count ?? after === undefined;
      const list = deviceListStatement({ ...filters, sort, order, limit: q.limit, after, offset: q.offset });
      const [page, total] = await Promise.all([
        app.db.query(list),
        count ? app.db.query<{ total: number }>(deviceCountStatement(filters)) : undefined,
      ]);
      const items = page.rows;
      const more = items.length > q.limit;
      if (more) items.pop();
      const last = items[items.length - 1];
      return {
        total: total ? (total.rows[0]?.total ?? 0) : null,
        limit: q.limit,
        offset: after === undefined ? q.offset : null,
        next_cursor: more && last ? encodeCursor(sort, order, rowKeys(sort, last)) : null,
        items,
      };
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
