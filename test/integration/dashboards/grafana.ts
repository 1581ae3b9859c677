// What Grafana does to a panel's SQL before the PostgreSQL datasource sends it, reimplemented for the
// dashboards test (Grafana itself is not installable here):
// 1. template variables (frontend): `$var`, `${var}`, `${var:format}`, `[[var]]`. SQL datasources
//    quote each value as a string literal when the variable is multi-valued or has "All", and leave
//    a single value of a plain variable unquoted; `:sqlstring` always quotes; `:csv` never does.
//    "All" without a custom all-value means every option of the variable.
// 2. `$__interval` / `$__interval_ms` (backend sqleng), then the PostgreSQL macros of
//    pkg/tsdb/grafana-postgresql-datasource/macros.go: `$__time`, `$__timeEpoch`, `$__timeFilter`,
//    `$__timeFrom`, `$__timeTo`, `$__timeGroup`, `$__timeGroupAlias` (time_bucket() when the
//    datasource has `timescaledb: true`, else floor(extract(epoch …))), `$__unixEpoch*`. An unknown
//    macro is an error, as in Grafana.
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const dashboardsDir = fileURLToPath(new URL("../../../dashboards/", import.meta.url));

export interface GrafanaTarget {
  refId: string;
  rawSql: string;
  format: "time_series" | "table";
  rawQuery?: boolean;
  editorMode?: string;
  datasource?: { type: string; uid: string };
}

export interface GrafanaPanel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type: string; uid: string };
  targets?: GrafanaTarget[];
}

export interface GrafanaVariable {
  name: string;
  type: string;
  query: string;
  multi: boolean;
  includeAll: boolean;
  datasource?: { type: string; uid: string };
}

export interface GrafanaDashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: GrafanaPanel[];
  templating: { list: GrafanaVariable[] };
  time: { from: string; to: string };
}

export function loadDashboardFiles(): { file: string; text: string; json: GrafanaDashboard }[] {
  const dir = `${dashboardsDir}json/`;
  return readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((file) => {
      const text = readFileSync(dir + file, "utf8");
      return { file, text, json: JSON.parse(text) as GrafanaDashboard };
    });
}

export interface VariableValue {
  variable: GrafanaVariable;
  /** The selected values; `all` = the "All" option. */
  selected: string[] | "all";
  /** Every option the variable query returned (what "All" expands to). */
  options: string[];
}

const quote = (v: string) => `'${v.replace(/'/g, "''")}'`;

function formatValue(v: VariableValue, format: string | undefined): string {
  const values = v.selected === "all" ? v.options : v.selected;
  switch (format) {
    case "sqlstring":
      return values.map(quote).join(",");
    case "csv":
      return values.join(",");
    case "raw":
      return values.join(",");
    case undefined:
      if (v.variable.multi || v.variable.includeAll) return values.map(quote).join(",");
      return values.join(",");
    default:
      throw new Error(`variable format :${format} is not handled by this test`);
  }
}

/** Replaces template variables; unknown `$name` that are not macros or $__ built-ins are an error. */
export function interpolateVariables(
  sql: string,
  values: Record<string, VariableValue>,
  builtins: Record<string, string>,
): string {
  return sql.replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?\}|\[\[([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?\]\]|\$([A-Za-z_][A-Za-z0-9_]*)(?![A-Za-z0-9_(])/g,
    (all, n1?: string, f1?: string, n2?: string, f2?: string, n3?: string) => {
      const name = (n1 ?? n2 ?? n3) as string;
      const format = f1 ?? f2;
      if (name in builtins) return builtins[name] as string;
      const v = values[name];
      if (v) return formatValue(v, format);
      if (name.startsWith("__")) return all; // a macro without parentheses is left for step 2
      throw new Error(`unknown template variable ${all}`);
    },
  );
}

export interface MacroContext {
  from: Date;
  to: Date;
  timescaledb: boolean;
}

/** Go's time.ParseInterval subset Grafana accepts in $__timeGroup: 10s, 5m, 1h, 1d, 1w, 1y, 100ms. */
export function intervalSeconds(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$/.exec(text.trim().replace(/^'|'$/g, ""));
  if (!m) throw new Error(`error parsing interval ${text}`);
  const n = Number(m[1]);
  const unit = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800, y: 31536000 }[
    m[2] as string
  ] as number;
  return n * unit;
}

/** Go's RFC3339Nano for a UTC time: no trailing zeros in the fraction, none at all when whole. */
export function rfc3339Nano(d: Date): string {
  return d
    .toISOString()
    .replace(/\.000Z$/, "Z")
    .replace(/(\.\d*?)0+Z$/, "$1Z");
}

const goFloat = (n: number) => String(n);

export function expandMacros(sql: string, ctx: MacroContext): string {
  const from = rfc3339Nano(ctx.from);
  const to = rfc3339Nano(ctx.to);
  const evaluate = (name: string, args: string[]): string => {
    switch (name) {
      case "__time":
        return `${args[0]} AS "time"`;
      case "__timeEpoch":
        return `extract(epoch from ${args[0]}) as "time"`;
      case "__timeFilter":
        if (!args[0]) throw new Error("missing time column argument for macro __timeFilter");
        return `${args[0]} BETWEEN '${from}' AND '${to}'`;
      case "__timeFrom":
        return `'${from}'`;
      case "__timeTo":
        return `'${to}'`;
      case "__timeGroup": {
        if (args.length < 2) throw new Error("macro __timeGroup needs time column and interval");
        if (args.length === 3) throw new Error("fill modes are not used by the bacmqtt dashboards");
        const s = intervalSeconds(args[1] as string);
        return ctx.timescaledb
          ? `time_bucket('${s.toFixed(3)}s',${args[0]})`
          : `floor(extract(epoch from ${args[0]})/${goFloat(s)})*${goFloat(s)}`;
      }
      case "__timeGroupAlias":
        return `${evaluate("__timeGroup", args)} AS "time"`;
      case "__unixEpochFilter":
        return `${args[0]} >= ${Math.floor(ctx.from.getTime() / 1000)} AND ${args[0]} <= ${Math.floor(ctx.to.getTime() / 1000)}`;
      case "__unixEpochFrom":
        return String(Math.floor(ctx.from.getTime() / 1000));
      case "__unixEpochTo":
        return String(Math.floor(ctx.to.getTime() / 1000));
      default:
        throw new Error(`unknown macro "${name}"`);
    }
  };
  return sql.replace(/\$([_a-zA-Z0-9]+)\(([^)]*)\)/g, (_all, name: string, rawArgs: string) =>
    evaluate(
      name,
      rawArgs.split(",").map((a) => a.trim()),
    ),
  );
}

/** Grafana's full path: variables, interval built-ins, macros. */
export function renderSql(
  sql: string,
  values: Record<string, VariableValue>,
  ctx: MacroContext & { intervalText: string },
): string {
  const intervalMs = Math.round(intervalSeconds(ctx.intervalText) * 1000);
  const builtins = { __interval: ctx.intervalText, __interval_ms: String(intervalMs) };
  const out = expandMacros(interpolateVariables(sql, values, builtins), ctx);
  if (/\$\{|\[\[|\$__|\$[a-z]/.test(out.replace(/'[^']*'/g, "''")))
    throw new Error(`unexpanded variable or macro left in:\n${out}`);
  return out;
}
