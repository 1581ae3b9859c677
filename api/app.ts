// The api as a fastify app: shared plugins (database, MQTT relay, auth, metrics, security headers,
// CORS, rate limit, OpenAPI) and the encapsulated routes. `buildApp` never listens: server.ts does,
// tests use `inject` on the very same app.
import cors from "@fastify/cors";
import helmet from "@fastify/helmet";
import rateLimit from "@fastify/rate-limit";
import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from "fastify";
import type pg from "pg";
import { createLogger, type Logger } from "../common/logger.ts";
import { version } from "../common/version.ts";
import { DEFAULT_BASE_TOPIC } from "../contract/index.ts";
import { clientErrorHandler, frameworkErrors, installErrorHandlers } from "./errors.ts";
import { hashKey } from "./keys.ts";
import { authPlugin, presentedKey } from "./plugins/auth.ts";
import { dbPlugin } from "./plugins/db.ts";
import { metricsPlugin } from "./plugins/metrics.ts";
import { relayPlugin } from "./plugins/relay.ts";
import type { CommandRelay } from "./relay.ts";
import { adminRoutes } from "./routes/admin.ts";
import { type CommandTimeouts, commandRoutes } from "./routes/commands.ts";
import { consoleRoutes } from "./routes/console.ts";
import { historyRoutes } from "./routes/history.ts";
import { inventoryRoutes } from "./routes/inventory.ts";
import { liveRoutes } from "./routes/live.ts";
import { errors } from "./schemas.ts";
import { validatorCompiler } from "./validation.ts";

export interface ApiOptions {
  /** An existing pool (left open on close); otherwise one is created from `databaseUrl`/DATABASE_URL/PG*. */
  pool?: pg.Pool;
  databaseUrl?: string;
  /** An existing relay (left running on close); otherwise one is created from `mqttUrl`. */
  relay?: CommandRelay;
  mqttUrl?: string;
  mqttUsername?: string;
  mqttPassword?: string;
  baseTopic?: string;
  /** "key" (default): reads need a viewer key too; "open": anyone may read. Commands always need operator. */
  readAccess?: "open" | "key";
  /** Origins allowed by CORS; empty (default) = no CORS headers, same-origin only. */
  corsOrigins?: string[];
  /** Requests per window per key (or per address without one); false disables. */
  rateLimit?: { max: number; timeWindowMs: number } | false;
  timeouts?: Partial<CommandTimeouts>;
  /** Largest accepted request body in bytes (default 64 KiB). */
  bodyLimit?: number;
  /** Serve the OpenAPI document and Swagger UI at /docs (default true). */
  docs?: boolean;
  /** Node process metrics on /metrics (default true). */
  defaultMetrics?: boolean;
  log?: Logger;
}

export const DEFAULT_TIMEOUTS: CommandTimeouts = {
  commandMs: 10_000,
  pointsMs: 60_000,
  discoveryDefaultS: 10,
};

