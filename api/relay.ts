// The api's one MQTT client: relays commands to gateways as `bridge/request/<endpoint>` with a fresh
// transaction id and waits for the matching `bridge/response/<endpoint>`; also turns what gateways
// publish (readings, availability, bridge state, discovery events) into live events for SSE.
// Topics come from the contract only; payloads from gateways are validated before use.
import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import mqtt, { type MqttClient } from "mqtt";
import { errorMessage } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import {
  BridgeEvent,
  BridgeState,
  DeviceAvailability,
  DeviceReadings,
  type Endpoint,
  type ErrorBodyPayload,
  Filters,
  parsePayload,
  parseTopic,
  Topics,
} from "../contract/index.ts";

export type RelayOutcome =
  | { kind: "ok"; data: unknown; transaction: string }
  | { kind: "error"; error: ErrorBodyPayload; transaction: string }
  | { kind: "timeout"; transaction: string }
  | { kind: "unavailable"; transaction: string; reason: string };

export type LiveEvent =
  | { type: "reading"; gateway: string; device: number; data: unknown }
  | { type: "availability"; gateway: string; device: number; data: unknown }
  | { type: "gateway"; gateway: string; data: unknown }
  | { type: "discovery"; gateway: string; device?: number; data: unknown }
  | { type: "write"; gateway: string; device?: number; data: unknown };

export interface RelayOptions {
  url: string;
  baseTopic: string;
  username?: string;
  password?: string;
  log: Logger;
}

interface Pending {
  gateway: string;
  endpoint: Endpoint;
  resolve: (o: RelayOutcome) => void;
  timer: NodeJS.Timeout;
}

const DISCOVERY_EVENTS = new Set(["scan_started", "scan_progress", "scan_finished", "device_discovered"]);

export class CommandRelay {
  readonly events = new EventEmitter();
  readonly baseTopic: string;
  /** Last bridge/state seen per gateway (retained, so known right after connecting). */
  readonly gatewayStates = new Map<string, { state: string; bd_seq: number; timestamp: string }>();
  private client?: MqttClient;
  private readonly pending = new Map<string, Pending>();
  private readonly o: RelayOptions;
  private stopped = false;

  constructor(options: RelayOptions) {
    this.o = options;
    this.baseTopic = options.baseTopic;
    // Live listeners come and go with SSE clients; one per client is expected, so no leak warning.
    this.events.setMaxListeners(0);
    this.events.on("error", (err) =>
      options.log.warn({ err: errorMessage(err) }, "live event listener failed"),
    );
  }

  get connected(): boolean {
    return this.client?.connected ?? false;
  }

