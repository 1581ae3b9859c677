// Writes the provisioned Grafana dashboards (dashboards/json/*.json) from the definitions below, so
// that every panel's SQL is readable in one place and every panel gets the same datasource, ids and
// layout rules. After editing run `npx tsx dashboards/generate.ts && npx biome format --write
// dashboards/json`; the dashboards test fails when the JSON files and this script disagree. Queries
// use only the shared relation names (gateways, devices, points, readings, readings_hourly,
// readings_daily, availability_events, write_audit), which both storage dialects expose, and
// Grafana's PostgreSQL macros.
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const DATASOURCE = { type: "grafana-postgresql-datasource", uid: "bacmqtt-db" } as const;
export const SCHEMA_VERSION = 41;

type Format = "time_series" | "table";

interface PanelDef {
  title: string;
  type: "stat" | "timeseries" | "table" | "state-timeline" | "barchart";
  w: number;
  h: number;
  format: Format;
  sql: string;
  description?: string;
  unit?: string;
  /** Extra queries on the same panel (refId B, C, …). */
  more?: { sql: string; format?: Format }[];
  options?: Record<string, unknown>;
  thresholds?: { color: string; value: number | null }[];
}

interface VariableDef {
  name: "gateway" | "device" | "point";
  label: string;
  sql: string;
  multi: boolean;
}

interface DashboardDef {
  uid: string;
  file: string;
  title: string;
  description: string;
  tags: string[];
  time: string;
  variables: VariableDef[];
  panels: PanelDef[];
}

/**
 * SQL text with its indentation removed. `$gateway`, `$device`, `$point` become
 * `${gateway:sqlstring}` etc.: Grafana then quotes every value whether the variable is single- or
 * multi-valued or "All" (its default format leaves a single non-multi value unquoted).
 */
function sql(strings: TemplateStringsArray, ...values: unknown[]): string {
  const lines = String.raw({ raw: strings }, ...values)
    .replace(/^\n/, "")
    .replace(/\n\s*$/, "")
    .split("\n");
  const indent = Math.min(
    ...lines.filter((l) => l.trim()).map((l) => (/^ */.exec(l) as RegExpExecArray)[0].length),
  );
  return lines
    .map((l) => l.slice(indent))
    .join("\n")
    .replace(/\$(gateway|device|point)\b/g, "$${$1:sqlstring}");
}

/** Readings stored per hour and gateway: shown on the site overview and on gateway health. */
const READINGS_PER_HOUR_BY_GATEWAY = sql`
  SELECT $__timeGroupAlias(h.bucket, 1h), p.gateway_id AS metric, sum(h.count) AS readings
  FROM readings_hourly h
  JOIN points p ON p.point_id = h.point_id
  WHERE $__timeFilter(h.bucket) AND p.gateway_id IN ($gateway)
  GROUP BY 1, 2
  ORDER BY 1, 2`;

const GATEWAY: VariableDef = {
  name: "gateway",
  label: "Gateway",
  multi: true,
  sql: sql`SELECT gateway_id FROM gateways ORDER BY 1`,
};
const DEVICE_MULTI: VariableDef = {
  name: "device",
  label: "Device",
  multi: true,
  sql: sql`
    SELECT device_instance AS __value,
           device_instance || coalesce(' ' || object_name, '') AS __text
    FROM devices
    WHERE gateway_id IN ($gateway)
    ORDER BY device_instance`,
};
const DEVICE_SINGLE: VariableDef = { ...DEVICE_MULTI, multi: false };
const POINT: VariableDef = {
  name: "point",
  label: "Point",
  multi: true,
  sql: sql`
    SELECT point_id AS __value,
           device_instance || ' ' || point || coalesce(' (' || name || ')', '') AS __text
    FROM points
    WHERE gateway_id IN ($gateway) AND device_instance IN ($device)
    ORDER BY device_instance, object_type, object_instance`,
};

const ONLINE_THRESHOLDS = [
  { color: "red", value: null },
  { color: "green", value: 1 },
];

