// Prometheus metrics of the ingest, on a registry of its own (several ingests can live in one
// process: `bacmqtt all`, tests), and the small HTTP server that exposes them on /metrics.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

export class IngestMetrics {
  readonly registry = new Registry();
  readonly messages = new Counter({
    name: "bacmqtt_ingest_messages_total",
    help: "MQTT messages received, by kind",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });
  readonly readingsReceived = new Counter({
    name: "bacmqtt_ingest_readings_received_total",
    help: "Readings received (including duplicates and replays)",
    registers: [this.registry],
  });
  readonly rows = new Counter({
    name: "bacmqtt_ingest_rows_total",
    help: "Reading rows committed (new rows only; duplicates are not counted). rate() gives rows/s",
    registers: [this.registry],
  });
  readonly rowsPerSecond = new Gauge({
    name: "bacmqtt_ingest_rows_per_second",
    help: "Reading rows committed per second over the last 10 s",
    registers: [this.registry],
  });
  readonly batchSeconds = new Histogram({
    name: "bacmqtt_ingest_batch_duration_seconds",
    help: "Time to commit one batch (including retries)",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly batchSize = new Histogram({
    name: "bacmqtt_ingest_batch_readings",
    help: "Readings per committed batch",
    buckets: [1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000],
    registers: [this.registry],
  });
  readonly lag = new Gauge({
    name: "bacmqtt_ingest_lag_seconds",
    help: "Age of the newest reading of the last committed batch when it was committed",
    registers: [this.registry],
  });
  readonly pending = new Gauge({
    name: "bacmqtt_ingest_pending_messages",
    help: "Messages received and not yet committed",
    registers: [this.registry],
  });
  readonly deadLetters = new Counter({
    name: "bacmqtt_ingest_dead_letters_total",
    help: "Messages stored in dead_letters (invalid topic, payload or data)",
    registers: [this.registry],
  });
  readonly retries = new Counter({
    name: "bacmqtt_ingest_retries_total",
    help: "Batch commits retried after a database failure",
    registers: [this.registry],
  });
  readonly writePath = new Counter({
    name: "bacmqtt_ingest_readings_written_total",
    help: "Readings sent to the database by path: copy (new rows) or insert (replays, duplicates, PGlite)",
    labelNames: ["path"] as const,
    registers: [this.registry],
  });
  readonly copyFallbacks = new Counter({
    name: "bacmqtt_ingest_copy_fallbacks_total",
    help: "Batches whose COPY met rows already stored (a replay) and were written again with INSERT … ON CONFLICT",
    registers: [this.registry],
  });
  readonly dbUp = new Gauge({
    name: "bacmqtt_ingest_database_up",
    help: "1 when the last database operation succeeded",
    registers: [this.registry],
  });
  readonly mqttConnected = new Gauge({
    name: "bacmqtt_ingest_mqtt_connected",
    help: "1 while connected to the broker",
    registers: [this.registry],
  });

  private window: { at: number; rows: number }[] = [];

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry, prefix: "bacmqtt_ingest_" });
  }

  /** Records a commit of n rows for the rows/s gauge (10 s sliding window). */
  committed(n: number, now = Date.now()): void {
    this.rows.inc(n);
    this.window.push({ at: now, rows: n });
    while (this.window.length && (this.window[0]?.at ?? now) < now - 10_000) this.window.shift();
    const total = this.window.reduce((s, w) => s + w.rows, 0);
    this.rowsPerSecond.set(total / 10);
  }
}

export async function serveMetrics(
  metrics: IngestMetrics,
  host: string,
  port: number,
): Promise<{ port: number; close(): Promise<void> }> {
  const server: Server = createServer((req, res) => {
    if (req.url !== "/metrics" || req.method !== "GET") {
      res.writeHead(404).end();
      return;
    }
    metrics.registry.metrics().then(
      (body) => {
        res.writeHead(200, { "content-type": metrics.registry.contentType }).end(body);
      },
      (err: unknown) => {
        res.writeHead(500).end(String(err));
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  server.on("error", () => undefined);
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
