// TypeBox schemas of the REST API (request and response), shared by the routes and the OpenAPI
// document. Response schemas double as output filters: a column not listed here never leaves.
// Nullable output fields use `nullable: true` so that dates from pg (Date objects) serialise.
import { type TSchema, Type } from "@sinclair/typebox";
import { Requests } from "../contract/index.ts";
import { ApiErrorBody } from "./errors.ts";

const nullable = <T extends TSchema>(schema: T) =>
  Type.Unsafe<T["static"] | null>({ ...schema, nullable: true });

export const N = {
  str: (o: object = {}) => nullable(Type.String(o)),
  int: (o: object = {}) => nullable(Type.Integer(o)),
  num: (o: object = {}) => nullable(Type.Number(o)),
  bool: (o: object = {}) => nullable(Type.Boolean(o)),
  time: (o: object = {}) =>
    Type.Unsafe<string | Date | null>({ type: "string", format: "date-time", nullable: true, ...o }),
};

/** Output timestamps: pg hands out Date objects, the serializer writes ISO 8601. */
export const Time = Type.Unsafe<string | Date>({ type: "string", format: "date-time" });

export const GatewayId = Type.String({
  minLength: 1,
  maxLength: 64,
  pattern: "^[^+#/$\\s][^+#/\\u0000-\\u001f]*$",
  description: "Gateway id (one MQTT topic level)",
});
export const DeviceInstance = Type.Integer({
  minimum: 0,
  maximum: 4194303,
  description: "BACnet device instance",
});
export const PointName = Type.String({
  pattern: "^[a-z][a-z0-9_]*_[0-9]{1,7}$",
  maxLength: 64,
  description: "<object_type>_<instance>, e.g. analog_input_3",
});
export const PointId = Type.Integer({
  minimum: 1,
  maximum: Number.MAX_SAFE_INTEGER,
  description: "points.point_id",
});

export const GatewayParams = Type.Object({ gateway: GatewayId });
export const DeviceParams = Type.Object({ gateway: GatewayId, device: DeviceInstance });
export const PointParams = Type.Object({ gateway: GatewayId, device: DeviceInstance, point: PointName });
export const PointIdParams = Type.Object({ point_id: PointId });

/** The error responses every route can give, by status. */
export const errors = (...statuses: number[]) =>
  Object.fromEntries(statuses.map((s) => [s, ApiErrorBody])) as Record<number, typeof ApiErrorBody>;

// ---- inventory -------------------------------------------------------------------------------

export const Gateway = Type.Object({
  gateway_id: Type.String(),
  base_topic: N.str(),
  state: N.str({ description: "online/offline from bridge/state (database, else live MQTT)" }),
  bd_seq: N.int(),
  info: Type.Optional(Type.Unknown({ description: "bridge/info payload" })),
  last_seen: N.time(),
  updated_at: N.time(),
  devices: Type.Integer(),
  devices_online: Type.Integer(),
});

const deviceColumns = {
  gateway_id: Type.String(),
  device_instance: Type.Integer(),
  object_name: N.str(),
  description: N.str(),
  location: N.str(),
  vendor_id: N.int(),
  vendor_name: N.str(),
  model_name: N.str(),
  address: N.str(),
  online: N.bool(),
  last_seen: N.time(),
  updated_at: N.time(),
};

export const DeviceSummary = Type.Object({ ...deviceColumns, points: Type.Integer() });

export const Latest = Type.Unsafe<{
  time: string;
  value: number | null;
  value_text: string | null;
  status_flags: number | null;
  quality: string | null;
} | null>({
  ...Type.Object({
    time: Time,
    value: N.num(),
    value_text: N.str(),
    status_flags: N.int({ description: "bit0 in_alarm, bit1 fault, bit2 overridden, bit3 out_of_service" }),
    quality: N.str(),
  }),
  nullable: true,
  description: "The most recent stored reading, or null when none",
});

export const Point = Type.Object({
  point_id: Type.Integer(),
  gateway_id: Type.String(),
  device_instance: Type.Integer(),
  point: Type.String(),
  object_type: N.str(),
  object_instance: N.int(),
  name: N.str(),
  description: N.str(),
  units: N.str(),
  units_code: N.int(),
  writable: N.bool(),
  state_texts: Type.Unsafe<string[] | null>({ type: "array", items: { type: "string" }, nullable: true }),
  active_text: N.str(),
  inactive_text: N.str(),
  cov_increment: N.num(),
  updated_at: N.time(),
  latest: Latest,
});