const siteOverview: DashboardDef = {
  uid: "bacmqtt-site-overview",
  file: "site-overview.json",
  title: "bacmqtt / Site overview",
  description: "Devices online, points, data volume and write activity across the selected gateways.",
  tags: ["bacmqtt", "bacnet"],
  time: "now-24h",
  variables: [GATEWAY],
  panels: [
    {
      title: "Gateways online",
      type: "stat",
      w: 4,
      h: 4,
      format: "table",
      thresholds: ONLINE_THRESHOLDS,
      sql: sql`
        SELECT count(*) FILTER (WHERE state = 'online') AS online
        FROM gateways
        WHERE gateway_id IN ($gateway)`,
    },
    {
      title: "Devices online",
      type: "stat",
      w: 4,
      h: 4,
      format: "table",
      thresholds: ONLINE_THRESHOLDS,
      sql: sql`
        SELECT count(*) FILTER (WHERE online) AS online
        FROM devices
        WHERE gateway_id IN ($gateway)`,
    },
    {
      title: "Devices offline",
      type: "stat",
      w: 4,
      h: 4,
      format: "table",
      thresholds: [
        { color: "green", value: null },
        { color: "red", value: 1 },
      ],
      sql: sql`
        SELECT count(*) FILTER (WHERE online IS NOT TRUE) AS offline
        FROM devices
        WHERE gateway_id IN ($gateway)`,
    },
    {
      title: "Points",
      type: "stat",
      w: 4,
      h: 4,
      format: "table",
      sql: sql`
        SELECT count(*) AS points,
               count(*) FILTER (WHERE writable) AS writable
        FROM points
        WHERE gateway_id IN ($gateway)`,
    },
    {
      title: "Readings in range",
      type: "stat",
      w: 4,
      h: 4,
      format: "table",
      description: "Samples stored in the selected time range (from the hourly rollup).",
      sql: sql`
        SELECT coalesce(sum(h.count), 0)::bigint AS readings
        FROM readings_hourly h
        JOIN points p ON p.point_id = h.point_id
        WHERE $__timeFilter(h.bucket) AND p.gateway_id IN ($gateway)`,
    },
    {
      title: "Writes in range",
      type: "stat",
      w: 4,
      h: 4,
      format: "table",
      sql: sql`
        SELECT count(*) AS writes,
               count(*) FILTER (WHERE result IS DISTINCT FROM 'ok') AS failed
        FROM write_audit
        WHERE $__timeFilter(time) AND gateway_id IN ($gateway)`,
    },
    {
      title: "Readings per hour",
      type: "timeseries",
      w: 12,
      h: 8,
      format: "time_series",
      sql: READINGS_PER_HOUR_BY_GATEWAY,
    },
    {
      title: "Write activity",
      type: "timeseries",
      w: 12,
      h: 8,
      format: "time_series",
      options: { drawStyle: "bars" },
      sql: sql`
        SELECT $__timeGroupAlias(time, $__interval),
               count(*) FILTER (WHERE result = 'ok') AS ok,
               count(*) FILTER (WHERE result IS DISTINCT FROM 'ok') AS failed
        FROM write_audit
        WHERE $__timeFilter(time) AND gateway_id IN ($gateway)
        GROUP BY 1
        ORDER BY 1`,
    },
    {
      title: "Devices",
      type: "table",
      w: 24,
      h: 9,
      format: "table",
      sql: sql`
        SELECT d.gateway_id, d.device_instance, d.object_name, d.vendor_name, d.model_name,
               d.address, d.online, d.last_seen,
               (SELECT count(*) FROM points p
                 WHERE p.gateway_id = d.gateway_id AND p.device_instance = d.device_instance) AS points
        FROM devices d
        WHERE d.gateway_id IN ($gateway)
        ORDER BY d.gateway_id, d.device_instance`,
    },
    {
      title: "Availability changes",
      type: "table",
      w: 12,
      h: 8,
      format: "table",
      sql: sql`
        SELECT time, gateway_id, device_instance, state, reason
        FROM availability_events
        WHERE $__timeFilter(time) AND gateway_id IN ($gateway)
        ORDER BY time DESC
        LIMIT 500`,
    },
    {
      title: "Recent writes",
      type: "table",
      w: 12,
      h: 8,
      format: "table",
      sql: sql`
        SELECT time, gateway_id, device_instance, point, value, priority, source, actor, result, error_code
        FROM write_audit
        WHERE $__timeFilter(time) AND gateway_id IN ($gateway)
        ORDER BY time DESC
        LIMIT 500`,
    },
  ],
};