export async function buildApp(options: ApiOptions = {}): Promise<FastifyInstance> {
  const log = options.log ?? createLogger("api");
  const base = Fastify({
    loggerInstance: log as unknown as FastifyBaseLogger,
    bodyLimit: options.bodyLimit ?? 64 * 1024,
    forceCloseConnections: true,
    return503OnClosing: true,
    trustProxy: false,
    routerOptions: { maxParamLength: 200 },
    clientErrorHandler,
    frameworkErrors,
  });
  base.setValidatorCompiler(validatorCompiler);
  installErrorHandlers(base);
  const app = base.withTypeProvider<TypeBoxTypeProvider>();

  await app.register(metricsPlugin, { defaultMetrics: options.defaultMetrics ?? true });
  await app.register(dbPlugin, {
    log,
    ...(options.pool ? { pool: options.pool } : {}),
    ...(options.databaseUrl ? { databaseUrl: options.databaseUrl } : {}),
  });
  await app.register(relayPlugin, {
    log: log.child({ module: "api-relay" }),
    mqttUrl: options.mqttUrl ?? "mqtt://127.0.0.1:1883",
    baseTopic: options.baseTopic ?? DEFAULT_BASE_TOPIC,
    ...(options.relay ? { relay: options.relay } : {}),
    ...(options.mqttUsername ? { mqttUsername: options.mqttUsername } : {}),
    ...(options.mqttPassword ? { mqttPassword: options.mqttPassword } : {}),
  });

  await app.register(helmet, {
    contentSecurityPolicy: {
      directives: {
        defaultSrc: ["'self'"],
        scriptSrc: ["'self'"],
        styleSrc: ["'self'", "'unsafe-inline'"],
        imgSrc: ["'self'", "data:"],
        connectSrc: ["'self'"],
        objectSrc: ["'none'"],
        frameAncestors: ["'none'"],
        upgradeInsecureRequests: null,
      },
    },
    // Served over plain HTTP on a LAN as often as behind TLS; HSTS is the proxy's business.
    strictTransportSecurity: false,
  });
  if (options.corsOrigins?.length) {
    await app.register(cors, {
      origin: options.corsOrigins,
      methods: ["GET", "POST", "DELETE"],
      allowedHeaders: ["authorization", "x-api-key", "content-type"],
    });
  }
  if (options.rateLimit !== false) {
    const rl = options.rateLimit ?? { max: 600, timeWindowMs: 60_000 };
    await app.register(rateLimit, {
      global: true,
      max: rl.max,
      timeWindow: rl.timeWindowMs,
      // Per key once the key is known good (hashed: the key itself never sits in the limiter's
      // table), else per address, so that inventing keys does not buy fresh budgets.
      keyGenerator: (request) => {
        const key = presentedKey(request);
        return key && app.apiKeyKnown(key) ? `k:${hashKey(key).slice(0, 24)}` : `a:${request.ip}`;
      },
      errorResponseBuilder: (_request, context) => ({
        statusCode: 429,
        error: {
          code: "API_ERR_RATE_LIMITED",
          message: `rate limit exceeded: ${context.max} requests per ${context.after}; retry later`,
        },
      }),
    });
  }
  await app.register(authPlugin, { readAccess: options.readAccess ?? "key" });

  if (options.docs !== false) {
    await app.register(swagger, {
      openapi: {
        info: {
          title: "bacmqtt API",
          version,
          description:
            "Inventory, history, stats and commands of the bacmqtt BACnet/IP → MQTT gateways. See docs/api.md.",
        },
        components: {
          securitySchemes: {
            bearer: {
              type: "http",
              scheme: "bearer",
              description: "an API key: bacmqtt api-key create NAME --role R",
            },
            apiKey: { type: "apiKey", in: "header", name: "X-API-Key" },
          },
        },
        security: [{ bearer: [] }, { apiKey: [] }],
        tags: ["inventory", "history", "stats", "commands", "audit", "live", "health", "keys"].map(
          (name) => ({
            name,
          }),
        ),
      },
    });
    // The app-wide CSP (helmet) covers Swagger UI: its scripts are files, its styles partly inline.
    await app.register(swaggerUi, { routePrefix: "/docs" });
  }

  // Refusals that come before a route's handler (size and media-type limits, the router, Node's
  // parser, the rate limiter) are part of every route's contract: declared in the spec, so that a
  // client generated from it knows them and the HTTP fuzz test can insist on "no undeclared status".
  const rateLimited = options.rateLimit !== false;
  app.addHook("onRoute", (route) => {
    const schema = route.schema as
      | { response?: Record<string, unknown>; body?: unknown; params?: unknown; querystring?: unknown }
      | undefined;
    if (!schema?.response || route.url.startsWith("/docs")) return;
    // 401: any presented key that is unknown is refused, on every route (public ones too).
    const extra = [401, 431, ...(rateLimited ? [429] : []), ...(route.url.includes(":") ? [414] : [])];
    const methods = ([] as string[]).concat(route.method);
    if (schema.body !== undefined || methods.some((m) => m !== "GET" && m !== "HEAD")) extra.push(413, 415);
    if (schema.body !== undefined || schema.params !== undefined || schema.querystring !== undefined)
      extra.push(400);
    for (const status of extra) schema.response[status] ??= errors(status)[status];
  });

  await app.register(inventoryRoutes);
  await app.register(historyRoutes);
  await app.register(commandRoutes, { timeouts: { ...DEFAULT_TIMEOUTS, ...options.timeouts } });
  await app.register(adminRoutes);
  await app.register(liveRoutes);
  await app.register(consoleRoutes);
  return base;
}
