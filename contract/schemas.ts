// Payload schemas for every topic of the contract (TypeBox, which is JSON Schema). Keys are
// snake_case. Requests carry an optional `transaction` that the response echoes.
import { type Static, type TSchema, Type } from "@sinclair/typebox";

const Timestamp = Type.String({ format: "date-time", description: "ISO 8601 UTC time" });
const DeviceInstance = Type.Integer({ minimum: 0, maximum: 4194303, description: "BACnet device instance" });
const PointName = Type.String({
  pattern: "^[a-z][a-z0-9_]*_[0-9]{1,7}$",
  maxLength: 64,
  description: "<object_type>_<instance>, e.g. analog_input_3",
});
const Transaction = Type.Union([Type.String({ maxLength: 128 }), Type.Integer()], {
  description: "Opaque correlation id, echoed in the response",
});
export const PointValue = Type.Union(
  [Type.Number(), Type.Boolean(), Type.String({ maxLength: 4096 }), Type.Null()],
  {
    description:
      "Numbers for analog/multi-state/enumerated, booleans for binary, strings for text, null when unknown",
  },
);

export const StatusFlags = Type.Object(
  {
    in_alarm: Type.Boolean(),
    fault: Type.Boolean(),
    overridden: Type.Boolean(),
    out_of_service: Type.Boolean(),
  },
  { additionalProperties: false },
);

export const ErrorBody = Type.Object(
  {
    code: Type.String({ description: "Stable error code, e.g. GW_ERR_BACNET_TIMEOUT" }),
    message: Type.String(),
    details: Type.Optional(Type.Unknown()),
  },
  { additionalProperties: false },
);

// ---- bridge/* -------------------------------------------------------------------------------

export const BridgeState = Type.Object(
  {
    state: Type.Union([Type.Literal("online"), Type.Literal("offline")]),
    bd_seq: Type.Integer({ minimum: 0, description: "Birth/death sequence, incremented per connection" }),
    timestamp: Timestamp,
    instance: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 64,
        description: "Random id of the gateway process, new at every start: two ids at once = a duplicate",
      }),
    ),
    started_at: Type.Optional(
      Type.String({
        format: "date-time",
        description: "When this instance started; of two instances with one gateway id the earlier stays",
      }),
    ),
  },
  { additionalProperties: false },
);

export const BridgeInfo = Type.Object(
  {
    version: Type.String(),
    gateway_id: Type.String(),
    started_at: Timestamp,
    bacnet: Type.Object({
      interface: Type.Union([Type.String(), Type.Null()]),
      address: Type.Union([Type.String(), Type.Null()]),
      port: Type.Integer(),
      broadcast: Type.Union([Type.String(), Type.Null()]),
      bbmd: Type.Union([Type.String(), Type.Null()]),
      device_instance: Type.Optional(Type.Union([Type.Integer(), Type.Null()])),
    }),
    mqtt: Type.Object({
      base_topic: Type.String(),
      url: Type.String({ description: "without credentials" }),
    }),
    config: Type.Record(Type.String(), Type.Unknown(), {
      description: "effective configuration, secrets removed",
    }),
  },
  { additionalProperties: false },
);

export const BridgeDevices = Type.Object(
  {
    timestamp: Timestamp,
    count: Type.Integer({ minimum: 0 }),
    online: Type.Integer({ minimum: 0 }),
    offline: Type.Integer({ minimum: 0 }),
    points: Type.Integer({ minimum: 0 }),
    device_instances: Type.Array(DeviceInstance, {
      description: "instances known to the gateway; details are in each {device}/meta",
    }),
  },
  { additionalProperties: false },
);

