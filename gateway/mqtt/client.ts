// The gateway's one MQTT connection. Owns the base topic, the birth/death sequence number (`bd_seq`,
// kept on disk), the Last Will (retained offline `bridge/state`), retained-topic bookkeeping and
// publish safety: callers pass topics relative to `{base}/{gw}/` and a publish never throws.
// It knows nothing of BACnet or of what the topics mean beyond bridge/state.
import { EventEmitter } from "node:events";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import type { Logger } from "../../common/logger.ts";
import { type BridgeStatePayload, TOPIC_QOS, Topics } from "../../contract/index.ts";

export interface GatewayMqttOptions {
  url: string;
  topics: Topics;
  /** Folder for the `bd_seq` file. */
  dataDir: string;
  username?: string;
  password?: string;
  clientId: string;
  keepaliveS?: number;
  reconnectPeriodMs?: number;
  connectTimeoutMs?: number;
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  rejectUnauthorized?: boolean;
  log: Logger;
}

export interface PublishOptions {
  retain?: boolean;
  qos?: 0 | 1;
}

export interface GatewayMqttEvents {
  /** Connected and `bridge/state` online published; the birth sequence may start. */
  online: [bdSeq: number];
  offline: [];
  message: [relativeTopic: string, payload: Buffer];
}

const BD_SEQ_FILE = "bd_seq";

export class GatewayMqtt extends EventEmitter<GatewayMqttEvents> {
  readonly topics: Topics;
  private readonly options: GatewayMqttOptions;
  private readonly log: Logger;
  private client: MqttClient | undefined;
  private seq = 0;
  private seqUsed = false;
  private stopping = false;
  private lastError: string | undefined;
  private readonly retained = new Set<string>();
  readonly stats = { published: 0, failed: 0, skipped: 0 };

  constructor(options: GatewayMqttOptions) {
    super();
    this.options = options;
    this.topics = options.topics;
    this.log = options.log;
  }

  get connected(): boolean {
    return this.client?.connected === true && !this.stopping;
  }

  get bdSeq(): number {
    return this.seq;
  }

  /** Starts connecting; resolves at once (the broker may be down: readings then go to the buffer). */
  start(): void {
    mkdirSync(this.options.dataDir, { recursive: true });
    this.seq = this.readSeq() + 1;
    this.writeSeq(this.seq);
    const o = this.options;
    const opts: IClientOptions = {
      clientId: o.clientId,
      clean: true,
      keepalive: o.keepaliveS ?? 30,
      reconnectPeriod: o.reconnectPeriodMs ?? 2000,
      connectTimeout: o.connectTimeoutMs ?? 10_000,
      protocolVersion: 4,
      // Subscriptions are made after the birth sequence, on every connect, by the bridge.
      resubscribe: false,
      queueQoSZero: false,
      will: this.will(),
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      ...(o.ca ? { ca: o.ca } : {}),
      ...(o.cert ? { cert: o.cert } : {}),
      ...(o.key ? { key: o.key } : {}),
      ...(o.rejectUnauthorized !== undefined ? { rejectUnauthorized: o.rejectUnauthorized } : {}),
    };
    const client = mqtt.connect(o.url, opts);
    this.client = client;
    client.on("connect", () => this.onConnect());
    client.on("close", () => this.onClose());
    client.on("error", (err) => {
      // A broker that stays away fails every reconnect the same way: say it once, then at debug.
      if (err.message === this.lastError) this.log.debug({ err: err.message }, "mqtt error (again)");
      else this.log.warn({ err: err.message }, "mqtt error");
      this.lastError = err.message;
    });
    client.on("message", (topic, payload) => {
      const prefix = `${this.topics.root}/`;
      if (topic.startsWith(prefix)) this.emit("message", topic.slice(prefix.length), payload);
    });
  }

  private will(): NonNullable<IClientOptions["will"]> {
    return {
      topic: this.topics.bridge("state"),
      payload: Buffer.from(JSON.stringify(this.statePayload("offline"))),
      qos: 1,
      retain: true,
    };
  }

  private statePayload(state: "online" | "offline"): BridgeStatePayload {
    return { state, bd_seq: this.seq, timestamp: new Date().toISOString() };
  }

  private onConnect(): void {
    if (this.stopping) return;
    this.seqUsed = true;
    this.lastError = undefined;
    this.log.info({ bd_seq: this.seq }, "mqtt connected");
    void this.publish(Topics.bridgeRel("state"), this.statePayload("online"), TOPIC_QOS.state).then(() => {
      if (this.connected) this.emit("online", this.seq);
    });
  }

