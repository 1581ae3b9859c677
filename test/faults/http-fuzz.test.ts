// Property-based HTTP fuzz of the api from its own OpenAPI document: for every path and method
// the running api serves at /docs/json, requests are generated from the spec (valid values and
// mutations: wrong types, missing and extra fields, huge and odd strings, bad JSON, other media
// types, bad paths) and sent over real HTTP with every key role. Behind the api: a fresh migrated
// PostgreSQL database with a small inventory, a real aedes broker, a real gateway and the
// simulator on 127.0.77.x. Checked for every answer: no 5xx, a coded JSON error for every 4xx,
// the body matches the schema the spec declares for that status. Checked for everything the api
// published (recorded at the broker by client id, and by a `#` subscriber): a valid command by
// the contract, relayed for a spec-conforming request of an operator or admin key, equal to that
// request; every write_audit row belongs to such a request; the inventory tables are untouched.
// The seed is printed and settable (HTTP_FUZZ_SEED); HTTP_FUZZ_REQUESTS and HTTP_FUZZ_MAX_MS bound it.
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Ajv, type ValidateFunction } from "ajv";
import addFormatsModule from "ajv-formats";
import fc from "fast-check";
import type { FastifyInstance } from "fastify";
import mqtt from "mqtt";
import type pg from "pg";
import { afterAll, beforeAll, expect, it, vi } from "vitest";
import { buildApp } from "../../api/app.ts";
import { createKey } from "../../api/keys.ts";
import { type RunningBroker, startBroker } from "../../broker/index.ts";
import { parseTopic, SCHEMAS, validate } from "../../contract/index.ts";
import { type Gateway, startGateway } from "../../gateway/index.ts";
import { type Simulator, startSimulator } from "../../simulator/index.ts";
import { auth, createDatabase, createKeys, type Keys, seed } from "../integration/api/fixture.ts";
import type { TestDatabase } from "../support/db-postgres.ts";
import { type JsonSchema, mutated, nastyString, nastyValue, valid } from "../support/openapi-arbitrary.ts";
import { report } from "./support.ts";

vi.setConfig({ testTimeout: 900_000, hookTimeout: 180_000 });

const SEED = Number(process.env.HTTP_FUZZ_SEED ?? 20261127);
const REQUESTS = Number(process.env.HTTP_FUZZ_REQUESTS ?? 3000);
const MAX_MS = Number(process.env.HTTP_FUZZ_MAX_MS ?? 300_000);
const CONCURRENCY = 4;
const PER_REQUEST_MS = 30_000;
const BASE = `fuzz-${process.pid}`;
const SIM_DEVICE = 4201;
const SIM_ADDRESS = "127.0.77.1";
const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;

type Role = "admin" | "operator" | "viewer" | "none" | "unknown-key" | "malformed";
const WRITE_ROLES = new Set<Role>(["admin", "operator"]);

interface Param {
  name: string;
  in: "path" | "query";
  required?: boolean;
  schema: JsonSchema;
}
interface Operation {
  id: string;
  method: string;
  path: string;
  tags: string[];
  params: Param[];
  body?: JsonSchema;
  responses: Record<string, { content?: Record<string, { schema?: JsonSchema }> }>;
}

interface FuzzRequest {
  op: Operation;
  role: Role;
  mode: string;
  url: string;
  /** Path parameters as the api decodes them (undefined when the path was mangled on purpose). */
  pathValues?: Record<string, string>;
  query: [string, string][];
  body?: { text: string; contentType?: string };
}

interface Outcome {
  req: FuzzRequest;
  status: number;
  contentType: string;
  json?: unknown;
  text?: string;
  transaction?: string;
  /** path, query and body conform to the spec (ajv), and the role may use the route. */
  conforming: boolean;
  /** path, query and body conform to the spec, whatever the role. */
  shapeOk: boolean;
  bodyValue?: unknown;
  ms: number;
}

let sim: Simulator;
let broker: RunningBroker;
let gw: Gateway;
let dataDir: string;
let db: TestDatabase;
let pool: pg.Pool;
let keys: Keys;
let app: FastifyInstance;
let origin: string;
let ids: { ai1: number; ao1: number; bo1: number };
let spy: mqtt.MqttClient | undefined;

