// Health, metrics and live updates. `/api/health` (and `/health` for container checks) reports the
// database, the broker and each gateway's state; `/metrics` is Prometheus text; `/api/events` is a
// Server-Sent Events stream of point values, availability, gateway state, discovery progress and
// write events, filtered by gateway/device/type.
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import { errorMessage } from "../../common/errors.ts";
import type { LiveEvent } from "../relay.ts";
import { DeviceInstance, errors, GatewayId, N } from "../schemas.ts";

const Health = Type.Object({
  status: Type.Union([Type.Literal("ok"), Type.Literal("degraded")]),
  database: Type.Object({ ok: Type.Boolean(), latency_ms: N.num(), error: Type.Optional(Type.String()) }),
  broker: Type.Object({ connected: Type.Boolean() }),
  gateways: Type.Array(
    Type.Object({
      gateway_id: Type.String(),
      state: N.str(),
      last_seen: N.time(),
      source: Type.String({ description: "mqtt (live) or database" }),
    }),
  ),
});

const LIVE_TYPES = ["reading", "availability", "gateway", "discovery", "write"] as const;

const EventsQuery = Type.Object({
  gateway: Type.Optional(GatewayId),
  device: Type.Optional(DeviceInstance),
  types: Type.Optional(
    Type.String({
      pattern: `^(${LIVE_TYPES.join("|")})(,(${LIVE_TYPES.join("|")}))*$`,
      description: `comma-separated subset of ${LIVE_TYPES.join(", ")}`,
    }),
  ),
});

const HEARTBEAT_MS = 15_000;

export const liveRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const streams = new Set<import("node:http").ServerResponse>();
  // Open event streams would keep close() waiting forever: end them first.
  app.addHook("preClose", async () => {
    for (const res of streams) res.end();
  });
  async function health() {
    const started = performance.now();
    let database: { ok: boolean; latency_ms: number | null; error?: string };
    let dbGateways: { gateway_id: string; state: string | null; last_seen: Date | null }[] = [];
    try {
      const { rows } = await app.db.query(
        "SELECT gateway_id, state, last_seen FROM gateways ORDER BY gateway_id",
      );
      dbGateways = rows;
      database = { ok: true, latency_ms: Math.round((performance.now() - started) * 10) / 10 };
    } catch (err) {
      app.log.warn({ err: errorMessage(err) }, "health: database check failed");
      database = { ok: false, latency_ms: null, error: "database unreachable" };
    }
    const gateways = new Map<
      string,
      { gateway_id: string; state: string | null; last_seen: unknown; source: string }
    >();
    for (const g of dbGateways) gateways.set(g.gateway_id, { ...g, source: "database" });
    for (const [gateway_id, s] of app.relay.gatewayStates)
      gateways.set(gateway_id, { gateway_id, state: s.state, last_seen: s.timestamp, source: "mqtt" });
    const connected = app.relay.connected;
    return {
      status: database.ok && connected ? ("ok" as const) : ("degraded" as const),
      database,
      broker: { connected },
      gateways: [...gateways.values()].sort((a, b) => a.gateway_id.localeCompare(b.gateway_id)),
    };
  }

  for (const url of ["/api/health", "/health"]) {
    app.get(
      url,
      {
        config: { access: "public", rateLimit: false },
        schema: {
          tags: ["health"],
          summary: "Database, broker and gateway states; 503 when the database or broker is down",
          hide: url === "/health",
          response: { 200: Health, 503: Health },
        },
      },
      async (_request, reply) => {
        const h = await health();
        return reply.code(h.status === "ok" ? 200 : 503).send(h);
      },
    );
  }

  app.get(
    "/metrics",
    {
      config: { access: "public", rateLimit: false },
      schema: {
        tags: ["health"],
        summary: "Prometheus metrics",
        produces: ["text/plain"],
        response: { 200: Type.String() },
      },
    },
    async (_request, reply) => {
      void reply.type(app.metrics.registry.contentType);
      return app.metrics.registry.metrics();
    },
  );

  app.get(
    "/api/events",
    {
      config: { access: "read", rateLimit: false },
      schema: {
        tags: ["live"],
        summary: "Server-Sent Events: reading, availability, gateway, discovery, write",
        description:
          "Each event's `data` is JSON `{gateway, device?, data}`; `data` is the MQTT payload it came from (docs/mqtt-api.md). A comment line is sent every 15 s.",
        querystring: EventsQuery,
        produces: ["text/event-stream"],
        response: { 200: Type.String({ description: "text/event-stream" }), ...errors(400, 401, 403) },
      },
    },
    async (request, reply) => {
      const { gateway, device } = request.query;
      const types = new Set(request.query.types ? request.query.types.split(",") : LIVE_TYPES);
      // Headers set by hooks so far (CORS, security headers) still apply to the hijacked stream.
      const hooked = reply.getHeaders() as Record<string, string | number | string[]>;
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        ...hooked,
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache, no-transform",
        connection: "keep-alive",
        "x-content-type-options": "nosniff",
        "x-accel-buffering": "no",
      });
      let id = 0;
      const send = (event: string, data: unknown) => {
        id += 1;
        res.write(`id: ${id}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
      };
      send("hello", {
        broker_connected: app.relay.connected,
        gateways: Object.fromEntries(app.relay.gatewayStates),
      });
      const listener = (e: LiveEvent) => {
        if (!types.has(e.type)) return;
        if (gateway !== undefined && e.gateway !== gateway) return;
        if (device !== undefined && "device" in e && e.device !== undefined && e.device !== device) return;
        if (device !== undefined && e.type === "reading" && e.device !== device) return;
        send(e.type, {
          gateway: e.gateway,
          ...("device" in e && e.device !== undefined ? { device: e.device } : {}),
          data: e.data,
        });
      };
      app.relay.events.on("live", listener);
      app.metrics.sseClients.inc();
      const heartbeat = setInterval(() => res.write(": heartbeat\n\n"), HEARTBEAT_MS);
      const close = () => {
        clearInterval(heartbeat);
        app.relay.events.off("live", listener);
        app.metrics.sseClients.dec();
      };
      streams.add(res);
      res.once("close", () => {
        streams.delete(res);
        close();
      });
    },
  );
};