export const BridgeHealth = Type.Object(
  {
    timestamp: Timestamp,
    uptime_s: Type.Number({ minimum: 0 }),
    devices: Type.Object({ total: Type.Integer(), online: Type.Integer(), offline: Type.Integer() }),
    points: Type.Integer({ minimum: 0 }),
    polling: Type.Object({
      reads_per_s: Type.Number(),
      errors_total: Type.Integer(),
      overruns_total: Type.Integer(),
      lag_ms: Type.Number(),
    }),
    cov: Type.Object({ subscriptions: Type.Integer(), notifications_total: Type.Integer() }),
    buffer: Type.Object({
      depth: Type.Integer({ description: "readings messages waiting on disk" }),
      bytes: Type.Integer(),
      dropped_total: Type.Integer(),
    }),
    mqtt: Type.Object({ published_total: Type.Integer(), failed_total: Type.Integer() }),
  },
  { additionalProperties: false },
);

export const EVENT_TYPES = [
  "device_discovered",
  "device_lost",
  "device_online",
  "device_offline",
  "device_removed",
  "duplicate_device",
  "duplicate_gateway",
  "scan_started",
  "scan_progress",
  "scan_finished",
  "poll_overrun",
  "cov_fallback",
  "write",
  "buffer_dropped",
  "request_rejected",
] as const;

export const BridgeEvent = Type.Object(
  {
    type: Type.Union(EVENT_TYPES.map((t) => Type.Literal(t))),
    timestamp: Timestamp,
    data: Type.Record(Type.String(), Type.Unknown()),
  },
  { additionalProperties: false },
);

// ---- requests and responses -----------------------------------------------------------------

const req = <T extends Record<string, TSchema>>(props: T, description: string) =>
  Type.Object(
    { transaction: Type.Optional(Transaction), ...props },
    { additionalProperties: false, description },
  );

export const Requests = {
  discover: req(
    {
      low: Type.Optional(Type.Integer({ minimum: 0, maximum: 4194303 })),
      high: Type.Optional(Type.Integer({ minimum: 0, maximum: 4194303 })),
      targets: Type.Optional(
        Type.Array(Type.String({ maxLength: 64 }), { maxItems: 1024, description: "ip[:port]" }),
      ),
      broadcast: Type.Optional(Type.String({ maxLength: 64 })),
      timeout_s: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 600 })),
      chunk_size: Type.Optional(Type.Integer({ minimum: 1, maximum: 4194304 })),
      points: Type.Optional(Type.Boolean({ description: "also read each new device's points" })),
    },
    "Start a discovery (Who-Is); progress is published on bridge/event",
  ),
  "device/points": req({ device: DeviceInstance }, "Re-read a device's object list and point metadata"),
  "device/read": req(
    {
      device: DeviceInstance,
      point: PointName,
      property: Type.Optional(Type.String({ pattern: "^[a-z_]+$|^[0-9]+$", maxLength: 64 })),
      index: Type.Optional(Type.Integer({ minimum: 0 })),
    },
    "Read one property now (default present_value)",
  ),
  "device/write": req(
    {
      device: DeviceInstance,
      point: PointName,
      value: PointValue,
      priority: Type.Optional(Type.Integer({ minimum: 1, maximum: 16 })),
    },
    "Write present-value at a priority; value null relinquishes",
  ),
  "device/options": req(
    {
      device: DeviceInstance,
      poll_interval_s: Type.Optional(Type.Number({ minimum: 0.1, maximum: 86400 })),
      cov: Type.Optional(Type.Boolean()),
      include: Type.Optional(Type.Array(Type.String({ maxLength: 128 }), { maxItems: 256 })),
      exclude: Type.Optional(Type.Array(Type.String({ maxLength: 128 }), { maxItems: 256 })),
    },
    "Change a device's polling options",
  ),
  rebirth: req({}, "Publish the birth sequence again"),
  health_check: req({}, "Report whether the gateway is healthy"),
} as const;