export const DeviceDetail = Type.Object({
  ...deviceColumns,
  firmware_revision: N.str(),
  application_software_version: N.str(),
  network: N.int(),
  mac: N.str(),
  max_apdu: N.int(),
  segmentation: N.str(),
  points: Type.Array(Point),
});

export const DeviceSort = Type.Union(
  [
    Type.Literal("name"),
    Type.Literal("instance"),
    Type.Literal("vendor"),
    Type.Literal("last_seen"),
    Type.Literal("gateway"),
  ],
  { default: "name" },
);

export const DeviceQuery = Type.Object({
  gateway: Type.Optional(GatewayId),
  status: Type.Optional(Type.Union([Type.Literal("online"), Type.Literal("offline")])),
  vendor: Type.Optional(
    Type.String({ maxLength: 128, description: "vendor name contains (case-insensitive)" }),
  ),
  name: Type.Optional(Type.String({ maxLength: 128, description: "object name or description contains" })),
  q: Type.Optional(
    Type.String({
      maxLength: 128,
      description: "search: name, description, location, vendor, model or instance",
    }),
  ),
  sort: Type.Optional(DeviceSort),
  order: Type.Optional(Type.Union([Type.Literal("asc"), Type.Literal("desc")], { default: "asc" })),
  limit: Type.Integer({ minimum: 1, maximum: 500, default: 50 }),
  cursor: Type.Optional(
    Type.String({
      minLength: 1,
      maxLength: 2048,
      pattern: "^[A-Za-z0-9_-]+$",
      description: "`next_cursor` of the previous page (same sort and order): the next page",
    }),
  ),
  count: Type.Optional(
    Type.Boolean({
      description: "count the matches into `total`; default: on a first page, not with a cursor",
    }),
  ),
  offset: Type.Integer({
    minimum: 0,
    maximum: 10_000_000,
    default: 0,
    description: "legacy paging, slower on deep pages: prefer `cursor`",
  }),
});

export const DevicePage = Type.Object({
  total: N.int({ description: "matching devices; null on cursor pages unless count=true" }),
  limit: Type.Integer(),
  offset: N.int({ description: "the offset asked for; null on cursor pages" }),
  next_cursor: N.str({ description: "pass as `cursor` for the next page; null on the last page" }),
  items: Type.Array(DeviceSummary),
});

// ---- history and stats ----------------------------------------------------------------------

export const Resolution = Type.Union(
  [Type.Literal("auto"), Type.Literal("raw"), Type.Literal("hourly"), Type.Literal("daily")],
  { default: "auto", description: "auto: raw up to 2 days, hourly up to 90 days, daily beyond" },
);

const range = {
  from: Type.Optional(Type.String({ format: "date-time", description: "default: 24 hours before `to`" })),
  to: Type.Optional(Type.String({ format: "date-time", description: "default: now" })),
};

export const HistoryQuery = Type.Object({
  ...range,
  resolution: Type.Optional(Resolution),
  limit: Type.Integer({ minimum: 1, maximum: 100_000, default: 10_000, description: "rows per point" }),
});

export const MultiHistoryQuery = Type.Object({
  ...range,
  points: Type.String({
    pattern: "^[0-9]{1,15}(,[0-9]{1,15}){0,49}$",
    description: "comma-separated point ids (at most 50)",
  }),
  resolution: Type.Optional(Resolution),
  limit: Type.Integer({ minimum: 1, maximum: 100_000, default: 10_000, description: "rows per point" }),
});

export const HistoryRow = Type.Object({
  time: Time,
  value: N.num({ description: "raw value, or the bucket average" }),
  value_text: Type.Optional(N.str()),
  quality: Type.Optional(N.str()),
  min: Type.Optional(N.num()),
  max: Type.Optional(N.num()),
  count: Type.Optional(Type.Integer()),
  last: Type.Optional(N.num()),
});

