// The gateway process as an async factory: `startGateway(config)` builds the BACnet engine, the
// MQTT wrapper, the store-and-forward buffer, the bridge, discovery, request handling and metrics,
// starts them in order and returns a handle whose `stop()` undoes it in reverse. `bacmqtt gateway`
// and `bacmqtt all` both use it. Core parts (engine, buffer, MQTT) failing to start is fatal; an
// optional feature failing (metrics, background discovery) is logged and the gateway runs on.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { type CodedError, ConfigError, errorMessage } from "../common/errors.ts";
import { createLogger, type Logger } from "../common/logger.ts";
import { Topics } from "../contract/index.ts";
import type { BacnetEngine, EngineOptions } from "./bacnet/types.ts";
import { CatalogueStore } from "./catalogue-store.ts";
import { type GatewayConfig, type GatewayConfigInput, parseHostPort, resolveConfig } from "./config.ts";
import { Discovery } from "./discovery.ts";
import { createRegistry, type MetricsServer, serveMetrics } from "./metrics.ts";
import { Bridge } from "./mqtt/bridge.ts";
import { DiskBuffer } from "./mqtt/buffer.ts";
import { GatewayMqtt } from "./mqtt/client.ts";
import { Dispatcher } from "./mqtt/dispatcher.ts";
import { duplicateError } from "./mqtt/duplicate.ts";
import { createHandlers } from "./mqtt/requests.ts";
import { WritePolicy } from "./write-policy.ts";

export type { GatewayConfig, GatewayConfigInput } from "./config.ts";
export { loadConfig } from "./config.ts";

export interface Gateway {
  readonly config: GatewayConfig;
  readonly topics: Topics;
  readonly engine: BacnetEngine;
  readonly mqtt: GatewayMqtt;
  readonly bridge: Bridge;
  readonly buffer: DiskBuffer;
  readonly discovery: Discovery;
  readonly dispatcher: Dispatcher;
  /** `http://host:port/metrics`, or null when disabled or failed to start. */
  readonly metricsUrl: string | null;
  /** Random id of this process, carried in `bridge/state` (a new one at every start). */
  readonly instance: string;
  /** Graceful stop: offline state published before the MQTT connection closes. */
  stop(): Promise<void>;
  /**
   * Settles once the gateway has stopped: undefined after `stop()`, the error when it stopped itself
   * (`GW_ERR_DUPLICATE_GATEWAY`: another instance holds the gateway id).
   */
  readonly stopped: Promise<CodedError | undefined>;
}

export interface GatewayDeps {
  /** Injected engine (unit tests of bridge logic only); default: the real one from `gateway/bacnet/`. */
  engine?: BacnetEngine;
  log?: Logger;
  /**
   * Aborted by a shutdown signal during the start: the start stops waiting for the broker and
   * returns at once, so the caller's stop() runs without the wait (Ctrl+C while the broker is away).
   */
  signal?: AbortSignal;
}

export function engineOptions(cfg: GatewayConfig, policy: WritePolicy): EngineOptions {
  const b = cfg.bacnet;
  const bbmd = b.bbmd ? parseHostPort(b.bbmd) : undefined;
  return {
    ...(b.interface !== undefined ? { interface: b.interface } : {}),
    port: b.port,
    ...(b.broadcast !== undefined ? { broadcast: b.broadcast } : {}),
    ...(bbmd ? { bbmd: { address: bbmd.host, port: bbmd.port, ttlSeconds: b.bbmd_ttl_s } } : {}),
    apduTimeoutMs: b.apdu_timeout_ms,
    retries: b.retries,
    perDeviceInFlight: b.per_device_in_flight,
    globalInFlight: b.global_in_flight,
    offlineAfterFailures: b.offline_after_failures,
    livenessS: b.liveness_s,
    pollIntervalS: cfg.polling.interval_s,
    cov: cfg.polling.cov,
    covLifetimeS: cfg.polling.cov_lifetime_s,
    minWritePriority: policy.minPriority,
    defaultWritePriority: policy.defaultPriority,
    writeAllowlist: policy.patterns,
  };
}