const deviceView: DashboardDef = {
  uid: "bacmqtt-device",
  file: "device.json",
  title: "bacmqtt / Device",
  description: "One device: its properties, every point with its latest value, availability and writes.",
  tags: ["bacmqtt", "bacnet"],
  time: "now-24h",
  variables: [{ ...GATEWAY, multi: false }, DEVICE_SINGLE],
  panels: [
    {
      title: "Online",
      type: "stat",
      w: 4,
      h: 4,
      format: "table",
      thresholds: ONLINE_THRESHOLDS,
      sql: sql`
        SELECT CASE WHEN online THEN 1 ELSE 0 END AS online, last_seen
        FROM devices
        WHERE gateway_id IN ($gateway) AND device_instance IN ($device)`,
    },
    {
      title: "Device properties",
      type: "table",
      w: 20,
      h: 4,
      format: "table",
      sql: sql`
        SELECT device_instance, object_name, description, location, vendor_name, model_name,
               firmware_revision, address, network, segmentation, max_apdu
        FROM devices
        WHERE gateway_id IN ($gateway) AND device_instance IN ($device)`,
    },
    {
      title: "Points and latest values",
      type: "table",
      w: 24,
      h: 10,
      format: "table",
      sql: sql`
        SELECT p.point, p.name, p.object_type, p.units, p.writable,
               r.value, r.value_text, r.quality, r.time AS updated
        FROM points p
        LEFT JOIN LATERAL (
          SELECT value, value_text, quality, time
          FROM readings
          WHERE point_id = p.point_id
          ORDER BY time DESC
          LIMIT 1
        ) r ON true
        WHERE p.gateway_id IN ($gateway) AND p.device_instance IN ($device)
        ORDER BY p.object_type, p.object_instance`,
    },
    {
      title: "Numeric points (hourly average)",
      type: "timeseries",
      w: 24,
      h: 9,
      format: "time_series",
      sql: sql`
        SELECT h.bucket AS "time", p.point AS metric, h.avg
        FROM readings_hourly h
        JOIN points p ON p.point_id = h.point_id
        WHERE $__timeFilter(h.bucket)
          AND p.gateway_id IN ($gateway) AND p.device_instance IN ($device)
        ORDER BY 1, 2`,
    },
    {
      title: "Availability",
      type: "state-timeline",
      w: 12,
      h: 6,
      format: "table",
      description: "Each change of the device's availability, with the state it had before the range.",
      sql: sql`
        (SELECT $__timeFrom()::timestamptz AS "time", state
           FROM availability_events
          WHERE gateway_id IN ($gateway) AND device_instance IN ($device)
            AND time < $__timeFrom()
          ORDER BY time DESC
          LIMIT 1)
        UNION ALL
        (SELECT time AS "time", state
           FROM availability_events
          WHERE gateway_id IN ($gateway) AND device_instance IN ($device)
            AND $__timeFilter(time))
        ORDER BY 1`,
    },
    {
      title: "Writes to this device",
      type: "table",
      w: 12,
      h: 6,
      format: "table",
      sql: sql`
        SELECT time, point, value, priority, source, actor, result, error_message
        FROM write_audit
        WHERE $__timeFilter(time) AND gateway_id IN ($gateway) AND device_instance IN ($device)
        ORDER BY time DESC
        LIMIT 200`,
    },
  ],
};