export const Series = Type.Object({
  point_id: Type.Integer(),
  gateway_id: Type.String(),
  device_instance: Type.Integer(),
  point: Type.String(),
  name: N.str(),
  units: N.str(),
  truncated: Type.Boolean({ description: "more rows than `limit` exist in the range" }),
  rows: Type.Array(HistoryRow),
});

export const History = Type.Object({
  resolution: Type.Union([Type.Literal("raw"), Type.Literal("hourly"), Type.Literal("daily")]),
  from: Time,
  to: Time,
  series: Type.Array(Series),
});

export const Period = Type.Union([Type.Literal("hourly"), Type.Literal("daily")], { default: "hourly" });

export const StatsQuery = Type.Object({
  ...range,
  period: Type.Optional(Period),
  limit: Type.Integer({ minimum: 1, maximum: 50_000, default: 5_000 }),
});

export const StatsRow = Type.Object({
  bucket: Time,
  avg: N.num(),
  min: N.num(),
  max: N.num(),
  count: Type.Integer(),
  last: N.num(),
});

export const PointStats = Type.Object({
  point_id: Type.Integer(),
  period: Type.String(),
  from: Time,
  to: Time,
  rows: Type.Array(StatsRow),
});

export const DeviceStats = Type.Object({
  gateway_id: Type.String(),
  device_instance: Type.Integer(),
  period: Type.String(),
  from: Time,
  to: Time,
  points: Type.Array(
    Type.Object({
      point_id: Type.Integer(),
      point: Type.String(),
      name: N.str(),
      units: N.str(),
      avg: N.num(),
      min: N.num(),
      max: N.num(),
      count: Type.Integer(),
      last: N.num(),
      buckets: Type.Array(StatsRow),
    }),
  ),
});

// ---- commands and audit ---------------------------------------------------------------------

export const WriteValue = Type.Union([Type.Number(), Type.Boolean(), Type.String({ maxLength: 4096 })], {
  description: "numbers for analog/multi-state, booleans for binary, strings for text",
});
export const Priority = Type.Integer({ minimum: 1, maximum: 16, description: "BACnet priority 1-16" });

export const WriteBody = Type.Object(
  { value: WriteValue, priority: Type.Optional(Priority) },
  { additionalProperties: false },
);
export const RelinquishBody = Type.Object(
  { priority: Type.Optional(Priority) },
  { additionalProperties: false },
);
export const ReadBody = Type.Object(
  {
    property: Type.Optional(Type.String({ pattern: "^[a-z_]+$|^[0-9]+$", maxLength: 64 })),
    index: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export const EmptyBody = Type.Object({}, { additionalProperties: false });
// The api's discovery body is the gateway's discover request without the transaction (the api
// makes its own), so the two can never disagree on a limit.
export const DiscoverBody = Type.Omit(Requests.discover, ["transaction"], { additionalProperties: false });

export const CommandResult = Type.Object({
  gateway_id: Type.String(),
  transaction: Type.String({ description: "the MQTT transaction id of the relayed request" }),
  data: Type.Unknown({ description: "the gateway's answer (see docs/mqtt-api.md)" }),
});

export const AuditRow = Type.Object({
  id: Type.Integer(),
  time: Time,
  gateway_id: Type.String(),
  device_instance: N.int(),
  point: N.str(),
  value: Type.Unknown({ description: "the written value; null = relinquish" }),
  priority: N.int(),
  source: N.str({ description: "api or mqtt" }),
  actor: N.str(),
  result: N.str({ description: "ok, refused, error or timeout" }),
  error_code: N.str(),
  error_message: N.str(),
  transaction: N.str(),
});

export const AuditQuery = Type.Object({
  gateway: Type.Optional(GatewayId),
  device: Type.Optional(DeviceInstance),
  point: Type.Optional(PointName),
  result: Type.Optional(
    Type.Union([Type.Literal("ok"), Type.Literal("refused"), Type.Literal("error"), Type.Literal("timeout")]),
  ),
  before: Type.Optional(Type.Integer({ minimum: 1, description: "only entries with a smaller id (paging)" })),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
});

export const ApiKeyInfo = Type.Object({
  id: Type.Integer(),
  name: Type.String(),
  role: Type.String(),
  created_at: Time,
  last_used_at: N.time(),
  revoked: Type.Boolean(),
});
