// The provisioned Grafana dashboards and datasource (dashboards/): valid provisioning JSON/YAML that
// matches docker-compose.yml, in sync with dashboards/generate.ts, and every panel's and variable's
// SQL — with Grafana's variables and macros expanded as Grafana expands them (./grafana.ts) — run
// against both storage dialects on a seeded site, returning the expected columns and rows:
// - portable: a fresh database on the local PostgreSQL, queried as the read-only role that
//   deploy/docker/grafana-reader.sh creates (so the grants cover every relation the panels read);
// - timescale: TimescaleDB in PGlite (WASM) served over the wire, as the database owner.
// The two dialects must then return the same rows for every panel (now()-relative columns aside).
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { DASHBOARDS, DATASOURCE, render } from "../../../dashboards/generate.ts";
import { type Dialect, migrate } from "../../../ingest/migrate.ts";
import { INSERT_READINGS } from "../../../ingest/writer.ts";
import { createPostgresDatabase, type TestDatabase } from "../../support/db-postgres.ts";
import { startWasmTimescale, type WasmTimescale } from "../../support/db-timescale.ts";
import { exampleEnvWithSecrets, loadCompose, repoRoot, SECRETS } from "../../unit/deploy/compose-file.ts";
import {
  dashboardsDir,
  type GrafanaDashboard,
  type GrafanaVariable,
  loadDashboardFiles,
  renderSql,
  type VariableValue,
} from "./grafana.ts";
import { type ReadingWriter, type SeededRange, seed } from "./seed.ts";

const SHARED_RELATIONS = new Set([
  "gateways",
  "devices",
  "points",
  "readings",
  "readings_hourly",
  "readings_daily",
  "availability_events",
  "write_audit",
]);

/** Columns each panel must return, by dashboard uid and panel title. */
const EXPECTED_COLUMNS: Record<string, Record<string, string[]>> = {
  "bacmqtt-site-overview": {
    "Gateways online": ["online"],
    "Devices online": ["online"],
    "Devices offline": ["offline"],
    Points: ["points", "writable"],
    "Readings in range": ["readings"],
    "Writes in range": ["writes", "failed"],
    "Readings per hour": ["time", "metric", "readings"],
    "Write activity": ["time", "ok", "failed"],
    Devices: [
      "gateway_id",
      "device_instance",
      "object_name",
      "vendor_name",
      "model_name",
      "address",
      "online",
      "last_seen",
      "points",
    ],
    "Availability changes": ["time", "gateway_id", "device_instance", "state", "reason"],
    "Recent writes": [
      "time",
      "gateway_id",
      "device_instance",
      "point",
      "value",
      "priority",
      "source",
      "actor",
      "result",
      "error_code",
    ],
  },
  "bacmqtt-device": {
    Online: ["online", "last_seen"],
    "Device properties": [
      "device_instance",
      "object_name",
      "description",
      "location",
      "vendor_name",
      "model_name",
      "firmware_revision",
      "address",
      "network",
      "segmentation",
      "max_apdu",
    ],
    "Points and latest values": [
      "point",
      "name",
      "object_type",
      "units",
      "writable",
      "value",
      "value_text",
      "quality",
      "updated",
    ],
    "Numeric points (hourly average)": ["time", "metric", "avg"],
    Availability: ["time", "state"],
    "Writes to this device": [
      "time",
      "point",
      "value",
      "priority",
      "source",
      "actor",
      "result",
      "error_message",
    ],
  },
  "bacmqtt-point-explorer": {
    "Raw readings": ["time", "metric", "value"],
    "Raw readings, averaged per $__interval": ["time", "metric", "value"],
    "Hourly rollup (avg, min, max)": ["time", "metric", "avg", "min", "max"],
    "Daily rollup (avg, min, max)": ["time", "metric", "avg", "min", "max"],
    "Statistics in range": [
      "device_instance",
      "point",
      "name",
      "units",
      "min",
      "max",
      "avg",
      "samples",
      "first_hour",
      "last_hour",
    ],
  },
  "bacmqtt-gateway-health": {
    Gateways: [
      "gateway_id",
      "state",
      "bd_seq",
      "last_seen",
      "seconds_since_seen",
      "version",
      "devices",
      "online",
    ],
    "Readings ingested per hour": ["time", "metric", "readings"],
    "Devices going offline": ["time", "metric", "went_offline"],
    "Data freshness per device": [
      "gateway_id",
      "device_instance",
      "object_name",
      "online",
      "newest",
      "age_s",
    ],
    "Failed writes": [
      "time",
      "gateway_id",
      "device_instance",
      "point",
      "priority",
      "error_code",
      "error_message",
      "actor",
    ],
  },
};