  /** Connects and subscribes; resolves once connected or after `waitMs` (the client keeps retrying). */
  async start(waitMs = 5000): Promise<void> {
    const { log, baseTopic } = this.o;
    const client = mqtt.connect(this.o.url, {
      clientId: `bacmqtt-api-${randomUUID().slice(0, 8)}`,
      clean: true,
      reconnectPeriod: 1000,
      connectTimeout: 5000,
      protocolVersion: 4,
      ...(this.o.username ? { username: this.o.username } : {}),
      ...(this.o.password ? { password: this.o.password } : {}),
    });
    this.client = client;
    const filters = [
      Filters.responses(baseTopic),
      Filters.bridge(baseTopic, "state"),
      Filters.bridge(baseTopic, "event"),
      Filters.device(baseTopic, "availability"),
      Filters.device(baseTopic, "readings"),
    ];
    client.on("connect", () => {
      log.info({ url: redactUrl(this.o.url) }, "connected to MQTT broker");
      client.subscribe(filters, { qos: 1 }, (err) => {
        if (err) log.error({ err: err.message }, "subscribe failed");
      });
    });
    client.on("error", (err) => log.warn({ err: err.message }, "MQTT error"));
    client.on("offline", () => log.warn("MQTT broker unreachable; retrying"));
    client.on("message", (topic, payload) => this.onMessage(topic, payload));
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, waitMs);
      client.once("connect", () => {
        clearTimeout(timer);
        // The subscription must be in place before the first command is published, or a fast
        // gateway's answer could arrive before we listen.
        client.subscribe(filters, { qos: 1 }, () => resolve());
      });
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const [transaction, p] of this.pending) {
      clearTimeout(p.timer);
      p.resolve({ kind: "unavailable", transaction, reason: "api is shutting down" });
    }
    this.pending.clear();
    this.events.removeAllListeners();
    const client = this.client;
    if (client) await client.endAsync(true).catch(() => undefined);
  }

  /**
   * Publishes a request to one gateway and waits for its answer. Never throws: the outcome says
   * whether the gateway answered ok, answered an error, did not answer, or could not be reached.
   */
  async request(
    gateway: string,
    endpoint: Endpoint,
    body: Record<string, unknown>,
    timeoutMs: number,
    transaction: string = newTransaction(),
  ): Promise<RelayOutcome> {
    const client = this.client;
    if (!client?.connected || this.stopped)
      return { kind: "unavailable", transaction, reason: "the MQTT broker is not connected" };
    const topic = new Topics(this.baseTopic, gateway).request(endpoint);
    const outcome = new Promise<RelayOutcome>((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(transaction);
        resolve({ kind: "timeout", transaction });
      }, timeoutMs);
      this.pending.set(transaction, { gateway, endpoint, resolve, timer });
    });
    try {
      await client.publishAsync(topic, JSON.stringify({ ...body, transaction }), { qos: 1, retain: false });
    } catch (err) {
      const p = this.pending.get(transaction);
      if (p) {
        clearTimeout(p.timer);
        this.pending.delete(transaction);
      }
      return { kind: "unavailable", transaction, reason: `publish failed: ${errorMessage(err)}` };
    }
    return outcome;
  }

  private onMessage(topic: string, payload: Buffer): void {
    const parsed = parseTopic(topic, this.baseTopic);
    if ("error" in parsed) return;
    const gateway = parsed.gateway;
    if (parsed.kind === "response") {
      this.onResponse(gateway, parsed.endpoint, payload);
      return;
    }
    if (payload.length === 0) return; // a cleared retained topic
    if (parsed.kind === "bridge" && parsed.name === "state") {
      const v = parsePayload(BridgeState, payload);
      if (!v.ok) return;
      this.gatewayStates.set(gateway, v.value);
      this.events.emit("live", { type: "gateway", gateway, data: v.value } satisfies LiveEvent);
    } else if (parsed.kind === "bridge" && parsed.name === "event") {
      const v = parsePayload(BridgeEvent, payload);
      if (!v.ok) return;
      const device = typeof v.value.data.device === "number" ? v.value.data.device : undefined;
      if (DISCOVERY_EVENTS.has(v.value.type))
        this.events.emit("live", { type: "discovery", gateway, device, data: v.value } satisfies LiveEvent);
      else if (v.value.type === "write")
        this.events.emit("live", { type: "write", gateway, device, data: v.value.data } satisfies LiveEvent);
    } else if (parsed.kind === "device" && parsed.name === "availability") {
      const v = parsePayload(DeviceAvailability, payload);
      if (!v.ok) return;
      this.events.emit("live", {
        type: "availability",
        gateway,
        device: parsed.device,
        data: v.value,
      } satisfies LiveEvent);
    } else if (parsed.kind === "device" && parsed.name === "readings") {
      const v = parsePayload(DeviceReadings, payload);
      if (!v.ok) return;
      this.events.emit("live", {
        type: "reading",
        gateway,
        device: parsed.device,
        data: v.value,
      } satisfies LiveEvent);
    }
  }

  private onResponse(gateway: string, endpoint: Endpoint, payload: Buffer): void {
    let json: { status?: unknown; data?: unknown; error?: unknown; transaction?: unknown };
    try {
      json = JSON.parse(payload.toString("utf8"));
    } catch {
      return;
    }
    const transaction = json?.transaction;
    if (typeof transaction !== "string") return;
    const p = this.pending.get(transaction);
    // Another api instance's transaction, or a reply to a request that already timed out.
    if (!p || p.gateway !== gateway || p.endpoint !== endpoint) return;
    clearTimeout(p.timer);
    this.pending.delete(transaction);
    if (json.status === "ok") {
      p.resolve({ kind: "ok", data: json.data, transaction });
      return;
    }
    const e = json.error as Partial<ErrorBodyPayload> | undefined;
    p.resolve({
      kind: "error",
      transaction,
      error: {
        code: typeof e?.code === "string" ? e.code : "GW_ERR_UNKNOWN",
        message: typeof e?.message === "string" ? e.message : "the gateway answered with an error",
        ...(e?.details === undefined ? {} : { details: e.details }),
      },
    });
  }
}

export function newTransaction(): string {
  return `api-${randomUUID()}`;
}

export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = "";
    u.password = "";
    return u.toString();
  } catch {
    return "(unparsable URL)";
  }
}