export const PointMeta = Type.Object(
  {
    point: PointName,
    object_type: Type.String({ description: "BACnet object type, e.g. analog-input" }),
    object_instance: Type.Integer({ minimum: 0 }),
    name: Type.String(),
    description: Type.Union([Type.String(), Type.Null()]),
    units: Type.Union([Type.String(), Type.Null()]),
    units_code: Type.Union([Type.Integer(), Type.Null()]),
    writable: Type.Boolean({ description: "has a priority array (commandable)" }),
    state_texts: Type.Union([Type.Array(Type.String()), Type.Null()]),
    active_text: Type.Union([Type.String(), Type.Null()]),
    inactive_text: Type.Union([Type.String(), Type.Null()]),
    cov_increment: Type.Union([Type.Number(), Type.Null()]),
    poll_interval_s: Type.Optional(Type.Number()),
    cov: Type.Optional(Type.Boolean({ description: "delivered by COV subscription rather than polling" })),
    friendly_name: Type.Optional(Type.String({ description: "name given in the gateway's configuration" })),
  },
  { additionalProperties: false },
);

export const DeviceMeta = Type.Object(
  {
    device_instance: DeviceInstance,
    address: Type.String({ description: "ip:port of the BACnet/IP node that answered" }),
    network: Type.Union([Type.Integer(), Type.Null()], {
      description: "remote network number for routed devices",
    }),
    mac: Type.Union([Type.String(), Type.Null()], { description: "hex MAC on the remote network" }),
    object_name: Type.Union([Type.String(), Type.Null()]),
    description: Type.Union([Type.String(), Type.Null()]),
    location: Type.Union([Type.String(), Type.Null()]),
    vendor_id: Type.Union([Type.Integer(), Type.Null()]),
    vendor_name: Type.Union([Type.String(), Type.Null()]),
    model_name: Type.Union([Type.String(), Type.Null()]),
    firmware_revision: Type.Union([Type.String(), Type.Null()]),
    application_software_version: Type.Union([Type.String(), Type.Null()]),
    max_apdu: Type.Union([Type.Integer(), Type.Null()]),
    segmentation: Type.Union([Type.String(), Type.Null()]),
    supports_rpm: Type.Boolean(),
    friendly_name: Type.Optional(Type.String({ description: "name given in the gateway's configuration" })),
    updated_at: Timestamp,
    points: Type.Array(PointMeta),
  },
  { additionalProperties: false },
);