beforeAll(async () => {
  sim = await startSimulator({
    devices: [{ instance: SIM_DEVICE, address: SIM_ADDRESS, port: 0, changeIntervalMs: 1000 }],
  });
  const target = `${SIM_ADDRESS}:${sim.devices()[0]?.port}`;
  broker = await startBroker({ port: 0, host: "127.0.0.1", allowAnonymous: true, sysInterval: 0 });
  dataDir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-http-fuzz-"));
  gw = await startGateway({
    gateway_id: "gw1",
    data_dir: dataDir,
    mqtt: { url: broker.url, base_topic: BASE, reconnect_period_ms: 200, state_throttle_ms: 200 },
    bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1, offline_after_failures: 3 },
    discovery: { on_start: false, interval_s: 0, targets: [target], timeout_s: 1 },
    polling: { interval_s: 5, cov: false },
    write: {
      allowlist: [
        `${SIM_DEVICE}:analog_output_*`,
        `${SIM_DEVICE}:binary_output_*`,
        `${SIM_DEVICE}:analog_value_*`,
      ],
      min_priority: 8,
      default_priority: 16,
    },
    metrics: { enabled: false },
  });
  ({ db, pool } = await createDatabase("portable"));
  keys = await createKeys(pool);
  await createKey(pool, "fuzz-victim", "viewer");
  ids = await seed(pool, "portable");
  app = await buildApp({
    pool,
    mqttUrl: broker.url,
    baseTopic: BASE,
    defaultMetrics: false,
    // The limiter stays in the path (route limits such as discovery's still apply) but the global
    // budget must not turn the whole fuzz into 429s.
    rateLimit: { max: 1_000_000, timeWindowMs: 60_000 },
    // The gateway runs one scan at a time: with four requests in flight a discovery may wait for
    // three others, so the api waits long enough that only a silent gateway could time out.
    timeouts: { commandMs: 15_000, pointsMs: 15_000, discoveryDefaultS: 1 },
  });
  await app.listen({ host: "127.0.0.1", port: 0 });
  const address = app.server.address();
  if (!address || typeof address === "string") throw new Error("api did not listen on TCP");
  origin = `http://127.0.0.1:${address.port}`;
  for (let i = 0; i < 200 && !app.relay.gatewayStates.has("gw1"); i++) await sleep(50);
  expect(app.relay.gatewayStates.has("gw1")).toBe(true);
  // The gateway learns the simulated device before the fuzz, so that writes can succeed.
  const found = await fetch(`${origin}/api/gateways/gw1/discover`, {
    method: "POST",
    headers: { ...auth(keys.admin), "content-type": "application/json" },
    body: JSON.stringify({ timeout_s: 1 }),
  });
  expect(found.status).toBe(200);
  expect(((await found.json()) as { data: { devices_found: number } }).data.devices_found).toBeGreaterThan(0);
});