const pointExplorer: DashboardDef = {
  uid: "bacmqtt-point-explorer",
  file: "point-explorer.json",
  title: "bacmqtt / Point explorer",
  description:
    "Selected points as raw samples, as raw samples bucketed to the panel resolution, and from the hourly and daily rollups.",
  tags: ["bacmqtt", "bacnet"],
  time: "now-7d",
  variables: [GATEWAY, DEVICE_MULTI, POINT],
  panels: [
    {
      title: "Raw readings",
      type: "timeseries",
      w: 24,
      h: 9,
      format: "time_series",
      description: "Every stored sample in the range. For long ranges use the rollups below.",
      sql: sql`
        SELECT r.time AS "time", p.device_instance || ' ' || p.point AS metric, r.value
        FROM readings r
        JOIN points p ON p.point_id = r.point_id
        WHERE $__timeFilter(r.time) AND r.point_id IN ($point) AND r.value IS NOT NULL
        ORDER BY 1, 2
        LIMIT 100000`,
    },
    {
      title: "Raw readings, averaged per $__interval",
      type: "timeseries",
      w: 24,
      h: 8,
      format: "time_series",
      sql: sql`
        SELECT $__timeGroupAlias(r.time, $__interval),
               p.device_instance || ' ' || p.point AS metric,
               avg(r.value) AS value
        FROM readings r
        JOIN points p ON p.point_id = r.point_id
        WHERE $__timeFilter(r.time) AND r.point_id IN ($point)
        GROUP BY 1, 2
        ORDER BY 1, 2`,
    },
    {
      title: "Hourly rollup (avg, min, max)",
      type: "timeseries",
      w: 12,
      h: 8,
      format: "time_series",
      sql: sql`
        SELECT h.bucket AS "time", p.device_instance || ' ' || p.point AS metric,
               h.avg, h.min, h.max
        FROM readings_hourly h
        JOIN points p ON p.point_id = h.point_id
        WHERE $__timeFilter(h.bucket) AND h.point_id IN ($point)
        ORDER BY 1, 2`,
    },
    {
      title: "Daily rollup (avg, min, max)",
      type: "timeseries",
      w: 12,
      h: 8,
      format: "time_series",
      sql: sql`
        SELECT d.bucket AS "time", p.device_instance || ' ' || p.point AS metric,
               d.avg, d.min, d.max
        FROM readings_daily d
        JOIN points p ON p.point_id = d.point_id
        WHERE d.bucket >= date_trunc('day', $__timeFrom()::timestamptz) AND d.bucket <= $__timeTo()
          AND d.point_id IN ($point)
        ORDER BY 1, 2`,
    },
    {
      title: "Statistics in range",
      type: "table",
      w: 24,
      h: 7,
      format: "table",
      description: "From the hourly rollup: whole hours touching the range.",
      sql: sql`
        SELECT p.device_instance, p.point, p.name, p.units,
               min(h.min) AS min, max(h.max) AS max,
               sum(h.avg * h.count) / nullif(sum(h.count), 0) AS avg,
               sum(h.count)::bigint AS samples,
               min(h.bucket) AS first_hour, max(h.bucket) AS last_hour
        FROM points p
        JOIN readings_hourly h ON h.point_id = p.point_id
        WHERE $__timeFilter(h.bucket) AND p.point_id IN ($point)
        GROUP BY p.point_id, p.device_instance, p.point, p.name, p.units
        ORDER BY p.device_instance, p.point`,
    },
  ],
};

const gatewayHealth: DashboardDef = {
  uid: "bacmqtt-gateway-health",
  file: "gateway-health.json",
  title: "bacmqtt / Gateway health",
  description: "Gateway state, data freshness per device, ingest volume and availability churn.",
  tags: ["bacmqtt", "bacnet"],
  time: "now-24h",
  variables: [GATEWAY],
  panels: [
    {
      title: "Gateways",
      type: "table",
      w: 24,
      h: 6,
      format: "table",
      sql: sql`
        SELECT g.gateway_id, g.state, g.bd_seq, g.last_seen,
               extract(epoch FROM now() - g.last_seen)::bigint AS seconds_since_seen,
               g.info ->> 'version' AS version,
               (SELECT count(*) FROM devices d WHERE d.gateway_id = g.gateway_id) AS devices,
               (SELECT count(*) FROM devices d WHERE d.gateway_id = g.gateway_id AND d.online) AS online
        FROM gateways g
        WHERE g.gateway_id IN ($gateway)
        ORDER BY g.gateway_id`,
    },
    {
      title: "Readings ingested per hour",
      type: "timeseries",
      w: 12,
      h: 8,
      format: "time_series",
      sql: READINGS_PER_HOUR_BY_GATEWAY,
    },
    {
      title: "Devices going offline",
      type: "timeseries",
      w: 12,
      h: 8,
      format: "time_series",
      options: { drawStyle: "bars" },
      sql: sql`
        SELECT $__timeGroupAlias(time, $__interval), gateway_id AS metric,
               count(*) FILTER (WHERE state = 'offline') AS went_offline
        FROM availability_events
        WHERE $__timeFilter(time) AND gateway_id IN ($gateway)
        GROUP BY 1, 2
        ORDER BY 1, 2`,
    },
    {
      title: "Data freshness per device",
      type: "table",
      w: 12,
      h: 9,
      format: "table",
      description: "Newest sample of each device; stale devices first.",
      sql: sql`
        SELECT d.gateway_id, d.device_instance, d.object_name, d.online, f.newest,
               extract(epoch FROM now() - f.newest)::bigint AS age_s
        FROM devices d
        LEFT JOIN LATERAL (
          SELECT max(r.time) AS newest
          FROM points p
          CROSS JOIN LATERAL (
            SELECT time FROM readings WHERE point_id = p.point_id ORDER BY time DESC LIMIT 1
          ) r
          WHERE p.gateway_id = d.gateway_id AND p.device_instance = d.device_instance
        ) f ON true
        WHERE d.gateway_id IN ($gateway)
        ORDER BY f.newest ASC NULLS FIRST`,
    },
    {
      title: "Failed writes",
      type: "table",
      w: 12,
      h: 9,
      format: "table",
      sql: sql`
        SELECT time, gateway_id, device_instance, point, priority, error_code, error_message, actor
        FROM write_audit
        WHERE $__timeFilter(time) AND gateway_id IN ($gateway) AND result IS DISTINCT FROM 'ok'
        ORDER BY time DESC
        LIMIT 200`,
    },
  ],
};