export const DeviceAvailability = Type.Object(
  {
    state: Type.Union([Type.Literal("online"), Type.Literal("offline")]),
    timestamp: Type.Optional(Timestamp),
    reason: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

export const DeviceState = Type.Object(
  {
    timestamp: Timestamp,
    values: Type.Record(Type.String(), PointValue),
  },
  { additionalProperties: false },
);

export const Reading = Type.Object(
  {
    point: PointName,
    value: PointValue,
    ts: Timestamp,
    status_flags: Type.Optional(StatusFlags),
    quality: Type.Optional(
      Type.Union([Type.Literal("good"), Type.Literal("uncertain"), Type.Literal("bad")]),
    ),
    error: Type.Optional(Type.String({ description: "error code when the read failed (value null)" })),
  },
  { additionalProperties: false },
);

export const DeviceReadings = Type.Object(
  {
    device: DeviceInstance,
    source: Type.Union([Type.Literal("poll"), Type.Literal("cov"), Type.Literal("read")]),
    historical: Type.Optional(Type.Boolean({ description: "replayed from the store-and-forward buffer" })),
    readings: Type.Array(Reading, { minItems: 1 }),
  },
  { additionalProperties: false },
);

const ok = <T extends TSchema>(data: T) =>
  Type.Object(
    { status: Type.Literal("ok"), data, transaction: Type.Optional(Transaction) },
    { additionalProperties: false },
  );

export const ErrorResponse = Type.Object(
  { status: Type.Literal("error"), error: ErrorBody, transaction: Type.Optional(Transaction) },
  { additionalProperties: false },
);

export const ReadResult = Type.Object({
  device: DeviceInstance,
  point: PointName,
  property: Type.String(),
  value: Type.Unknown(),
  ts: Timestamp,
});

export const WriteResult = Type.Object({
  device: DeviceInstance,
  point: PointName,
  value: PointValue,
  priority: Type.Integer({ minimum: 1, maximum: 16 }),
  present_value: PointValue,
  priority_array: Type.Union([Type.Array(PointValue), Type.Null()]),
  ts: Timestamp,
});

export const ResponseData = {
  discover: Type.Object({
    scan_id: Type.String(),
    devices_found: Type.Integer(),
    new_devices: Type.Array(DeviceInstance),
    duration_ms: Type.Number(),
  }),
  "device/points": Type.Object({
    device: DeviceInstance,
    points: Type.Integer(),
    duration_ms: Type.Number(),
  }),
  "device/read": ReadResult,
  "device/write": WriteResult,
  "device/options": Type.Object({
    device: DeviceInstance,
    poll_interval_s: Type.Number(),
    cov: Type.Boolean(),
    include: Type.Array(Type.String()),
    exclude: Type.Array(Type.String()),
  }),
  rebirth: Type.Object({ devices: Type.Integer() }),
  health_check: Type.Object({ healthy: Type.Boolean(), problems: Type.Array(Type.String()) }),
} as const;

export const Responses = Object.fromEntries(
  Object.entries(ResponseData).map(([endpoint, data]) => [endpoint, Type.Union([ok(data), ErrorResponse])]),
) as unknown as { [K in keyof typeof ResponseData]: TSchema };

export type BridgeStatePayload = Static<typeof BridgeState>;
export type BridgeInfoPayload = Static<typeof BridgeInfo>;
export type BridgeDevicesPayload = Static<typeof BridgeDevices>;
export type BridgeHealthPayload = Static<typeof BridgeHealth>;
export type BridgeEventPayload = Static<typeof BridgeEvent>;
export type EventType = (typeof EVENT_TYPES)[number];
export type DeviceMetaPayload = Static<typeof DeviceMeta>;
export type PointMetaPayload = Static<typeof PointMeta>;
export type DeviceAvailabilityPayload = Static<typeof DeviceAvailability>;
export type DeviceStatePayload = Static<typeof DeviceState>;
export type DeviceReadingsPayload = Static<typeof DeviceReadings>;
export type ReadingPayload = Static<typeof Reading>;
export type StatusFlagsPayload = Static<typeof StatusFlags>;
export type ErrorBodyPayload = Static<typeof ErrorBody>;
export type ErrorResponsePayload = Static<typeof ErrorResponse>;
export type Value = Static<typeof PointValue>;

export type RequestPayloads = { [K in keyof typeof Requests]: Static<(typeof Requests)[K]> };
export type ResponseDataPayloads = { [K in keyof typeof ResponseData]: Static<(typeof ResponseData)[K]> };
export type ResponsePayload<K extends keyof typeof ResponseData> =
  | { status: "ok"; data: ResponseDataPayloads[K]; transaction?: string | number }
  | ErrorResponsePayload;

/** The MQTT API as a type keyed by topic (relative to `{base}/{gw}/`), for consumers. */
export interface MqttApi {
  "bridge/state": BridgeStatePayload;
  "bridge/info": BridgeInfoPayload;
  "bridge/devices": BridgeDevicesPayload;
  "bridge/health": BridgeHealthPayload;
  "bridge/event": BridgeEventPayload;
  "{device}/meta": DeviceMetaPayload;
  "{device}/availability": DeviceAvailabilityPayload;
  "{device}/state": DeviceStatePayload;
  "{device}/readings": DeviceReadingsPayload;
}

/** Every schema by a stable name; docs/mqtt-api.md refers to these names. */
export const SCHEMAS: Readonly<Record<string, TSchema>> = {
  bridge_state: BridgeState,
  bridge_info: BridgeInfo,
  bridge_devices: BridgeDevices,
  bridge_health: BridgeHealth,
  bridge_event: BridgeEvent,
  device_meta: DeviceMeta,
  device_availability: DeviceAvailability,
  device_state: DeviceState,
  device_readings: DeviceReadings,
  ...Object.fromEntries(Object.entries(Requests).map(([e, s]) => [`request_${e.replace("/", "_")}`, s])),
  ...Object.fromEntries(Object.entries(Responses).map(([e, s]) => [`response_${e.replace("/", "_")}`, s])),
};