  private onClose(): void {
    if (this.stopping || !this.seqUsed) return;
    // The broker has (or will have) published this connection's will; the next one gets a new number.
    this.seqUsed = false;
    this.seq += 1;
    this.writeSeq(this.seq);
    if (this.client) this.client.options.will = this.will();
    this.failInFlight();
    this.log.warn({ next_bd_seq: this.seq }, "mqtt connection lost");
    this.emit("offline");
  }

  /**
   * Publishes still waiting for their PUBACK would be re-sent from this process's memory after the
   * reconnect, and lost with it if the process dies first. Failing them now hands them back to their
   * callers: readings then go to the disk buffer (replayed in order), state is re-sent at the birth.
   */
  private failInFlight(): void {
    const client = this.client as unknown as { outgoing?: Record<string, unknown> } | undefined;
    if (!client?.outgoing) return;
    const ids = Object.keys(client.outgoing)
      .map(Number)
      .sort((a, b) => a - b);
    for (const id of ids) this.client?.removeOutgoingMessage(id);
  }

  private readSeq(): number {
    try {
      const n = Number(readFileSync(path.join(this.options.dataDir, BD_SEQ_FILE), "utf8").trim());
      return Number.isInteger(n) && n >= 0 ? n : 0;
    } catch {
      return 0;
    }
  }

  private writeSeq(n: number): void {
    const file = path.join(this.options.dataDir, BD_SEQ_FILE);
    try {
      writeFileSync(`${file}.tmp`, `${n}\n`);
      renameSync(`${file}.tmp`, file);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, "cannot persist bd_seq");
    }
  }

  /**
   * Publishes JSON (or a raw string/Buffer) to a topic relative to the gateway root. Never throws:
   * resolves true once the broker acknowledged (QoS 1) or the packet was written (QoS 0), false when
   * not connected (nothing is queued: state is re-sent by the next birth) or on failure.
   */
  async publish(relative: string, payload: unknown, options: PublishOptions = {}): Promise<boolean> {
    const client = this.client;
    if (!client || !this.connected) {
      this.stats.skipped += 1;
      return false;
    }
    const retain = options.retain ?? false;
    let body: string | Buffer;
    try {
      body = typeof payload === "string" || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload);
    } catch (err) {
      this.stats.failed += 1;
      this.log.error({ topic: relative, err: (err as Error).message }, "payload not serialisable");
      return false;
    }
    try {
      await client.publishAsync(this.topics.full(relative), body, { qos: options.qos ?? 1, retain });
      this.stats.published += 1;
      if (retain) {
        if (body.length === 0) this.retained.delete(relative);
        else this.retained.add(relative);
      }
      return true;
    } catch (err) {
      this.stats.failed += 1;
      this.log.warn({ topic: relative, err: (err as Error).message }, "publish failed");
      return false;
    }
  }

  /** Publishes with QoS 1 and rejects unless the broker acknowledged; used for the buffer replay. */
  async publishAcked(relative: string, body: string): Promise<void> {
    const client = this.client;
    if (!client || !this.connected) throw new Error("not connected");
    await client.publishAsync(this.topics.full(relative), body, { qos: 1, retain: false });
    this.stats.published += 1;
  }

  /** Clears a retained topic on the broker (empty retained payload). */
  clearRetained(relative: string): Promise<boolean> {
    return this.publish(relative, "", { retain: true, qos: 1 });
  }

  /** Retained topics this process has published and not cleared. */
  retainedTopics(): ReadonlySet<string> {
    return this.retained;
  }

  async subscribe(relativeFilter: string): Promise<boolean> {
    const client = this.client;
    if (!client || !this.connected) return false;
    try {
      await client.subscribeAsync(this.topics.full(relativeFilter), { qos: 1 });
      return true;
    } catch (err) {
      this.log.warn({ filter: relativeFilter, err: (err as Error).message }, "subscribe failed");
      return false;
    }
  }

  /** Clean stop: retained offline state first (the will is not sent on a clean disconnect), then disconnect. */
  async stop(timeoutMs = 5000): Promise<void> {
    const client = this.client;
    if (!client) return;
    if (client.connected) {
      await withTimeout(
        client.publishAsync(this.topics.bridge("state"), JSON.stringify(this.statePayload("offline")), {
          qos: 1,
          retain: true,
        }),
        timeoutMs,
      ).catch((err: unknown) => this.log.warn({ err: String(err) }, "offline state not published"));
    }
    this.stopping = true;
    await withTimeout(client.endAsync(false), timeoutMs).catch(async () => {
      await client.endAsync(true).catch(() => undefined);
    });
    this.client = undefined;
  }
}

export function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_r, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