afterAll(async () => {
  await spy?.endAsync().catch(() => undefined);
  await app?.close();
  await gw?.stop();
  await broker?.close();
  await sim?.close();
  await pool?.end();
  await db?.drop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---- the spec ---------------------------------------------------------------------------------

function operations(doc: { paths: Record<string, Record<string, Record<string, unknown>>> }): Operation[] {
  const ops: Operation[] = [];
  for (const [p, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const content = (op.requestBody as { content?: Record<string, { schema: JsonSchema }> } | undefined)
        ?.content;
      ops.push({
        id: `${method.toUpperCase()} ${p}`,
        method: method.toUpperCase(),
        path: p,
        tags: (op.tags as string[] | undefined) ?? [],
        params: (op.parameters as Param[] | undefined) ?? [],
        ...(content?.["application/json"] ? { body: content["application/json"].schema } : {}),
        responses: op.responses as Operation["responses"],
      });
    }
  }
  return ops;
}

/** What a route needs, from its tags and path (the spec's security is global). */
function access(op: Operation): "public" | "viewer" | "operator" | "admin" {
  if (op.path === "/api/health" || op.path === "/metrics") return "public";
  if (op.path.startsWith("/api/keys")) return "admin";
  if (op.tags.includes("commands")) return "operator";
  return "viewer";
}
const RANK = { none: 0, "unknown-key": 0, malformed: 0, viewer: 1, operator: 2, admin: 3 } as const;
const NEED = { public: 0, viewer: 1, operator: 2, admin: 3 } as const;

// ---- generation -------------------------------------------------------------------------------

/** Known values, so that valid requests reach the data and the gateway, not only 404s. */
function known(name: string): unknown[] {
  switch (name) {
    case "gateway":
      return ["gw1"];
    case "device":
      return [SIM_DEVICE, SIM_DEVICE, 1001, 1002, 2001];
    case "point":
      return [
        "analog_output_1",
        "binary_output_1",
        "analog_value_1",
        "analog_input_1",
        "multi_state_value_1",
      ];
    case "point_id":
      return [ids.ai1, ids.ao1, ids.bo1];
    case "points":
      return [`${ids.ai1}`, `${ids.ai1},${ids.bo1}`];
    case "name":
      return ["fuzz-victim"];
    default:
      return [];
  }
}

function paramValue(p: Param): fc.Arbitrary<unknown> {
  const pool = known(p.name);
  const fromSchema = valid(p.schema);
  return pool.length
    ? fc.oneof({ arbitrary: fc.constantFrom(...pool), weight: 3 }, { arbitrary: fromSchema, weight: 1 })
    : fromSchema;
}

/** encodeURIComponent, with lone surrogates (which it refuses) made U+FFFD; raw ones are in RAW_SEGMENTS. */
const wellFormed = (s: string) => (s as unknown as { toWellFormed(): string }).toWellFormed();
const enc = (s: string) => encodeURIComponent(wellFormed(s));

const RAW_SEGMENTS = [
  "%ED%A0%80",
  "%FF",
  "%ZZ",
  "%",
  "%00",
  "a%2Fb",
  "%C0%AF",
  "%E2%80%AE",
  "..",
  ".",
  "%2e%2e",
  ";x",
  "~",
  "x".repeat(300),
];

/**
 * Discovery makes the gateway send Who-Is to whatever the request names: the fuzz may only ever
 * name loopback addresses, short scans and few chunks. Applied to every body for that route,
 * valid or not, before it is serialised.
 */
function safeDiscover(body: unknown): unknown {
  if (body === null || typeof body !== "object" || Array.isArray(body)) return body;
  const b = { ...(body as Record<string, unknown>) };
  if (Array.isArray(b.targets)) b.targets = b.targets.map((t) => (typeof t === "string" ? SIM_ADDRESS : t));
  if (typeof b.broadcast === "string") b.broadcast = "127.255.255.255";
  if (typeof b.timeout_s === "number" && b.timeout_s > 1) b.timeout_s = 1;
  if (typeof b.chunk_size === "number" && b.chunk_size >= 1) b.chunk_size = 4_194_304;
  return b;
}

function requestArb(op: Operation): fc.Arbitrary<FuzzRequest> {
  const pathParams = op.params.filter((p) => p.in === "path");
  const queryParams = op.params.filter((p) => p.in === "query");
  const modes = ["valid", "valid", "valid", "path", "query", "body", "raw-body", "long-path"];
  return fc
    .record({
      role: fc.constantFrom<Role>(
        "admin",
        "admin",
        "operator",
        "operator",
        "operator",
        "viewer",
        "viewer",
        "none",
        "unknown-key",
        "malformed",
      ),
      header: fc.constantFrom("authorization", "x-api-key"),
      mode: fc.constantFrom(...modes),
      pathVals: fc.tuple(...pathParams.map(paramValue)),
      badPath: fc.record({
        which: fc.nat(),
        value: fc.oneof(nastyString, fc.constantFrom(...RAW_SEGMENTS)),
        raw: fc.boolean(),
      }),
      query: fc.tuple(...queryParams.map((p) => fc.option(paramValue(p), { freq: 2, nil: undefined }))),
      badQuery: fc.record({
        which: fc.nat(),
        value: nastyString,
        how: fc.constantFrom("replace", "extra", "repeat"),
      }),
      body: op.body ? valid(op.body) : fc.constant(undefined),
      badBody: op.body ? mutated(op.body) : nastyValue,
      raw: fc.oneof(
        fc.record({
          text: fc.constantFrom(
            "{",
            "{value: 1",
            '{"value":1,}',
            "nul",
            '{"value":1}garbage',
            "\u0000",
            "[".repeat(10_000),
            '"just a string"',
          ),
          contentType: fc.constant("application/json"),
        }),
        fc.record({
          text: fc.constantFrom('{"value":1}', "value=1", "<value>1</value>", ""),
          contentType: fc.constantFrom(
            "text/plain",
            "application/xml",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=utf-16",
          ),
        }),
        fc.record({ text: fc.constant(""), contentType: fc.constant("application/json") }),
        fc.record({
          text: fc.constant(`{"value":"${"x".repeat(200_000)}"}`),
          contentType: fc.constant("application/json"),
        }),
      ),
      badKey: nastyString,
      // Half of the valid writes use values the simulated points take, so that some are accepted.
      likely: fc.record({
        use: fc.boolean(),
        value: fc.constantFrom<unknown>(0, 1, 21.5, true, false),
        priority: fc.constantFrom<number | undefined>(undefined, 8, 12, 16),
      }),
    })
    .map((g) => {
      const isDiscover = op.path.endsWith("/discover");
      const pathValues: Record<string, string> = {};
      let mangled = false;
      let url = op.path;
      pathParams.forEach((p, i) => {
        let v = wellFormed(String(g.pathVals[i]));
        let segment = enc(v);
        if (g.mode === "path" && g.badPath.which % pathParams.length === i) {
          v = wellFormed(g.badPath.value);
          segment = g.badPath.raw ? v : enc(v);
          if (g.badPath.raw) mangled = true;
        }
        pathValues[p.name] = v;
        url = url.replace(`{${p.name}}`, segment);
      });
      if (g.mode === "long-path") {
        url = `${url}/${"a/".repeat(3000)}`;
        mangled = true;
      }
      const query: [string, string][] = [];
      queryParams.forEach((p, i) => {
        const v = g.query[i];
        if (v !== undefined) query.push([p.name, wellFormed(String(v))]);
      });
      if (g.mode === "query") {
        const bad = wellFormed(g.badQuery.value);
        const target = queryParams.length
          ? (queryParams[g.badQuery.which % queryParams.length] as Param).name
          : "x";
        if (g.badQuery.how === "extra") query.push([`${target}_extra`, bad]);
        else if (g.badQuery.how === "repeat") query.push([target, bad], [target, bad]);
        else {
          const at = query.findIndex(([k]) => k === target);
          if (at >= 0) query.splice(at, 1);
          query.push([target, bad]);
        }
      }
      let body: FuzzRequest["body"];
      if (op.method !== "GET" && op.method !== "DELETE") {
        if (g.mode === "raw-body") body = g.raw;
        else {
          let value = g.mode === "body" ? g.badBody : g.body;
          if (g.mode === "valid" && g.likely.use && /\/(write|relinquish)$/.test(op.path)) {
            const { priority, value: v } = g.likely;
            value = {
              ...(op.path.endsWith("/write") ? { value: v } : {}),
              ...(priority === undefined ? {} : { priority }),
            };
          }
          if (isDiscover) value = safeDiscover(value);
          if (value !== undefined)
            body = { text: JSON.stringify(value) ?? "null", contentType: "application/json" };
        }
      }
      const headers: Record<string, string> = {};
      const key =
        g.role === "admin"
          ? keys.admin
          : g.role === "operator"
            ? keys.operator
            : g.role === "viewer"
              ? keys.viewer
              : undefined;
      if (key) {
        if (g.header === "authorization") headers.authorization = `Bearer ${key}`;
        else headers["x-api-key"] = key;
      } else if (g.role === "unknown-key")
        headers.authorization = `Bearer bmq_${"A".repeat(31)}${g.mode.length}`;
      else if (g.role === "malformed") headers.authorization = `Bearer ${enc(g.badKey) || "x"}`;
      const search = query.length ? `?${new URLSearchParams(query).toString()}` : "";
      return {
        op,
        role: g.role,
        mode: g.mode,
        url: `${url}${search}`,
        ...(mangled ? {} : { pathValues }),
        query,
        ...(body ? { body } : {}),
        headers,
      } as FuzzRequest & { headers: Record<string, string> };
    });
}

// ---- checking ---------------------------------------------------------------------------------

const ajv = new Ajv({ strict: false, allErrors: false });
addFormats(ajv);
const ajvCoerce = new Ajv({ strict: false, coerceTypes: true, useDefaults: true });
addFormats(ajvCoerce);
const compiled = new Map<unknown, ValidateFunction>();
function check(schema: JsonSchema, value: unknown, coerce = false): boolean {
  const key = coerce ? { schema, coerce } : schema;
  let fn = compiled.get(coerce ? JSON.stringify(key) : schema);
  if (!fn) {
    fn = (coerce ? ajvCoerce : ajv).compile(schema);
    compiled.set(coerce ? JSON.stringify(key) : schema, fn);
  }
  return fn(value) as boolean;
}

/** Whether a request conforms to the spec by ajv, independently of the api's own validator. */
function conforms(req: FuzzRequest): { ok: boolean; body?: unknown } {
  const { op } = req;
  if (!req.pathValues) return { ok: false };
  for (const p of op.params.filter((x) => x.in === "path")) {
    const holder = { v: req.pathValues[p.name] };
    if (!check({ type: "object", properties: { v: p.schema }, required: ["v"] }, holder, true))
      return { ok: false };
  }
  const q: Record<string, unknown> = {};
  const qs = op.params.filter((x) => x.in === "query");
  for (const [k, v] of req.query) {
    if (k in q && qs.some((p) => p.name === k)) return { ok: false };
    q[k] = v;
  }
  const qSchema: JsonSchema = {
    // Unknown query parameters are ignored, as HTTP APIs do; repeated known ones are not.
    type: "object",
    properties: Object.fromEntries(qs.map((p) => [p.name, p.schema])),
  };
  if (!check(qSchema, q, true)) return { ok: false };
  if (!op.body) return { ok: true };
  if (req.body === undefined) return { ok: check(op.body, {}), body: {} };
  if (!/^application\/json(;\s*charset=utf-8)?$/i.test(req.body.contentType ?? "")) return { ok: false };
  let value: unknown;
  try {
    value = JSON.parse(req.body.text);
  } catch {
    return { ok: false };
  }
  return { ok: check(op.body, value), body: value };
}

function declaredSchema(op: Operation, status: number): JsonSchema | undefined | null {
  const r = op.responses[String(status)];
  if (!r) return null;
  const c = r.content ? Object.values(r.content)[0] : undefined;
  return c?.schema;
}

async function send(req: FuzzRequest & { headers?: Record<string, string> }): Promise<Outcome> {
  const started = performance.now();
  const headers: Record<string, string> = { ...(req.headers ?? {}) };
  if (req.body?.contentType) headers["content-type"] = req.body.contentType;
  const res = await fetch(`${origin}${req.url}`, {
    method: req.op.method,
    headers,
    ...(req.body ? { body: req.body.text } : {}),
    redirect: "manual",
    signal: AbortSignal.timeout(PER_REQUEST_MS),
  });
  const contentType = res.headers.get("content-type") ?? "";
  let json: unknown;
  let text: string | undefined;
  if (contentType.startsWith("text/event-stream")) await res.body?.cancel();
  else {
    text = await res.text();
    if (contentType.startsWith("application/json")) {
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
    }
  }
  const j = json as { transaction?: unknown; error?: { details?: { transaction?: unknown } } } | undefined;
  const t = j?.transaction ?? j?.error?.details?.transaction;
  const c = conforms(req);
  return {
    req,
    status: res.status,
    contentType,
    json,
    ...(text === undefined ? {} : { text }),
    ...(typeof t === "string" ? { transaction: t } : {}),
    conforming: c.ok && RANK[req.role] >= NEED[access(req.op)],
    shapeOk: c.ok,
    bodyValue: c.body,
    ms: performance.now() - started,
  };
}

interface Published {
  topic: string;
  payload: string;
  client: string;
}

function quantile(values: number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length ? (s[Math.min(s.length - 1, Math.floor(q * s.length))] as number) : 0;
}

// ---- regressions found by the fuzz, and the security requirements spelled out -------------------

async function call(
  method: string,
  url: string,
  key: string | null,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{
  status: number;
  json: { error?: { code: string; message: string } } & Record<string, unknown>;
}> {
  const res = await fetch(`${origin}${url}`, {
    method,
    headers: {
      ...(key ? auth(key) : {}),
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...headers,
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(PER_REQUEST_MS),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : {} };
}

const auditCount = async () => Number((await pool.query("SELECT count(*) FROM write_audit")).rows[0].count);

it("security: every command route refuses missing, unknown and viewer keys, publishing and auditing nothing; keys are stored hashed", async () => {
  const published: string[] = [];
  const listener = (packet: { topic: string }, client: { id: string } | null) => {
    if (client?.id.startsWith("bacmqtt-api-")) published.push(packet.topic);
  };
  broker.aedes.on("publish", listener);
  try {
    const before = await auditCount();
    const P = `/api/gateways/gw1/devices/${SIM_DEVICE}`;
    const commands: [string, unknown][] = [
      ["/api/gateways/gw1/discover", { timeout_s: 0.2 }],
      [`${P}/refresh`, {}],
      [`${P}/points/analog_value_1/read`, {}],
      [`${P}/points/analog_value_1/write`, { value: 1, priority: 12 }],
      [`${P}/points/analog_value_1/relinquish`, { priority: 12 }],
    ];
    const unknownKey = `bmq_${"Z".repeat(32)}`;
    let refused = 0;
    for (const [url, body] of commands) {
      for (const [key, status, code] of [
        [null, 401, "API_ERR_UNAUTHORIZED"],
        [unknownKey, 401, "API_ERR_UNAUTHORIZED"],
        ["not-a-key", 401, "API_ERR_UNAUTHORIZED"],
        [keys.viewer, 403, "API_ERR_FORBIDDEN"],
      ] as const) {
        const res = await call("POST", url, key, body);
        expect([url, key, res.status, res.json.error?.code]).toEqual([url, key, status, code]);
        refused++;
      }
      // The same request with an operator key is relayed (whatever the gateway then answers).
      const ok = await call("POST", url, keys.operator, body);
      expect(ok.status, url).not.toBe(401);
      expect(ok.status, url).not.toBe(403);
    }
    expect(refused).toBe(20);
    await sleep(300);
    // Only the five operator calls reached MQTT, and only the two writes were audited.
    expect(published.length).toBe(commands.length);
    expect((await auditCount()) - before).toBe(2);
  } finally {
    broker.aedes.removeListener("publish", listener);
  }
  // Stored: a SHA-256 of each key, never the key; no column of api_keys holds a key's text.
  const { rows } = await pool.query<{ name: string; key_hash: string; whole: string }>(
    "SELECT name, key_hash, t::text AS whole FROM api_keys t",
  );
  for (const [name, key] of Object.entries({
    "viewer-1": keys.viewer,
    "operator-1": keys.operator,
    "admin-1": keys.admin,
  })) {
    const row = rows.find((r) => r.name === name);
    expect(row?.key_hash).toBe(createHash("sha256").update(key).digest("hex"));
    for (const r of rows) expect(r.whole).not.toContain(key.slice(4));
  }
});

it("answers every generated request without 5xx, with declared shapes, and relays only validated commands", async () => {
  // Everything the api's MQTT client publishes, seen by the broker (client ids from api/relay.ts) …
  const published: Published[] = [];
  const onPublish = (packet: { topic: string; payload: Buffer | string }, client: { id: string } | null) => {
    if (client?.id.startsWith("bacmqtt-api-"))
      published.push({ topic: packet.topic, payload: packet.payload.toString(), client: client.id });
  };
  broker.aedes.on("publish", onPublish);
  // … and every request topic any client publishes, seen by a subscriber to everything.
  const requestTopics: string[] = [];
  spy = await mqtt.connectAsync(broker.url, { clientId: `fuzz-spy-${process.pid}`, protocolVersion: 4 });
  spy.on("message", (topic) => {
    const parsed = parseTopic(topic, BASE);
    if (!("error" in parsed) && parsed.kind === "request") requestTopics.push(topic);
  });
  await spy.subscribeAsync("#", { qos: 1 });

  const inventory = async () =>
    (
      await pool.query(
        `SELECT (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM gateways t) AS gateways,
                (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM devices t) AS devices,
                (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM points t) AS points,
                (SELECT count(*)::int FROM readings) AS readings,
                (SELECT count(*)::int FROM write_audit) AS audit,
                (SELECT count(*)::int FROM api_keys) AS keys`,
      )
    ).rows[0] as Record<string, string | number>;
  const before = await inventory();
  const auditFloor = Number(
    (await pool.query("SELECT coalesce(max(id), 0) AS m FROM write_audit")).rows[0].m,
  );

  const doc = (await (await fetch(`${origin}/docs/json`)).json()) as Parameters<typeof operations>[0];
  const ops = operations(doc);
  expect(ops.length).toBeGreaterThan(15);
  const perOp = Math.ceil(REQUESTS / ops.length);
  const queue: (FuzzRequest & { headers: Record<string, string> })[] = [];
  ops.forEach((op, i) => {
    for (const r of fc.sample(requestArb(op), { seed: SEED + i, numRuns: perOp }))
      queue.push(r as FuzzRequest & { headers: Record<string, string> });
  });
  // Interleave the routes so slow commands do not bunch up.
  const order =
    fc.sample(fc.shuffledSubarray(queue, { minLength: queue.length }), { seed: SEED, numRuns: 1 })[0] ??
    queue;
  process.stdout.write(`HTTP_FUZZ seed=${SEED} requests=${order.length} operations=${ops.length}\n`);

  const started = Date.now();
  const outcomes: Outcome[] = [];
  const failures: string[] = [];
  let next = 0;
  let stoppedEarly = false;
  const worker = async () => {
    while (next < order.length) {
      if (Date.now() - started > MAX_MS) {
        stoppedEarly = true;
        return;
      }
      const req = order[next++] as FuzzRequest;
      try {
        outcomes.push(await send(req));
      } catch (err) {
        failures.push(`${req.op.id} ${req.url.slice(0, 200)}: no answer (${String(err)})`);
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const durationMs = Date.now() - started;
  await sleep(500); // the last QoS 1 publishes reach the spy
  broker.aedes.removeListener("publish", onPublish);

  // ---- per response ----
  const statuses: Record<string, number> = {};
  const perRoute: Record<string, number> = {};
  const undeclared: Record<string, number> = {};
  const fail = (o: Outcome, why: string) =>
    failures.push(
      `${why}: ${o.req.op.id} as ${o.req.role} (${o.req.mode}) ${o.req.url.slice(0, 200)} body=${o.req.body?.text.slice(0, 200)} → ${o.status} ${o.text?.slice(0, 300)}`,
    );
  for (const o of outcomes) {
    statuses[o.status] = (statuses[o.status] ?? 0) + 1;
    perRoute[o.req.op.id] = (perRoute[o.req.op.id] ?? 0) + 1;
    if (o.status >= 500) fail(o, "5xx");
    if (o.status >= 400) {
      const e = (o.json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
      if (
        !e ||
        typeof e.code !== "string" ||
        !/^API_ERR_[A-Z_]+$/.test(e.code) ||
        typeof e.message !== "string" ||
        !e.message
      )
        fail(o, "error without a coded JSON body");
    }
    const schema = declaredSchema(o.req.op, o.status);
    if (schema === null && o.req.pathValues) {
      // A status the route gave that its spec entry does not list. Mangled paths are left out: they
      // do not reach the route (the router answers 404 or 414 for whatever path it was).
      const k = `${o.status} ${o.req.op.id}`;
      undeclared[k] = (undeclared[k] ?? 0) + 1;
    } else if (schema && o.json !== undefined && !check(schema, o.json)) {
      fail(
        o,
        `body does not match the declared ${o.status} schema (${JSON.stringify(compiled.get(schema)?.errors?.slice(0, 2))})`,
      );
    }
    // The security requirement: a route never serves a role below what it needs.
    const need = NEED[access(o.req.op)];
    if (o.status < 400 && RANK[o.req.role] < need && o.req.pathValues)
      fail(o, "served to a role below the route's");
    if (RANK[o.req.role] < need && need > 0 && o.shapeOk)
      if (o.status !== (RANK[o.req.role] === 0 ? 401 : 403) && ![429, 431, 414].includes(o.status))
        // 429, 431 and 414 come before routing or authentication
        fail(o, "wrong refusal for the role");
    if (o.transaction && !o.conforming)
      fail(o, "relayed a request that does not conform to the spec or the role");
  }

  // ---- what the api published ----
  const byTransaction = new Map(
    outcomes.filter((o) => o.transaction).map((o) => [o.transaction as string, o]),
  );
  let invalidPublished = 0;
  let writesPublished = 0;
  for (const m of published) {
    const parsed = parseTopic(m.topic, BASE);
    const problem = (why: string) => {
      invalidPublished++;
      failures.push(`published ${m.topic} ${m.payload.slice(0, 300)}: ${why}`);
    };
    if ("error" in parsed || parsed.kind !== "request") {
      problem("not a request topic");
      continue;
    }
    const schema = SCHEMAS[`request_${parsed.endpoint.replace("/", "_")}`];
    let payload: Record<string, unknown>;
    try {
      payload = JSON.parse(m.payload);
    } catch {
      problem("not JSON");
      continue;
    }
    if (!schema || !validate(schema, payload).ok) {
      problem(
        `not a valid ${parsed.endpoint} request: ${schema ? validate(schema, payload).ok || JSON.stringify((validate(schema, payload) as { errors: string[] }).errors) : "no schema"}`,
      );
      continue;
    }
    const o = byTransaction.get(String(payload.transaction));
    if (!o) {
      problem("no HTTP request answered with this transaction");
      continue;
    }
    if (!o.conforming || !WRITE_ROLES.has(o.req.role))
      problem(`relayed for ${o.req.role}, conforming=${o.conforming}`);
    if (o.status >= 500 || (o.status >= 200 && o.status < 300) === false) {
      // a relayed command answers 2xx, or the gateway's refusal as a coded 4xx
      const code = (o.json as { error?: { code?: string } })?.error?.code ?? "";
      if (!/^API_ERR_(GATEWAY_|WRITE_REFUSED)/.test(code))
        problem(`relayed but answered ${o.status} ${code}`);
    }
    if (parsed.gateway !== o.req.pathValues?.gateway)
      problem("published for another gateway than the path's");
    if (parsed.endpoint === "device/write") {
      writesPublished++;
      const body = (o.bodyValue ?? {}) as { value?: unknown; priority?: number };
      const expected = {
        device: Number(o.req.pathValues?.device),
        point: o.req.pathValues?.point,
        value: o.req.op.path.endsWith("/relinquish") ? null : body.value,
        ...(body.priority === undefined ? {} : { priority: body.priority }),
      };
      const { transaction: _t, ...rest } = payload;
      if (JSON.stringify(rest) !== JSON.stringify(expected))
        problem(`payload differs from the request: ${JSON.stringify(expected)}`);
    }
  }
  // Every 2xx command answer was really relayed.
  for (const o of outcomes)
    if (
      o.req.op.tags.includes("commands") &&
      o.status === 200 &&
      !published.some((m) => m.payload.includes(String(o.transaction)))
    )
      fail(o, "answered 200 without publishing");

  // ---- the database ----
  const audit = (
    await pool.query<{ transaction: string; actor: string; source: string; result: string | null }>(
      // only rows this fuzz could have added
      "SELECT transaction, actor, source, result FROM write_audit WHERE id > $1",
      [auditFloor],
    )
  ).rows;
  const actors = new Set(["admin-1", "operator-1"]);
  for (const row of audit) {
    const o = byTransaction.get(row.transaction);
    if (
      !o?.conforming ||
      !actors.has(row.actor) ||
      row.source !== "api" ||
      !/\/(write|relinquish)$/.test(o.req.op.path)
    )
      failures.push(`audit row without an accepted write request: ${JSON.stringify(row)}`);
  }
  const auditedRequests = outcomes.filter(
    (o) => o.transaction && /\/(write|relinquish)$/.test(o.req.op.path),
  ).length;
  const after = await inventory();
  const keysCreated = outcomes.filter((o) => o.req.op.id === "POST /api/keys" && o.status === 201).length;
  expect({ ...after, audit: 0, keys: 0 }, "inventory tables changed").toEqual({
    ...before,
    audit: 0,
    keys: 0,
  });
  expect(Number(after.audit) - Number(before.audit)).toBe(auditedRequests);
  expect(Number(after.keys) - Number(before.keys)).toBe(keysCreated);

  const fivexx = outcomes.filter((o) => o.status >= 500).length;
  report("HTTP property-based fuzz from the OpenAPI spec", {
    seed: SEED,
    requests: outcomes.length,
    operations: ops.length,
    stopped_early: stoppedEarly,
    per_route: perRoute,
    statuses,
    "5xx": fivexx,
    conforming_requests: outcomes.filter((o) => o.conforming).length,
    published: published.length,
    published_seen_by_subscriber: requestTopics.length,
    writes_published: writesPublished,
    invalid_published: invalidPublished,
    audit_rows_added: Number(after.audit) - Number(before.audit),
    audit_rows_ok: audit.filter((r) => r.result === "ok").length,
    commands_2xx: outcomes.filter((o) => o.req.op.tags.includes("commands") && o.status < 300).length,
    keys_created: keysCreated,
    undeclared_statuses: undeclared,
    failures: failures.length,
    duration_ms: durationMs,
    p50_ms: Math.round(
      quantile(
        outcomes.map((o) => o.ms),
        0.5,
      ),
    ),
    p99_ms: Math.round(
      quantile(
        outcomes.map((o) => o.ms),
        0.99,
      ),
    ),
  });
  for (const f of failures.slice(0, 50)) process.stdout.write(`HTTP_FUZZ_FAIL ${f}\n`);
  expect(failures.slice(0, 15)).toEqual([]);
  expect(fivexx).toBe(0);
  // Every status a route gave is in its spec entry (a client generated from the spec knows it).
  expect(undeclared).toEqual({});
  expect(invalidPublished).toBe(0);
  expect(requestTopics.length).toBe(published.length);
  expect(outcomes.length).toBeGreaterThanOrEqual(Math.min(order.length, 300));
  // The fuzz reached every class it claims to: accepted writes, refusals, validation errors.
  expect(writesPublished).toBeGreaterThan(0);
  expect(audit.some((r) => r.result === "ok")).toBe(true);
  expect(statuses[200]).toBeGreaterThan(0);
  expect(statuses[400]).toBeGreaterThan(0);
  expect(statuses[401]).toBeGreaterThan(0);
  expect(statuses[403]).toBeGreaterThan(0);
});

it("regressions: NUL in text, gateway refusals of valid-looking requests, router and parser errors, rate-limited commands", async () => {
  // A key's first call counts against the address (which the fuzz has used up for discovery);
  // once the key is known, against the key: each fresh key makes one read first.
  const fresh = async (name: string) => {
    const key = (await createKey(pool, name, "operator")).key;
    expect((await call("GET", "/api/gateways", key)).status).toBe(200);
    return key;
  };
  const op = await fresh("regress-operator");
  const before = await auditCount();
  // U+0000 reached PostgreSQL (500 on a lookup, 503 on the write audit): now a 400 from validation.
  for (const [method, url, body] of [
    ["POST", "/api/gateways/%00/discover", {}],
    ["GET", "/api/gateways/%00", undefined],
    ["GET", "/api/devices?vendor=%00", undefined],
    ["POST", `/api/gateways/gw1/devices/${SIM_DEVICE}/points/analog_value_1/write`, { value: "a\u0000b" }],
  ] as const) {
    const res = await call(method, url, op, body);
    expect(res.status, url).toBe(400);
    expect(res.json.error?.code, url).toBe("API_ERR_VALIDATION");
  }
  expect(await auditCount()).toBe(before);
  // The gateway refuses what the api's schema cannot tell: a request fault (422), not a gateway failure (502).
  const range = await call("POST", "/api/gateways/gw1/discover", op, { low: 900, high: 10, timeout_s: 0.2 });
  expect([range.status, range.json.error?.code]).toEqual([422, "API_ERR_GATEWAY_REJECTED"]);
  expect(range.json.error?.message).toContain("GW_ERR_BACNET_RANGE");
  const P = `/api/gateways/gw1/devices/${SIM_DEVICE}/points`;
  const property = await call("POST", `${P}/analog_value_1/read`, op, { property: "no_such_property" });
  expect([property.status, property.json.error?.code]).toEqual([422, "API_ERR_GATEWAY_REJECTED"]);
  const value = await call("POST", `${P}/analog_value_1/write`, op, { value: "not a number", priority: 12 });
  expect([value.status, value.json.error?.code]).toEqual([422, "API_ERR_GATEWAY_REJECTED"]);
  expect((await pool.query("SELECT result FROM write_audit ORDER BY id DESC LIMIT 1")).rows[0].result).toBe(
    "refused",
  );
  // The router's and Node's own refusals carry our coded error body.
  const badUrl = await call("GET", "/api/points/%ZZ/history", op);
  expect([badUrl.status, badUrl.json.error?.code]).toEqual([400, "API_ERR_BAD_URL"]);
  const longParam = await call("GET", `/api/gateways/${"g".repeat(300)}`, op);
  expect([longParam.status, longParam.json.error?.code]).toEqual([414, "API_ERR_PATH_TOO_LONG"]);
  const bigHeader = await call("GET", "/api/gateways", op, undefined, { "x-padding": "p".repeat(20_000) });
  expect([bigHeader.status, bigHeader.json.error?.code]).toEqual([431, "API_ERR_HEADERS_TOO_LARGE"]);
  // A rate-limited command answered 500 (its declared 429 schema needs a message): now a coded 429.
  const limited = await fresh("regress-limited");
  const seen: number[] = [];
  let last = await call("POST", "/api/gateways/ghost/discover", limited, {});
  for (let i = 0; i < 15 && last.status !== 429; i++) {
    seen.push(last.status);
    last = await call("POST", "/api/gateways/ghost/discover", limited, {});
  }
  expect(seen).toEqual(Array(10).fill(404)); // discovery: 10 per minute per key
  expect(last.status).toBe(429);
  expect(last.json.error?.code).toBe("API_ERR_RATE_LIMITED");
  expect(last.json.error?.message).toMatch(/rate limit exceeded/);
  // The limit holds per key: another operator key still gets through (404: no such gateway).
  expect((await call("POST", "/api/gateways/ghost/discover", op, {})).status).toBe(404);
});
