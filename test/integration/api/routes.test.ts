// Every read route, the security layer and bad input through `inject`, against a real database of
// each dialect (plain PostgreSQL, portable; TimescaleDB WASM over pglite-socket). Command routes
// here run without a broker (503, attempt still audited); with a real gateway they are in
// commands.test.ts.
import { readFileSync } from "node:fs";
import type { FastifyInstance } from "fastify";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TestDatabase } from "../../support/db-postgres.ts";
import {
  type AppFixture,
  appWithoutBroker,
  auth,
  createDatabase,
  createKeys,
  type Dialect,
  type Keys,
  READINGS,
  STEP_MS,
  seed,
  T0,
} from "./fixture.ts";

const iso = (ms: number) => new Date(ms).toISOString();
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

function suite(dialect: Dialect) {
  describe(`api routes (${dialect})`, () => {
    let db: TestDatabase;
    let pool: pg.Pool;
    let fx: AppFixture;
    let app: FastifyInstance;
    let keys: Keys;
    let ids: { ai1: number; ao1: number; bo1: number };

    const get = (url: string, key: string | null = keys.viewer) =>
      app.inject({ method: "GET", url, headers: key ? auth(key) : {} });
    const post = (url: string, payload: unknown, key: string | null = keys.operator) => {
      const headers: Record<string, string> = key ? auth(key) : {};
      if (typeof payload === "string") {
        headers["content-type"] = "application/json";
        return app.inject({ method: "POST", url, headers, body: payload });
      }
      return app.inject({ method: "POST", url, headers, payload: payload as object });
    };
    const auditCount = async () =>
      Number((await pool.query("SELECT count(*) FROM write_audit")).rows[0].count);

    beforeAll(async () => {
      ({ db, pool } = await createDatabase(dialect));
      keys = await createKeys(pool);
      ids = await seed(pool, dialect);
      fx = await appWithoutBroker(pool);
      app = fx.app;
    });
    afterAll(async () => {
      await fx?.close();
      await pool?.end();
      await db?.drop();
    });

    describe("inventory", () => {
      it("lists gateways with device counts", async () => {
        const res = await get("/api/gateways");
        expect(res.statusCode).toBe(200);
        const items = res.json().items;
        expect(items.map((g: { gateway_id: string }) => g.gateway_id)).toEqual(["gw1", "gw2"]);
        expect(items[0]).toMatchObject({ state: "online", bd_seq: 3, devices: 2, devices_online: 1 });
        expect(items[0].last_seen).toMatch(/^\d{4}-\d\d-\d\dT/);
        expect((await get("/api/gateways/gw2")).json()).toMatchObject({ gateway_id: "gw2", devices: 1 });
        expect((await get("/api/gateways/nope")).statusCode).toBe(404);
      });

      it("lists devices with filters, search, sort and paging", async () => {
        const all = (await get("/api/devices")).json();
        expect(all.total).toBe(3);
        expect(all.items.map((d: { object_name: string }) => d.object_name)).toEqual([
          "AHU-1",
          "Boiler",
          "VAV-2",
        ]);
        expect(all.items[0]).toMatchObject({
          gateway_id: "gw1",
          device_instance: 1001,
          points: 3,
          online: true,
        });
        const names = async (q: string) =>
          (await get(`/api/devices?${q}`))
            .json()
            .items.map((d: { device_instance: number }) => d.device_instance);
        expect(await names("gateway=gw1")).toEqual([1001, 1002]);
        expect(await names("status=offline")).toEqual([1002]);
        expect(await names("vendor=acme")).toEqual([1001, 2001]);
        expect(await names("name=zone")).toEqual([1002]);
        expect(await names("q=basement")).toEqual([2001]);
        expect(await names("q=1002")).toEqual([1002]);
        expect(await names("sort=instance&order=desc")).toEqual([2001, 1002, 1001]);
        const page = (await get("/api/devices?sort=instance&limit=1&offset=1")).json();
        expect(page).toMatchObject({ total: 3, limit: 1, offset: 1 });
        expect(page.items.map((d: { device_instance: number }) => d.device_instance)).toEqual([1002]);
        expect((await get("/api/devices?offset=10")).json()).toMatchObject({ total: 3, items: [] });
      });

      it("pages by cursor through every sort in both orders, ties and unnamed devices included", async () => {
        // Extra devices for this test only: no name/vendor/last_seen, a name equal but for case, and
        // last_seen values a microsecond apart (a cursor that lost precision would skip or repeat).
        await pool.query(
          `INSERT INTO devices (gateway_id, device_instance, object_name, vendor_name, last_seen) VALUES
             ('gw2', 2002, NULL, NULL, NULL),
             ('gw2', 2003, 'ahu-1', 'acme controls', '2026-11-20 00:00:00.123457+00'),
             ('gw1', 1003, 'Zeta', 'ACME CONTROLS', '2026-11-20 00:00:00.123456+00')`,
        );
        try {
          const { rows } = await pool.query<{
            gateway_id: string;
            device_instance: number;
            object_name: string | null;
            vendor_name: string | null;
            us: string | null;
          }>(
            `SELECT gateway_id, device_instance, object_name, vendor_name,
                    (extract(epoch FROM last_seen) * 1000000)::bigint::text AS us FROM devices`,
          );
          expect(rows).toHaveLength(6);
          // The documented order, computed here: nulls last ascending, text case-insensitive in
          // byte order (these names are ASCII), ties broken by gateway then instance.
          type Row = (typeof rows)[number];
          const cmp = (a: string | number | bigint, b: string | number | bigint) =>
            a < b ? -1 : a > b ? 1 : 0;
          const nullable = <T extends string | bigint>(a: T | null, b: T | null) =>
            a === null || b === null ? cmp(a === null ? 1 : 0, b === null ? 1 : 0) : cmp(a, b);
          const pk = (a: Row, b: Row) =>
            cmp(a.gateway_id, b.gateway_id) || cmp(a.device_instance, b.device_instance);
          const lower = (s: string | null) => (s === null ? null : s.toLowerCase());
          const orders: Record<string, (a: Row, b: Row) => number> = {
            name: (a, b) => nullable(lower(a.object_name), lower(b.object_name)) || pk(a, b),
            vendor: (a, b) => nullable(lower(a.vendor_name), lower(b.vendor_name)) || pk(a, b),
            last_seen: (a, b) =>
              nullable(a.us === null ? null : BigInt(a.us), b.us === null ? null : BigInt(b.us)) || pk(a, b),
            instance: (a, b) => cmp(a.device_instance, b.device_instance) || cmp(a.gateway_id, b.gateway_id),
            gateway: pk,
          };
          for (const [sort, compare] of Object.entries(orders)) {
            for (const order of ["asc", "desc"]) {
              const expected = [...rows].sort(compare).map((r) => `${r.gateway_id}/${r.device_instance}`);
              if (order === "desc") expected.reverse();
              const seen: string[] = [];
              let cursor: string | null = null;
              let first = true;
              // Bounded: one request per device and one more.
              for (let i = 0; i <= rows.length && (first || cursor !== null); i++) {
                const res = await get(
                  `/api/devices?sort=${sort}&order=${order}&limit=2${cursor ? `&cursor=${cursor}` : ""}`,
                );
                expect(res.statusCode, res.body).toBe(200);
                const page = res.json();
                expect(page.total).toBe(first ? 6 : null);
                expect(page.offset).toBe(first ? 0 : null);
                for (const d of page.items) seen.push(`${d.gateway_id}/${d.device_instance}`);
                cursor = page.next_cursor;
                first = false;
              }
              expect(cursor, `${sort} ${order}: paging did not end`).toBeNull();
              expect(seen, `${sort} ${order}`).toEqual(expected);
              // Legacy offset paging gives the same order.
              const byOffset = (
                await get(`/api/devices?sort=${sort}&order=${order}&limit=4&offset=2`)
              ).json();
              expect(byOffset.items.map((d: Row) => `${d.gateway_id}/${d.device_instance}`)).toEqual(
                expected.slice(2, 6),
              );
            }
          }

          const first = (await get("/api/devices?limit=2")).json();
          expect(first.next_cursor).toEqual(expect.any(String));
          const counted = (await get(`/api/devices?limit=2&count=true&cursor=${first.next_cursor}`)).json();
          expect(counted.total).toBe(6);
          expect((await get("/api/devices?limit=2&count=false")).json().total).toBeNull();
          expect((await get("/api/devices?limit=2&status=online&count=true")).json().total).toBe(2);
          // A cursor belongs to its sort and order; garbage and cursor+offset are refused.
          for (const url of [
            `/api/devices?limit=2&order=desc&cursor=${first.next_cursor}`,
            `/api/devices?limit=2&sort=instance&cursor=${first.next_cursor}`,
            "/api/devices?cursor=bm90LWpzb24",
            `/api/devices?cursor=${Buffer.from(JSON.stringify({ s: "name:asc", k: [1, 2] })).toString("base64url")}`,
            `/api/devices?cursor=${first.next_cursor}&offset=2`,
            // Well-formed but beyond what the database takes: still the client's mistake.
            ...[
              [false, "a\u0000", "gw1", 1],
              [false, "a", "gw1", 2 ** 31],
            ].map(
              (k) =>
                `/api/devices?cursor=${Buffer.from(JSON.stringify({ s: "name:asc", k })).toString("base64url")}`,
            ),
            `/api/devices?sort=last_seen&cursor=${Buffer.from(JSON.stringify({ s: "last_seen:asc", k: [false, "9999999999999999999", "gw1", 1] })).toString("base64url")}`,
            "/api/devices?cursor=not%20base64url!",
          ]) {
            const res = await get(url);
            expect(res.statusCode, url).toBe(400);
            expect(res.json().error.code, url).toMatch(/^API_ERR_(BAD_REQUEST|VALIDATION)$/);
          }
        } finally {
          await pool.query(
            "DELETE FROM devices WHERE (gateway_id, device_instance) IN (('gw2', 2002), ('gw2', 2003), ('gw1', 1003))",
          );
        }
      });

      it("treats search text as data: wildcards are literal and injection does nothing", async () => {
        expect(
          (await get("/api/devices?q=100%25"))
            .json()
            .items.map((d: { object_name: string }) => d.object_name),
        ).toEqual(["AHU-1"]);
        expect((await get("/api/devices?q=_")).json().total).toBe(0);
        const evil = encodeURIComponent("'; DROP TABLE devices; --");
        const res = await get(`/api/devices?q=${evil}&vendor=${evil}`);
        expect(res.statusCode).toBe(200);
        expect(res.json().total).toBe(0);
        expect((await pool.query("SELECT count(*)::int AS n FROM devices")).rows[0].n).toBe(3);
        expect(
          (await get(`/api/devices?sort=${encodeURIComponent("name; DROP TABLE devices")}`)).statusCode,
        ).toBe(400);
      });

      it("returns one device with its points and their latest values", async () => {
        const res = await get("/api/gateways/gw1/devices/1001");
        expect(res.statusCode).toBe(200);
        const d = res.json();
        expect(d).toMatchObject({
          object_name: "AHU-1",
          vendor_name: "Acme Controls",
          address: "10.0.0.5:47808",
        });
        expect(d.points.map((p: { point: string }) => p.point)).toEqual([
          "analog_input_1",
          "analog_output_1",
          "binary_output_1",
        ]);
        expect(d.points[0]).toMatchObject({
          point_id: ids.ai1,
          name: "Supply Air Temp",
          writable: false,
          latest: { time: iso(T0 + (READINGS - 1) * STEP_MS), value: READINGS - 1, quality: "good" },
        });
        expect(d.points[1].latest).toBeNull();
        expect(d.points[2]).toMatchObject({ active_text: "On", latest: { value: 1, value_text: "On" } });
        expect((await get("/api/gateways/gw1/devices/4242")).statusCode).toBe(404);
        expect((await get("/api/gateways/gw2/devices/1001")).statusCode).toBe(404);
      });

      it("returns one point by name and by id", async () => {
        const a = (await get("/api/gateways/gw1/devices/1001/points/analog_output_1")).json();
        expect(a).toMatchObject({ point_id: ids.ao1, writable: true, units: "percent", latest: null });
        const b = (await get(`/api/points/${ids.bo1}`)).json();
        expect(b).toMatchObject({ point: "binary_output_1", latest: { value_text: "On" } });
        expect((await get("/api/gateways/gw1/devices/1001/points/analog_input_9")).statusCode).toBe(404);
        expect((await get("/api/points/999999")).statusCode).toBe(404);
      });
    });

    describe("history and stats", () => {
      it("returns raw values in a range", async () => {
        const res = await get(
          `/api/points/${ids.ai1}/history?from=${iso(T0)}&to=${iso(T0 + HOUR)}&resolution=raw`,
        );
        expect(res.statusCode).toBe(200);
        const h = res.json();
        expect(h.resolution).toBe("raw");
        expect(h.series[0]).toMatchObject({ point_id: ids.ai1, point: "analog_input_1", truncated: false });
        expect(h.series[0].rows).toEqual(
          [0, 1, 2, 3].map((i) => ({
            time: iso(T0 + i * STEP_MS),
            value: i,
            value_text: null,
            quality: "good",
          })),
        );
        const limited = (
          await get(
            `/api/points/${ids.ai1}/history?from=${iso(T0)}&to=${iso(T0 + HOUR)}&resolution=raw&limit=2`,
          )
        ).json();
        expect(limited.series[0]).toMatchObject({ truncated: true });
        expect(limited.series[0].rows).toHaveLength(2);
      });

      it("returns hourly and daily aggregates", async () => {
        const hourly = (
          await get(
            `/api/points/${ids.ai1}/history?from=${iso(T0 + 30 * 60_000)}&to=${iso(T0 + 3 * HOUR)}&resolution=hourly`,
          )
        ).json();
        expect(hourly.series[0].rows).toEqual(
          [0, 1, 2].map((k) => ({
            time: iso(T0 + k * HOUR),
            value: 4 * k + 1.5,
            min: 4 * k,
            max: 4 * k + 3,
            count: 4,
            last: 4 * k + 3,
          })),
        );
        const daily = (
          await get(
            `/api/points/${ids.ai1}/history?from=${iso(T0)}&to=${iso(T0 + 10 * DAY)}&resolution=daily`,
          )
        ).json();
        expect(daily.series[0].rows).toEqual(
          [0, 1, 2].map((d) => ({
            time: iso(T0 + d * DAY),
            value: 96 * d + 47.5,
            min: 96 * d,
            max: 96 * d + 95,
            count: 96,
            last: 96 * d + 95,
          })),
        );
      });

      it("chooses the resolution by range with auto", async () => {
        const r = async (span: number) =>
          (await get(`/api/points/${ids.ai1}/history?from=${iso(T0)}&to=${iso(T0 + span)}`)).json()
            .resolution;
        expect(await r(DAY)).toBe("raw");
        expect(await r(10 * DAY)).toBe("hourly");
        expect(await r(200 * DAY)).toBe("daily");
      });

      it("returns several points at once and as CSV", async () => {
        const q = `points=${ids.ai1},${ids.bo1}&from=${iso(T0)}&to=${iso(T0 + HOUR)}&resolution=raw`;
        const h = (await get(`/api/history?${q}`)).json();
        expect(
          h.series.map((s: { point_id: number; rows: unknown[] }) => [s.point_id, s.rows.length]),
        ).toEqual([
          [ids.ai1, 4],
          [ids.bo1, 0],
        ]);
        const csv = await get(`/api/history.csv?${q}`);
        expect(csv.statusCode).toBe(200);
        expect(csv.headers["content-type"]).toMatch(/^text\/csv/);
        expect(csv.headers["content-disposition"]).toMatch(/attachment/);
        const lines = csv.body.trim().split("\r\n");
        expect(lines[0]).toBe(
          "point_id,gateway_id,device_instance,point,name,units,time,value,value_text,min,max,count",
        );
        expect(lines[1]).toBe(
          `${ids.ai1},gw1,1001,analog_input_1,Supply Air Temp,degrees-celsius,${iso(T0)},0,,,,`,
        );
        expect(lines).toHaveLength(5);
        expect((await get(`/api/history?points=${ids.ai1},999999`)).statusCode).toBe(404);
        expect((await get("/api/history?points=1;DROP")).statusCode).toBe(400);
        expect(
          (await get(`/api/points/${ids.ai1}/history?from=${iso(T0 + HOUR)}&to=${iso(T0)}`)).statusCode,
        ).toBe(400);
        expect((await get(`/api/points/${ids.ai1}/history?from=yesterday`)).statusCode).toBe(400);
      });

      it("returns per-point and per-device stats", async () => {
        const s = (
          await get(`/api/points/${ids.ai1}/stats?period=daily&from=${iso(T0)}&to=${iso(T0 + 2 * DAY)}`)
        ).json();
        expect(s).toMatchObject({ point_id: ids.ai1, period: "daily" });
        expect(s.rows).toEqual(
          [0, 1].map((d) => ({
            bucket: iso(T0 + d * DAY),
            avg: 96 * d + 47.5,
            min: 96 * d,
            max: 96 * d + 95,
            count: 96,
            last: 96 * d + 95,
          })),
        );
        const dev = (
          await get(
            `/api/gateways/gw1/devices/1001/stats?period=hourly&from=${iso(T0)}&to=${iso(T0 + 2 * HOUR)}`,
          )
        ).json();
        const ai = dev.points.find((p: { point: string }) => p.point === "analog_input_1");
        expect(ai).toMatchObject({ avg: 3.5, min: 0, max: 7, count: 8, last: 7 });
        expect(ai.buckets).toHaveLength(2);
        expect(dev.points.find((p: { point: string }) => p.point === "analog_output_1")).toMatchObject({
          count: 0,
          avg: null,
          buckets: [],
        });
        expect((await get("/api/gateways/gw1/devices/4242/stats")).statusCode).toBe(404);
      });
    });

    describe("commands without a broker", () => {
      it("answers 503 and still records the write attempt", async () => {
        const before = await auditCount();
        const res = await post("/api/gateways/gw1/devices/1001/points/analog_output_1/write", {
          value: 40,
          priority: 8,
        });
        expect(res.statusCode).toBe(503);
        expect(res.json().error.code).toBe("API_ERR_BROKER_UNAVAILABLE");
        expect(await auditCount()).toBe(before + 1);
        const audit = (await get("/api/audit?limit=1")).json().items[0];
        expect(audit).toMatchObject({
          gateway_id: "gw1",
          device_instance: 1001,
          point: "analog_output_1",
          value: 40,
          priority: 8,
          source: "api",
          actor: "operator-1",
          result: "error",
          error_code: "API_ERR_BROKER_UNAVAILABLE",
        });
        expect(audit.transaction).toMatch(/^api-/);
        expect((await post("/api/gateways/gw1/discover", {})).statusCode).toBe(503);
        expect((await post("/api/gateways/unknown-gw/discover", {})).statusCode).toBe(404);
      });
    });

    describe("bad input: clear 4xx, nothing written", () => {
      const W = "/api/gateways/gw1/devices/1001/points/analog_output_1/write";
      it.each([
        ["wrong type of priority", { value: 1, priority: "high" }, 400, "API_ERR_VALIDATION"],
        ["priority out of range", { value: 1, priority: 17 }, 400, "API_ERR_VALIDATION"],
        ["no value", { priority: 8 }, 400, "API_ERR_VALIDATION"],
        ["an object as value", { value: { $gt: 1 } }, 400, "API_ERR_VALIDATION"],
        ["unknown property", { value: 1, sql: "DROP TABLE write_audit" }, 400, "API_ERR_VALIDATION"],
        ["not JSON", "{value: 1", 400, "API_ERR_BAD_JSON"],
        ["a huge body", { value: "x".repeat(100_000) }, 413, "API_ERR_BODY_TOO_LARGE"],
      ])("%s", async (_label, body, status, code) => {
        const before = await auditCount();
        const res = await post(W, body);
        expect(res.statusCode).toBe(status);
        expect(res.json().error.code).toBe(code);
        expect(res.json().error.message.length).toBeGreaterThan(5);
        expect(await auditCount()).toBe(before);
      });

      it("refuses bad path parameters and other media types", async () => {
        const before = await auditCount();
        for (const url of [
          "/api/gateways/gw1/devices/-1/points/analog_output_1/write",
          "/api/gateways/gw1/devices/99999999/points/analog_output_1/write",
          "/api/gateways/gw1/devices/1001/points/DROP%20TABLE/write",
          "/api/gateways/gw1/devices/abc/points/analog_output_1/write",
        ]) {
          const res = await post(url, { value: 1 });
          expect(res.statusCode, url).toBe(400);
          expect(res.json().error.code).toBe("API_ERR_VALIDATION");
        }
        const unknownGateway = await post("/api/gateways/ghost/devices/1/points/analog_output_1/write", {
          value: 1,
        });
        expect(unknownGateway.statusCode).toBe(404);
        const xml = await app.inject({
          method: "POST",
          url: W,
          headers: { ...auth(keys.operator), "content-type": "application/xml" },
          body: "<value>1</value>",
        });
        expect(xml.statusCode).toBe(415);
        expect(xml.json().error.code).toBe("API_ERR_UNSUPPORTED_MEDIA_TYPE");
        expect(await auditCount()).toBe(before);
        expect((await get("/api/nothing-here")).json().error.code).toBe("API_ERR_NOT_FOUND");
      });
    });

    describe("security", () => {
      it("needs a key for reads by default and an operator key for commands", async () => {
        const none = await get("/api/devices", null);
        expect(none.statusCode).toBe(401);
        expect(none.json().error).toMatchObject({ code: "API_ERR_UNAUTHORIZED" });
        expect(none.json().error.message).toMatch(/viewer/);
        const wrong = await get("/api/devices", "bmq_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        expect(wrong.statusCode).toBe(401);
        expect((await get("/api/devices", "not-a-key")).statusCode).toBe(401);
        const viewerWrites = await post(
          "/api/gateways/gw1/devices/1001/points/analog_output_1/write",
          { value: 1 },
          keys.viewer,
        );
        expect(viewerWrites.statusCode).toBe(403);
        expect(viewerWrites.json().error).toMatchObject({ code: "API_ERR_FORBIDDEN" });
        expect(viewerWrites.json().error.message).toMatch(/operator/);
        expect((await post("/api/gateways/gw1/discover", {}, null)).statusCode).toBe(401);
        const xKey = await app.inject({
          method: "GET",
          url: "/api/gateways",
          headers: { "x-api-key": keys.viewer },
        });
        expect(xKey.statusCode).toBe(200);
      });

      it("manages keys with the admin role only; a revoked key stops working", async () => {
        expect((await get("/api/keys", keys.operator)).statusCode).toBe(403);
        const created = await post("/api/keys", { name: "temp", role: "viewer" }, keys.admin);
        expect(created.statusCode).toBe(201);
        const key = created.json().key as string;
        expect(key).toMatch(/^bmq_/);
        const stored = (await pool.query("SELECT key_hash FROM api_keys WHERE name = 'temp'")).rows[0]
          .key_hash;
        expect(stored).not.toContain(key);
        expect(stored).toMatch(/^[0-9a-f]{64}$/);
        const listed = (await get("/api/keys", keys.admin)).json().items;
        expect(listed.map((k: { name: string }) => k.name)).toContain("temp");
        expect(JSON.stringify(listed)).not.toContain("key_hash");
        expect((await post("/api/keys", { name: "temp", role: "viewer" }, keys.admin)).statusCode).toBe(409);
        expect((await post("/api/keys", { name: "x", role: "root" }, keys.admin)).statusCode).toBe(400);
        expect((await get("/api/gateways", key)).statusCode).toBe(200);
        expect(
          (await app.inject({ method: "DELETE", url: "/api/keys/temp", headers: auth(keys.admin) }))
            .statusCode,
        ).toBe(204);
        // The key cache lives 5 s; a fresh app sees the revocation at once.
        const fresh = await appWithoutBroker(pool);
        try {
          expect(
            (await fresh.app.inject({ method: "GET", url: "/api/gateways", headers: auth(key) })).statusCode,
          ).toBe(401);
        } finally {
          await fresh.close();
        }
      });

      it("serves reads without a key when configured open; commands still need operator", async () => {
        const open = await appWithoutBroker(pool, { readAccess: "open" });
        try {
          expect((await open.app.inject({ method: "GET", url: "/api/devices" })).statusCode).toBe(200);
          const cmd = await open.app.inject({
            method: "POST",
            url: "/api/gateways/gw1/discover",
            payload: {},
          });
          expect(cmd.statusCode).toBe(401);
        } finally {
          await open.close();
        }
      });

      it("sets security headers, CORS only for configured origins, and rate-limits", async () => {
        const res = await get("/api/gateways");
        expect(res.headers["x-content-type-options"]).toBe("nosniff");
        expect(res.headers["content-security-policy"]).toContain("default-src 'self'");
        expect(res.headers["x-frame-options"]).toBeDefined();
        expect(res.headers["access-control-allow-origin"]).toBeUndefined();
        const limited = await appWithoutBroker(pool, {
          corsOrigins: ["https://console.example"],
          rateLimit: { max: 3, timeWindowMs: 60_000 },
        });
        try {
          const call = (origin: string) =>
            limited.app.inject({
              method: "GET",
              url: "/api/gateways",
              headers: { ...auth(keys.viewer), origin },
            });
          expect((await call("https://console.example")).headers["access-control-allow-origin"]).toBe(
            "https://console.example",
          );
          expect((await call("https://evil.example")).headers["access-control-allow-origin"]).toBeUndefined();
          // The first call of a key counts against the address; once the key is known, against the key.
          let over = await call("https://console.example");
          for (let i = 0; i < 10 && over.statusCode !== 429; i++)
            over = await call("https://console.example");
          expect(over.statusCode).toBe(429);
          expect(over.json().error.code).toBe("API_ERR_RATE_LIMITED");
          // Another key has its own budget (its first call goes on the address, which has room).
          expect(
            (await limited.app.inject({ method: "GET", url: "/api/gateways", headers: auth(keys.admin) }))
              .statusCode,
          ).toBe(200);
          // Made-up keys do not get fresh budgets: they share the address's.
          const fakes = [];
          for (const i of [1, 2, 3])
            fakes.push(
              await limited.app.inject({
                method: "GET",
                url: "/api/gateways",
                headers: auth(`bmq_${String(i).repeat(32)}`),
              }),
            );
          expect(fakes.map((r) => r.statusCode)).toEqual([401, 429, 429]);
        } finally {
          await limited.close();
        }
      });
      it("a flood of invented keys from many addresses does not move a good key onto its address's budget", async () => {
        const limited = await appWithoutBroker(pool, { rateLimit: { max: 2, timeWindowMs: 60_000 } });
        try {
          const call = (headers: Record<string, string>, remoteAddress = "10.9.0.1") =>
            limited.app.inject({ method: "GET", url: "/api/gateways", headers, remoteAddress });
          // The key's first call counts against the address; from then on against the key.
          expect((await call(auth(keys.viewer))).statusCode).toBe(200);
          // The address's budget is used up by a caller without a key.
          expect((await call({})).statusCode).toBe(401);
          expect((await call({})).statusCode).toBe(429);
          // 1,100 made-up keys, each from its own address: each is looked up once and refused.
          const codes = new Map<number, number>();
          for (let i = 0; i < 1100; i++) {
            const res = await call(
              auth(`bmq_${i.toString(16).padStart(32, "0")}`),
              `10.8.${i >> 8}.${i & 255}`,
            );
            codes.set(res.statusCode, (codes.get(res.statusCode) ?? 0) + 1);
          }
          expect(Object.fromEntries(codes)).toEqual({ 401: 1100 });
          // The good key still has its own budget (before: the flood cleared the cache, the key
          // counted against the exhausted address and got 429).
          expect((await call(auth(keys.viewer))).statusCode).toBe(200);
        } finally {
          await limited.close();
        }
      });
    });

    describe("health, metrics, docs, console", () => {
      it("reports the database, the broker and gateways", async () => {
        const res = await get("/api/health", null);
        expect(res.statusCode).toBe(503); // no broker in this suite
        expect(res.json()).toMatchObject({
          status: "degraded",
          database: { ok: true },
          broker: { connected: false },
          gateways: [
            { gateway_id: "gw1", state: "online", source: "database" },
            { gateway_id: "gw2", state: "offline", source: "database" },
          ],
        });
        expect((await get("/health", null)).statusCode).toBe(503);
      });

      it("exposes Prometheus metrics", async () => {
        const res = await get("/metrics", null);
        expect(res.statusCode).toBe(200);
        expect(res.body).toContain("bacmqtt_api_http_request_duration_seconds_bucket");
        expect(res.body).toContain(
          'bacmqtt_api_commands_total{endpoint="device/write",outcome="unavailable"}',
        );
      });

      it("documents every route with request and response schemas in OpenAPI", async () => {
        const doc = (await get("/docs/json", null)).json();
        const paths = Object.keys(doc.paths);
        const expected = [
          "/api/gateways",
          "/api/gateways/{gateway}",
          "/api/devices",
          "/api/gateways/{gateway}/devices/{device}",
          "/api/gateways/{gateway}/devices/{device}/points/{point}",
          "/api/points/{point_id}",
          "/api/points/{point_id}/history",
          "/api/history",
          "/api/history.csv",
          "/api/points/{point_id}/stats",
          "/api/gateways/{gateway}/devices/{device}/stats",
          "/api/gateways/{gateway}/discover",
          "/api/gateways/{gateway}/devices/{device}/refresh",
          "/api/gateways/{gateway}/devices/{device}/points/{point}/read",
          "/api/gateways/{gateway}/devices/{device}/points/{point}/write",
          "/api/gateways/{gateway}/devices/{device}/points/{point}/relinquish",
          "/api/audit",
          "/api/keys",
          "/api/keys/{name}",
          "/api/health",
          "/metrics",
          "/api/events",
        ];
        expect(paths.sort()).toEqual([...expected].sort());
        for (const [path, methods] of Object.entries(
          doc.paths as Record<string, Record<string, { responses: Record<string, unknown> }>>,
        )) {
          for (const [method, op] of Object.entries(methods)) {
            expect(Object.keys(op.responses), `${method} ${path}`).toContain(
              "200" in op.responses ? "200" : Object.keys(op.responses)[0],
            );
            expect(Object.keys(op.responses).length, `${method} ${path}`).toBeGreaterThan(0);
          }
        }
        expect(
          doc.paths["/api/gateways/{gateway}/devices/{device}/points/{point}/write"].post.requestBody,
        ).toBeDefined();
        // The CSV route answers CSV, but its errors are JSON like everywhere else.
        const csv = doc.paths["/api/history.csv"].get.responses;
        expect(Object.keys(csv["200"].content)).toEqual(["text/csv"]);
        expect(Object.keys(csv["400"].content)).toEqual(["application/json"]);
        // Refusals before the handler are declared: unknown key, rate limit, headers, path length.
        expect(Object.keys(doc.paths["/api/points/{point_id}"].get.responses)).toEqual(
          expect.arrayContaining(["401", "414", "429", "431"]),
        );
        expect((await get("/docs", null)).statusCode).toBeLessThan(400);
      });

      it("has every route documented in docs/api.md with a curl example", async () => {
        const doc = (await get("/docs/json", null)).json();
        const md = readFileSync(new URL("../../../docs/api.md", import.meta.url), "utf8");
        const sections = md.split(/^### /m).slice(1);
        for (const [path, methods] of Object.entries(doc.paths as Record<string, object>)) {
          for (const method of Object.keys(methods)) {
            const heading = `\`${method.toUpperCase()} ${path}\``;
            const section = sections.find((s) => s.startsWith(heading));
            expect(section, heading).toBeDefined();
            expect(section, heading).toMatch(/```sh\n(.|\n)*curl /);
          }
        }
      });

      it("serves the console", async () => {
        const res = await get("/", null);
        expect(res.statusCode).toBe(200);
        expect(res.headers["content-type"]).toMatch(/text\/html/);
        expect(res.body).toContain("/console/app.js");
        const js = await get("/console/app.js", null);
        expect(js.statusCode).toBe(200);
        expect((await get("/console/app.js", null)).headers.etag).toBe(js.headers.etag);
        const again = await app.inject({
          method: "GET",
          url: "/console/app.js",
          headers: { "if-none-match": js.headers.etag as string },
        });
        expect(again.statusCode).toBe(304);
        expect((await get("/console/..%2Fapp.ts", null)).statusCode).toBe(400);
      });
    });
  });
}

suite("portable");
suite("timescale");
