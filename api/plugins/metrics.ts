// Prometheus metrics of this app on its own registry (several apps in one process, as in tests or
// `bacmqtt all`, must not collide in prom-client's global one).
import fp from "fastify-plugin";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

export interface ApiMetrics {
  registry: Registry;
  requests: Histogram<"method" | "route" | "status">;
  commands: Counter<"endpoint" | "outcome">;
  sseClients: Gauge;
}

declare module "fastify" {
  interface FastifyInstance {
    metrics: ApiMetrics;
  }
}

export const metricsPlugin = fp<{ defaultMetrics: boolean }>(
  async (app, opts) => {
    const registry = new Registry();
    if (opts.defaultMetrics) collectDefaultMetrics({ register: registry, prefix: "bacmqtt_api_" });
    const metrics: ApiMetrics = {
      registry,
      requests: new Histogram({
        name: "bacmqtt_api_http_request_duration_seconds",
        help: "HTTP request duration by route and status",
        labelNames: ["method", "route", "status"],
        buckets: [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
        registers: [registry],
      }),
      commands: new Counter({
        name: "bacmqtt_api_commands_total",
        help: "Commands relayed to gateways by endpoint and outcome (ok, error, timeout, unavailable)",
        labelNames: ["endpoint", "outcome"],
        registers: [registry],
      }),
      sseClients: new Gauge({
        name: "bacmqtt_api_sse_clients",
        help: "Connected Server-Sent Events clients",
        registers: [registry],
      }),
    };
    app.decorate("metrics", metrics);
    app.addHook("onResponse", async (request, reply) => {
      metrics.requests.observe(
        {
          method: request.method,
          route: request.routeOptions.url ?? "unmatched",
          status: String(reply.statusCode),
        },
        reply.elapsedTime / 1000,
      );
    });
  },
  { name: "bacmqtt-metrics" },
);