/** Columns computed from now(): they differ between two runs, so the dialect comparison skips them. */
const NOW_RELATIVE = new Set(["seconds_since_seen", "age_s"]);

// pg type oids
const TIMESTAMPTZ = 1184;
const NUMERIC_OIDS = new Set([20, 21, 23, 700, 701, 1700]);

const files = loadDashboardFiles();

describe("dashboards: provisioning format", () => {
  const datasources = parseYaml(
    readFileSync(path.join(dashboardsDir, "provisioning/datasources/bacmqtt.yaml"), "utf8"),
  );
  const providers = parseYaml(
    readFileSync(path.join(dashboardsDir, "provisioning/dashboards/bacmqtt.yaml"), "utf8"),
  );
  const { compose, problems } = loadCompose(exampleEnvWithSecrets(SECRETS));
  const grafana = compose.services.grafana;

  it("has the four dashboards of the issue, each file in sync with dashboards/generate.ts", () => {
    expect(problems).toEqual([]);
    expect(files.map((f) => f.json.uid).sort()).toEqual(
      ["bacmqtt-device", "bacmqtt-gateway-health", "bacmqtt-point-explorer", "bacmqtt-site-overview"].sort(),
    );
    for (const d of DASHBOARDS) {
      const file = files.find((f) => f.file === d.file);
      expect(
        JSON.parse(file?.text ?? "null"),
        `${d.file} is what generate.ts writes (see docs/dashboards.md)`,
      ).toEqual(JSON.parse(render(d)));
    }
  });

  it("provisions one PostgreSQL datasource whose uid and type every panel, target and variable uses", () => {
    expect(datasources.apiVersion).toBe(1);
    expect(datasources.datasources).toHaveLength(1);
    const ds = datasources.datasources[0];
    expect({ type: ds.type, uid: ds.uid }).toEqual(DATASOURCE);
    expect(ds.secureJsonData.password).toMatch(/^\$[A-Z_]+$/);
    for (const { file, json } of files) {
      for (const p of json.panels) {
        expect(p.datasource, `${file} panel ${p.title}`).toEqual(DATASOURCE);
        for (const t of p.targets ?? [])
          expect(t.datasource, `${file} ${p.title} ${t.refId}`).toEqual(DATASOURCE);
      }
      for (const v of json.templating.list)
        expect(v.datasource, `${file} variable ${v.name}`).toEqual(DATASOURCE);
    }
  });

  it("reads every $VARIABLE of the datasource file from the Grafana container's environment", () => {
    const text = readFileSync(path.join(dashboardsDir, "provisioning/datasources/bacmqtt.yaml"), "utf8");
    const used = [...text.replace(/#.*$/gm, "").matchAll(/\$\{?([A-Z_][A-Z0-9_]*)\}?/g)].map((m) => m[1]);
    expect(used.length).toBeGreaterThan(3);
    for (const v of used)
      expect(grafana?.environment, `grafana environment has ${v}`).toHaveProperty(v as string);
    expect(grafana?.environment?.BACMQTT_DB_HOST).toBe("timescaledb:5432");
    expect(grafana?.environment?.BACMQTT_DB_TIMESCALEDB).toBe("true");
  });

  it("mounts the provisioning and dashboard folders where the provider file says", () => {
    expect(providers.apiVersion).toBe(1);
    const provider = providers.providers[0];
    expect(provider.type).toBe("file");
    const mounts = (grafana?.volumes ?? []).map((v) => v.split(":"));
    expect(mounts).toContainEqual(["./dashboards/provisioning", "/etc/grafana/provisioning", "ro"]);
    expect(mounts).toContainEqual(["./dashboards/json", provider.options.path, "ro"]);
    const home = String(grafana?.environment?.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH);
    expect(home.startsWith(`${provider.options.path}/`)).toBe(true);
    expect(files.map((f) => f.file)).toContain(path.basename(home));
    expect(repoRoot).toBeTruthy();
  });

  it.each(files.map((f) => [f.file, f.json] as const))("%s is a valid provisioned dashboard", (_file, d) => {
    expect(d.uid).toMatch(/^[a-zA-Z0-9_-]{1,40}$/);
    expect(d.title).toBeTruthy();
    expect(d.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(d.panels.length).toBeGreaterThan(3);
    expect(new Set(d.panels.map((p) => p.id)).size).toBe(d.panels.length);
    const cells = new Set<string>();
    for (const p of d.panels) {
      expect(["stat", "timeseries", "table", "state-timeline", "barchart"]).toContain(p.type);
      const { x, y, w, h } = p.gridPos;
      expect(x + w, `${p.title} fits the 24-column grid`).toBeLessThanOrEqual(24);
      for (let i = x; i < x + w; i++)
        for (let j = y; j < y + h; j++) {
          expect(cells.has(`${i},${j}`), `${p.title} overlaps another panel`).toBe(false);
          cells.add(`${i},${j}`);
        }
      expect(p.targets?.length ?? 0, p.title).toBeGreaterThan(0);
      expect(new Set(p.targets?.map((t) => t.refId)).size).toBe(p.targets?.length);
      for (const t of p.targets ?? []) {
        expect(["time_series", "table"]).toContain(t.format);
        expect(t.rawQuery).toBe(true);
        expect(t.rawSql.trim()).not.toBe("");
      }
      expect(
        EXPECTED_COLUMNS[d.uid]?.[p.title],
        `expected columns declared for ${d.uid} / ${p.title}`,
      ).toBeDefined();
    }
    expect(Object.keys(EXPECTED_COLUMNS[d.uid] ?? {}).sort()).toEqual(d.panels.map((p) => p.title).sort());
  });

  it("has the gateway, device and point variables, each depending only on the ones before it", () => {
    const explorer = files.find((f) => f.json.uid === "bacmqtt-point-explorer")?.json as GrafanaDashboard;
    expect(explorer.templating.list.map((v) => v.name)).toEqual(["gateway", "device", "point"]);
    for (const { json } of files) {
      const names = json.templating.list.map((v) => v.name);
      expect(names[0]).toBe("gateway");
      json.templating.list.forEach((v, i) => {
        expect(v.type).toBe("query");
        for (const later of names.slice(i)) expect(v.query).not.toMatch(new RegExp(`\\$\\{?${later}\\b`));
      });
    }
  });

  it("queries only the shared relation names", () => {
    for (const { json } of files) {
      const sqls = [
        ...json.panels.flatMap((p) => p.targets ?? []).map((t) => t.rawSql),
        ...json.templating.list.map((v) => v.query),
      ];
      for (const sql of sqls) {
        for (const m of sql.matchAll(/\b(?:FROM|JOIN)\s+(?:LATERAL\s+)?([a-z_][a-z0-9_.]*)(\s*\()?/gi)) {
          const rel = (m[1] as string).toLowerCase();
          if (m[2]) continue; // extract(epoch FROM now() …): a function call, not a relation
          expect(SHARED_RELATIONS.has(rel), `${json.uid}: relation ${rel} in\n${sql}`).toBe(true);
        }
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// SQL against both dialects

interface Run {
  dashboard: string;
  panel: string;
  refId: string;
  mode: string;
  columns: string[];
  rows: unknown[][];
}

const end = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000);
const results: Record<"portable" | "timescale", Run[]> = { portable: [], timescale: [] };
const queryCounts: Record<"portable" | "timescale", number> = { portable: 0, timescale: 0 };

type Mode = "single" | "multi" | "all";

function selectionFor(v: GrafanaVariable, options: string[], mode: Mode): string[] | "all" {
  if (options.length === 0) throw new Error(`variable ${v.name} has no options`);
  if (!v.multi) return options.slice(0, 1);
  if (mode === "all") return v.includeAll ? "all" : options;
  if (mode === "multi") return options.slice(0, 2);
  return options.slice(0, 1);
}

/** Runs the variable queries in order, each seeing the selections before it, as Grafana does. */
async function resolveVariables(
  client: pg.ClientBase,
  d: GrafanaDashboard,
  mode: Mode,
  ctx: { from: Date; to: Date; timescaledb: boolean },
): Promise<Record<string, VariableValue>> {
  const values: Record<string, VariableValue> = {};
  for (const v of d.templating.list) {
    const sql = renderSql(v.query, values, { ...ctx, intervalText: "5m" });
    const res = await client.query({ text: sql, rowMode: "array" });
    const names = res.fields.map((f) => f.name);
    // Grafana: __value/__text pairs when present, else the first column.
    const valueIdx = names.includes("__value") ? names.indexOf("__value") : 0;
    if (names.includes("__value")) expect(names).toContain("__text");
    const options = res.rows.map((r) => String((r as unknown[])[valueIdx]));
    expect(options.length, `${d.uid}: variable ${v.name} has options`).toBeGreaterThan(0);
    values[v.name] = { variable: v, options, selected: selectionFor(v, options, mode) };
  }
  return values;
}

function normalise(value: unknown): unknown {
  if (value instanceof Date) return value.toISOString();
  if (typeof value === "number") return Number.isInteger(value) ? value : Number(value.toPrecision(12));
  if (typeof value === "string" && /^-?\d+\.\d+(e[-+]?\d+)?$/i.test(value))
    return Number(Number(value).toPrecision(12));
  if (value && typeof value === "object") return JSON.stringify(value);
  return value;
}

/**
 * Rows with the time column as epoch milliseconds: floor() time groups return epoch seconds,
 * time_bucket() returns timestamptz; Grafana reads both as the same instant.
 */
function canonical(run: Run): unknown[][] {
  return run.rows.map((r) =>
    r.map((v, j) => {
      if (run.columns[j] !== "time") return v;
      // floor(extract(epoch …)) is numeric: pg hands it over as a string of digits.
      return typeof v === "number" || /^\d+(\.\d+)?$/.test(String(v))
        ? Number(v) * 1000
        : Date.parse(String(v));
    }),
  );
}

async function runAllPanels(
  client: pg.ClientBase,
  dialect: "portable" | "timescale",
  range: SeededRange,
  timescaledbMacros: boolean,
): Promise<void> {
  const ctx = { from: range.from, to: range.to, timescaledb: timescaledbMacros };
  for (const { json: d } of files) {
    const modes: Mode[] = d.templating.list.some((v) => v.multi) ? ["single", "multi", "all"] : ["single"];
    for (const mode of modes) {
      const values = await resolveVariables(client, d, mode, ctx);
      queryCounts[dialect] += d.templating.list.length;
      for (const p of d.panels) {
        for (const t of p.targets ?? []) {
          const sql = renderSql(t.rawSql, values, { ...ctx, intervalText: "5m" });
          let res: pg.QueryArrayResult;
          try {
            res = await client.query({ text: sql, rowMode: "array" });
          } catch (err) {
            throw new Error(`${dialect} ${d.uid} / ${p.title} (${mode}): ${(err as Error).message}\n${sql}`);
          }
          queryCounts[dialect]++;
          const columns = res.fields.map((f) => f.name);
          const where = `${dialect} ${d.uid} / ${p.title} [${mode}]`;
          expect(columns, where).toEqual(EXPECTED_COLUMNS[d.uid]?.[p.title]);
          expect(res.rows.length, `${where} returns rows on the seeded site`).toBeGreaterThan(0);
          if (t.format === "time_series") {
            const timeField = res.fields[0] as pg.FieldDef;
            expect(timeField.name, where).toBe("time");
            expect([TIMESTAMPTZ, 701, 1700], `${where}: time column type`).toContain(timeField.dataTypeID);
            for (const f of res.fields.slice(1)) {
              if (f.name === "metric") continue;
              expect(
                NUMERIC_OIDS.has(f.dataTypeID),
                `${where}: ${f.name} is numeric (oid ${f.dataTypeID})`,
              ).toBe(true);
            }
            const times = res.rows.map((r) => Number(new Date(r[0] as string | number | Date)));
            const asNumbers = res.rows.map((r) => (r[0] instanceof Date ? r[0].getTime() : Number(r[0])));
            for (let i = 1; i < asNumbers.length; i++)
              expect(
                (asNumbers[i] as number) >= (asNumbers[i - 1] as number),
                `${where}: sorted by time`,
              ).toBe(true);
            expect(times.length).toBe(res.rows.length);
          }
          results[dialect].push({
            dashboard: d.uid,
            panel: p.title,
            refId: t.refId,
            mode,
            columns,
            rows: res.rows.map((r) =>
              (r as unknown[]).map((v, i) =>
                NOW_RELATIVE.has(columns[i] as string) ? "<now>" : normalise(v),
              ),
            ),
          });
        }
      }
    }
  }
}

/** Writes readings with the ingest's own statement, so each dialect's rollups are maintained as in production. */
function ingestWriter(dialect: Dialect): ReadingWriter {
  return async (client, rows) => {
    for (let i = 0; i < rows.length; i += 1000) {
      const chunk = rows.slice(i, i + 1000);
      await client.query(INSERT_READINGS[dialect], [
        chunk.map((r) => r.time),
        chunk.map((r) => r.point_id),
        chunk.map((r) => r.value),
        chunk.map((r) => r.value_text),
        chunk.map(() => 0),
        chunk.map(() => "good"),
        chunk.map(() => false),
      ]);
    }
  };
}

describe("dashboards: every panel's SQL on the portable dialect (local PostgreSQL, as the Grafana reader role)", () => {
  let db: TestDatabase;
  let owner: pg.Client;
  let reader: pg.Client;
  let range: SeededRange;
  const role = `bacmqtt_grafana_${process.pid}_${randomBytes(3).toString("hex")}`;

  beforeAll(async () => {
    db = await createPostgresDatabase("bacmqtt_dash");
    owner = new pg.Client({ connectionString: db.url });
    await owner.connect();
    await migrate(owner, { dialect: "portable" });
    range = await seed(owner, ingestWriter("portable"), end);
    const u = new URL(db.url);
    execFileSync(path.join(repoRoot, "deploy/docker/grafana-reader.sh"), {
      env: {
        PATH: process.env.PATH,
        PGHOST: u.hostname,
        PGPORT: u.port,
        PGUSER: decodeURIComponent(u.username),
        PGDATABASE: db.name,
        ...(process.env.PGPASSWORD ? { PGPASSWORD: process.env.PGPASSWORD } : {}),
        GRAFANA_DB_USER: role,
        GRAFANA_DB_PASSWORD: "reader-secret",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const ru = new URL(db.url);
    ru.username = role;
    ru.password = "reader-secret";
    reader = new pg.Client({ connectionString: ru.toString() });
    await reader.connect();
  });

  afterAll(async () => {
    await reader?.end().catch(() => undefined);
    await owner?.end().catch(() => undefined);
    await db?.drop();
    const admin = new pg.Client({ connectionString: db.url.replace(/\/[^/]+$/, "/postgres") });
    await admin.connect();
    try {
      await admin.query(`DROP ROLE IF EXISTS "${role}"`);
    } finally {
      await admin.end();
    }
  });

  it("the reader role is read-only and cannot see api_keys", async () => {
    await expect(reader.query("SELECT count(*) FROM api_keys")).rejects.toThrow(/permission denied/);
    await expect(reader.query("DELETE FROM write_audit")).rejects.toThrow(/read-only|permission denied/);
    const { rows } = await reader.query("SELECT current_user AS u");
    expect(rows[0].u).toBe(role);
  });

  it("runs every panel and variable query (floor() time groups, as Grafana without TimescaleDB)", async () => {
    await runAllPanels(reader, "portable", range, false);
    expect(queryCounts.portable).toBeGreaterThan(40);
  });
});

describe("dashboards: every panel's SQL on the timescale dialect (TimescaleDB in PGlite)", () => {
  let ts: WasmTimescale;
  let client: pg.Client;
  let range: SeededRange;

  beforeAll(async () => {
    ts = await startWasmTimescale();
    client = new pg.Client({ connectionString: ts.url });
    await client.connect();
    await migrate(client, { dialect: "timescale" });
    range = await seed(client, ingestWriter("timescale"), end);
  }, 180_000);

  afterAll(async () => {
    await client?.end().catch(() => undefined);
    await ts?.drop();
  });

  it("runs every panel and variable query with time_bucket() time groups (datasource timescaledb: true)", async () => {
    await runAllPanels(client, "timescale", range, true);
    expect(queryCounts.timescale).toBeGreaterThan(40);
  }, 180_000);

  it("returns the same rows with floor() time groups (a datasource with timescaledb: false)", async () => {
    const before = results.timescale.length;
    await runAllPanels(client, "timescale", range, false);
    const again = results.timescale.splice(before);
    expect(again.length).toBe(before);
    for (const [i, r] of again.entries()) {
      const f = results.timescale[i] as Run;
      expect(canonical(r), `${r.dashboard} / ${r.panel} [${r.mode}]`).toEqual(canonical(f));
    }
  }, 180_000);
});

describe("dashboards: both dialects agree", () => {
  it("every panel returns the same rows on portable and timescale for the same site", () => {
    expect(results.portable.length).toBeGreaterThan(0);
    expect(results.timescale.length).toBe(results.portable.length);
    for (const [i, p] of results.portable.entries()) {
      const t = results.timescale[i] as Run;
      const where = `${p.dashboard} / ${p.panel} [${p.mode}]`;
      expect(`${t.dashboard} / ${t.panel} [${t.mode}]`).toBe(where);
      expect(canonical(t), where).toEqual(canonical(p));
    }
  });
});
