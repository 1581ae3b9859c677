// Prometheus `/metrics` for the gateway: devices online/offline, points, reads, errors by code, COV
// subscriptions, buffer depth, poll lag, MQTT. Values are collected from the engine and the bridge at
// scrape time; the registry is private to the gateway so that `bacmqtt all` can host several.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, collectDefaultMetrics, Gauge, Registry } from "prom-client";
import type { Logger } from "../common/logger.ts";
import type { BacnetEngine } from "./bacnet/types.ts";
import type { DiskBuffer } from "./mqtt/buffer.ts";
import type { GatewayMqtt } from "./mqtt/client.ts";

export interface MetricsSources {
  engine: BacnetEngine;
  buffer: DiskBuffer;
  mqtt: GatewayMqtt;
  readingsPublished: () => number;
}

/** Counter fed from a monotonic total: increments by the difference since the last scrape. */
function totalCounter(registry: Registry, name: string, help: string, read: () => number): Counter<string> {
  let last = 0;
  return new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      const now = read();
      if (now > last) this.inc(now - last);
      last = Math.max(last, now);
    },
  });
}

export function createRegistry(src: MetricsSources): Registry {
  const registry = new Registry();
  // Process memory, CPU, event-loop lag and heap, prefixed so they do not collide in `bacmqtt all`.
  collectDefaultMetrics({ register: registry, prefix: "bacmqtt_gateway_" });
  const stats = () => src.engine.stats();
  new Gauge({
    name: "bacmqtt_gateway_devices",
    help: "Devices known to the gateway by availability",
    labelNames: ["state"],
    registers: [registry],
    collect() {
      const s = stats();
      this.set({ state: "online" }, s.devices.online);
      this.set({ state: "offline" }, s.devices.offline);
      // Managed but not answered yet.
      this.set({ state: "unknown" }, s.devices.total - s.devices.online - s.devices.offline);
    },
  });
  new Gauge({
    name: "bacmqtt_gateway_points",
    help: "Points scheduled for polling or COV",
    registers: [registry],
    collect() {
      this.set(stats().points);
    },
  });
  totalCounter(
    registry,
    "bacmqtt_gateway_reads_total",
    "Point values read from BACnet",
    () => stats().readsTotal,
  );
  new Gauge({
    name: "bacmqtt_gateway_reads_per_second",
    help: "Point values read per second (engine's moving rate)",
    registers: [registry],
    collect() {
      this.set(stats().readsPerS);
    },
  });
  const lastByCode = new Map<string, number>();
  new Counter({
    name: "bacmqtt_gateway_errors_total",
    help: "BACnet errors by code",
    labelNames: ["code"],
    registers: [registry],
    collect() {
      for (const [code, n] of Object.entries(stats().errorsByCode)) {
        const last = lastByCode.get(code) ?? 0;
        if (n > last) this.inc({ code }, n - last);
        lastByCode.set(code, Math.max(last, n));
      }
    },
  });
  // Retries are the first sign of a lossy or slow BACnet network, long before devices go offline.
  totalCounter(
    registry,
    "bacmqtt_gateway_bacnet_retries_total",
    "Confirmed requests re-sent after an APDU timeout",
    () => src.engine.transportStats?.()?.retries ?? 0,
  );
  totalCounter(
    registry,
    "bacmqtt_gateway_bacnet_timeouts_total",
    "Confirmed requests that got no answer after every retry",
    () => src.engine.transportStats?.()?.timeouts ?? 0,
  );
  totalCounter(
    registry,
    "bacmqtt_gateway_poll_overruns_total",
    "Poll cycles longer than their interval",
    () => stats().overrunsTotal,
  );
  new Gauge({
    name: "bacmqtt_gateway_poll_lag_seconds",
    help: "How late the poll scheduler runs behind its plan",
    registers: [registry],
    collect() {
      this.set(stats().lagMs / 1000);
    },
  });
  new Gauge({
    name: "bacmqtt_gateway_cov_subscriptions",
    help: "Active COV subscriptions",
    registers: [registry],
    collect() {
      this.set(stats().covSubscriptions);
    },
  });
  new Gauge({
    name: "bacmqtt_gateway_cov_fallbacks",
    help: "Points polled because their COV subscription was refused or stayed silent",
    registers: [registry],
    collect() {
      this.set(stats().covFallbacks);
    },
  });
  totalCounter(
    registry,
    "bacmqtt_gateway_cov_notifications_total",
    "COV notifications received",
    () => stats().covNotificationsTotal,
  );
  new Gauge({
    name: "bacmqtt_gateway_buffer_depth",
    help: "Readings messages waiting in the store-and-forward buffer",
    registers: [registry],
    collect() {
      this.set(src.buffer.depth);
    },
  });
  new Gauge({
    name: "bacmqtt_gateway_buffer_bytes",
    help: "Bytes waiting in the store-and-forward buffer",
    registers: [registry],
    collect() {
      this.set(src.buffer.bytes);
    },
  });
  totalCounter(
    registry,
    "bacmqtt_gateway_buffer_dropped_total",
    "Buffered readings messages dropped (size or age limit)",
    () => src.buffer.stats.dropped,
  );
  new Gauge({
    name: "bacmqtt_gateway_mqtt_connected",
    help: "1 when connected to the broker",
    registers: [registry],
    collect() {
      this.set(src.mqtt.connected ? 1 : 0);
    },
  });
  totalCounter(
    registry,
    "bacmqtt_gateway_mqtt_published_total",
    "MQTT messages acknowledged",
    () => src.mqtt.stats.published,
  );
  totalCounter(
    registry,
    "bacmqtt_gateway_mqtt_failed_total",
    "MQTT publishes that failed",
    () => src.mqtt.stats.failed,
  );
  totalCounter(
    registry,
    "bacmqtt_gateway_readings_messages_total",
    "{device}/readings messages produced",
    src.readingsPublished,
  );
  return registry;
}

export interface MetricsServer {
  url: string;
  close(): Promise<void>;
}

export async function serveMetrics(
  registry: Registry,
  host: string,
  port: number,
  log: Logger,
): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    if (req.method === "GET" && req.url?.split("?")[0] === "/metrics") {
      registry.metrics().then(
        (text) => {
          res.writeHead(200, { "content-type": registry.contentType });
          res.end(text);
        },
        (err: unknown) => {
          log.warn({ err: String(err) }, "metrics collection failed");
          res.writeHead(500).end();
        },
      );
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("not found; try /metrics\n");
  });
  server.on("error", (err) => log.warn({ err: err.message }, "metrics server error"));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const shownHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${shownHost}:${addr.port}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