export const DASHBOARDS: DashboardDef[] = [siteOverview, deviceView, pointExplorer, gatewayHealth];

function variable(v: VariableDef): Record<string, unknown> {
  return {
    name: v.name,
    label: v.label,
    type: "query",
    datasource: DATASOURCE,
    query: v.sql,
    definition: v.sql,
    refresh: 1,
    multi: v.multi,
    includeAll: v.multi,
    sort: 0,
    current: {},
    options: [],
    hide: 0,
    regex: "",
    skipUrlSync: false,
  };
}

function panel(p: PanelDef, id: number, x: number, y: number): Record<string, unknown> {
  const queries = [
    { sql: p.sql, format: p.format },
    ...(p.more ?? []).map((m) => ({ sql: m.sql, format: m.format ?? p.format })),
  ];
  const custom =
    p.type === "timeseries" ? { drawStyle: "line", lineWidth: 1, fillOpacity: 10, ...p.options } : undefined;
  return {
    id,
    type: p.type,
    title: p.title,
    ...(p.description ? { description: p.description } : {}),
    datasource: DATASOURCE,
    gridPos: { h: p.h, w: p.w, x, y },
    targets: queries.map((q, i) => ({
      refId: String.fromCharCode(65 + i),
      datasource: DATASOURCE,
      editorMode: "code",
      format: q.format,
      rawQuery: true,
      rawSql: q.sql,
    })),
    fieldConfig: {
      defaults: {
        ...(p.unit ? { unit: p.unit } : {}),
        ...(custom ? { custom } : {}),
        ...(p.thresholds ? { thresholds: { mode: "absolute", steps: p.thresholds } } : {}),
      },
      overrides: [],
    },
    options:
      p.type === "stat"
        ? { reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false }, colorMode: "background" }
        : p.type === "table"
          ? { showHeader: true, cellHeight: "sm" }
          : {
              legend: { displayMode: "list", placement: "bottom", showLegend: true },
              tooltip: { mode: "multi" },
            },
  };
}

export function build(d: DashboardDef): Record<string, unknown> {
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  const panels = d.panels.map((p, i) => {
    if (x + p.w > 24) {
      x = 0;
      y += rowHeight;
      rowHeight = 0;
    }
    const out = panel(p, i + 1, x, y);
    x += p.w;
    rowHeight = Math.max(rowHeight, p.h);
    return out;
  });
  return {
    uid: d.uid,
    title: d.title,
    description: d.description,
    tags: d.tags,
    timezone: "browser",
    editable: false,
    graphTooltip: 1,
    schemaVersion: SCHEMA_VERSION,
    version: 1,
    refresh: "1m",
    time: { from: d.time, to: "now" },
    timepicker: {},
    links: [
      {
        type: "dashboards",
        tags: ["bacmqtt"],
        asDropdown: true,
        title: "bacmqtt",
        includeVars: true,
        keepTime: true,
      },
    ],
    annotations: {
      list: [
        {
          builtIn: 1,
          datasource: { type: "grafana", uid: "-- Grafana --" },
          enable: true,
          hide: true,
          iconColor: "rgba(0, 211, 255, 1)",
          name: "Annotations & Alerts",
          type: "dashboard",
        },
      ],
    },
    templating: { list: d.variables.map(variable) },
    panels,
  };
}

export function render(d: DashboardDef): string {
  return `${JSON.stringify(build(d), null, 2)}\n`;
}

export const jsonDir = fileURLToPath(new URL("./json/", import.meta.url));

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  for (const d of DASHBOARDS) writeFileSync(`${jsonDir}${d.file}`, render(d));
  process.stdout.write(`wrote ${DASHBOARDS.length} dashboards to ${jsonDir}\n`);
}