function readTls(cfg: GatewayConfig): { ca?: Buffer; cert?: Buffer; key?: Buffer } {
  const problems: string[] = [];
  const out: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  for (const k of ["ca", "cert", "key"] as const) {
    const file = cfg.mqtt[k];
    if (!file) continue;
    try {
      out[k] = readFileSync(file);
    } catch (err) {
      problems.push(`mqtt.${k}: ${errorMessage(err)}`);
    }
  }
  if (problems.length) throw new ConfigError(problems);
  return out;
}

async function createRealEngine(options: EngineOptions): Promise<BacnetEngine> {
  const mod = (await import("./bacnet/index.ts")) as {
    createEngine: (o: EngineOptions) => BacnetEngine | Promise<BacnetEngine>;
  };
  return await mod.createEngine(options);
}

export async function startGateway(
  input: GatewayConfigInput | GatewayConfig,
  deps: GatewayDeps = {},
): Promise<Gateway> {
  const config = resolveConfig(input);
  const log = deps.log ?? createLogger("gateway");
  const tls = readTls(config);
  const topics = new Topics(config.mqtt.base_topic, config.gateway_id);
  const policy = new WritePolicy(config);
  const engine = deps.engine ?? (await createRealEngine(engineOptions(config, policy)));
  const instance = randomBytes(8).toString("hex");
  const startedAt = new Date();

  const url = new URL(config.mqtt.url);
  const username = config.mqtt.username ?? (url.username ? decodeURIComponent(url.username) : undefined);
  const password = config.mqtt.password ?? (url.password ? decodeURIComponent(url.password) : undefined);
  url.username = "";
  url.password = "";
  const mqtt = new GatewayMqtt({
    url: url.toString(),
    topics,
    dataDir: config.data_dir,
    // Unique per process unless configured: two processes with one client id knock each other off
    // the broker in turn (session takeover), which looks like a flapping gateway.
    clientId: config.mqtt.client_id ?? `bacmqtt-gw-${config.gateway_id}-${randomBytes(4).toString("hex")}`,
    keepaliveS: config.mqtt.keepalive_s,
    reconnectPeriodMs: config.mqtt.reconnect_period_ms,
    connectTimeoutMs: config.mqtt.connect_timeout_ms,
    rejectUnauthorized: config.mqtt.reject_unauthorized,
    instance,
    startedAt,
    duplicateCheckMs: config.mqtt.duplicate_check_ms,
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...tls,
    log: log.child({ module: "mqtt" }),
  });

  let bridge: Bridge | undefined;
  const buffer = new DiskBuffer({
    dir: path.join(config.data_dir, "buffer"),
    maxBytes: config.buffer.max_bytes,
    maxAgeS: config.buffer.max_age_s,
    segmentBytes: config.buffer.segment_bytes,
    fsync: config.buffer.fsync,
    fsyncIntervalMs: config.buffer.fsync_interval_ms,
    onDrop: ({ reason, records }) => {
      log.warn({ reason, records }, "buffered readings dropped");
      bridge?.event("buffer_dropped", { reason, records, dropped_total: buffer.stats.dropped });
    },
  });
  const store = new CatalogueStore(config.data_dir, log.child({ module: "catalogue" }));
  bridge = new Bridge({ engine, mqtt, buffer, config, startedAt, log: log.child({ module: "bridge" }) });
  const b = bridge;
  const discovery = new Discovery({
    engine,
    bridge: b,
    store,
    config,
    log: log.child({ module: "discovery" }),
  });
  const handlers = createHandlers({
    engine,
    bridge: b,
    discovery,
    store,
    writePolicy: policy,
    log: log.child({ module: "requests" }),
    problems: () => (mqtt.connected ? [] : ["not connected to the MQTT broker"]),
  });
  const dispatcher = new Dispatcher({
    topics,
    handlers,
    respond: (topic, payload) => mqtt.publish(topic, payload, { qos: 1, retain: false }),
    onRejected: ({ endpoint, errors, transaction }) =>
      b.event("request_rejected", {
        endpoint,
        errors,
        ...(transaction !== undefined ? { transaction } : {}),
      }),
    log: log.child({ module: "dispatcher" }),
  });

  // Another instance with this gateway id: `won` repeats the birth, `refused`/`lost` stops this one.
  let failure: CodedError | undefined;
  let stopSelf: (() => void) | undefined;
  mqtt.on("duplicate", (info) => {
    if (info.outcome === "won") {
      // The loser's birth may still be landing: repeat ours (info, devices, meta) a moment later.
      setTimeout(() => void b.birth(), 1000).unref();
      return;
    }
    failure ??= duplicateError(config.gateway_id, mqtt.identity, info);
    stopSelf?.();
  });

  // Core: a failure here stops the start and undoes what was started.
  const undo: Array<() => Promise<void> | void> = [];
  try {
    buffer.open();
    undo.push(() => buffer.close());
    await engine.start();
    undo.push(() => engine.stop());
    b.start((topic, payload) => void dispatcher.handle(topic, payload));
    undo.push(() => b.stop());
    mqtt.start();
    undo.push(() => mqtt.stop());
    // Nothing is polled before the gateway id is known to be free (or the broker is away: then the
    // check runs when the connection comes up, and a duplicate found then stops the gateway).
    const wait = config.mqtt.connect_timeout_ms + config.mqtt.duplicate_check_ms + 1000;
    const outcome = await Promise.race([mqtt.firstOutcome(wait), whenAborted(deps.signal)]);
    if (outcome === "refused" && failure) throw failure;
  } catch (err) {
    for (const fn of undo.reverse()) await Promise.resolve(fn()).catch(() => undefined);
    throw err;
  }

  // Optional features: logged, not fatal. Skipped when a shutdown signal came during the start.
  try {
    if (!deps.signal?.aborted) await discovery.start();
  } catch (err) {
    log.error({ err: errorMessage(err) }, "discovery failed to start");
  }
  let metrics: MetricsServer | undefined;
  if (config.metrics.enabled) {
    try {
      const registry = createRegistry({
        engine,
        buffer,
        mqtt,
        readingsPublished: () => b.counters.readingsMessages,
      });
      metrics = await serveMetrics(registry, config.metrics.host, config.metrics.port, log);
      log.info({ url: metrics.url }, "metrics listening");
    } catch (err) {
      log.error({ err: errorMessage(err) }, "metrics server failed to start");
    }
  }
  log.info({ gateway_id: config.gateway_id, base: config.mqtt.base_topic }, "gateway started");

  let stopping: Promise<void> | undefined;
  let settleStopped: (err: CodedError | undefined) => void = () => undefined;
  const stopped = new Promise<CodedError | undefined>((resolve) => {
    settleStopped = resolve;
  });
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      await metrics?.close().catch(() => undefined);
      discovery.stop();
      await engine.stop().catch((err: unknown) => log.warn({ err: String(err) }, "engine stop failed"));
      await withDeadline(dispatcher.idle(), 3000);
      await b.stop();
      await mqtt.stop();
      await withDeadline(b.drained(), 3000);
      buffer.close();
      log.info("gateway stopped");
      settleStopped(failure);
    })();
    return stopping;
  };
  stopSelf = () => void stop();
  if (failure) {
    await stop();
    throw failure;
  }

  return {
    config,
    topics,
    engine,
    mqtt,
    bridge: b,
    buffer,
    discovery,
    dispatcher,
    metricsUrl: metrics?.url ?? null,
    instance,
    stop,
    stopped,
  };
}

function whenAborted(signal: AbortSignal | undefined): Promise<"aborted"> {
  if (!signal) return new Promise<never>(() => {});
  if (signal.aborted) return Promise.resolve("aborted");
  return new Promise((resolve) => signal.addEventListener("abort", () => resolve("aborted"), { once: true }));
}

function withDeadline(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.then(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
